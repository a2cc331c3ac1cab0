"""Deployment export of the ViT: ONNX and ``torch.export`` with a dynamic batch and image size.

The exported graph computes the RoPE tables from the runtime patch grid (``H // 16 x W // 16``), so one file serves
every resolution that is a multiple of the patch size. What is exported is :class:`ExportableViT`: ``forward(x)``
with ``x`` ``[B, 3, H, W]`` **normalised** images (``dinov3_integration.transforms.make_transform(model)``) returns
``(cls_token [B, D], patch_tokens [B, H // p * W // p, D])``, the final-normed ``x_norm_clstoken`` and
``x_norm_patchtokens`` of ``forward_features``. The fast paths (in-place buffers) are switched off while tracing.

``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime`` (checking) are the optional ``export`` extra.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .utils.atomic import atomic_path, atomic_write_bytes

__all__ = ["EXPORT_TARGETS", "ExportableViT", "dynamic_shapes", "export_model", "torch_export"]

EXPORT_TARGETS = ("onnx", "torch-export")
Target = Literal["onnx", "torch-export"]
INPUT_NAMES = ["pixel_values"]
OUTPUT_NAMES = ["cls_token", "patch_tokens"]


class ExportableViT(nn.Module):
    """``x [B, 3, H, W]`` (normalised) -> ``(cls_token [B, D], patch_tokens [B, N, D])`` of a ViT."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = getattr(model, "model", model)  # a features_only wrapper exports its ViT
        self.patch_size = int(self.model.patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.forward_features(x)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]


@contextlib.contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """Eval mode, no fast paths, no gradients, restored afterwards."""
    vit = getattr(model, "model", model)
    was_training, fast = vit.training, vit.__dict__.get("use_fast_paths")
    vit.eval()
    vit.use_fast_paths = False
    try:
        with torch.no_grad():
            yield
    finally:
        vit.train(was_training)
        if fast is None:
            del vit.use_fast_paths
        else:
            vit.use_fast_paths = fast


def dynamic_shapes(patch_size: int, max_grid: int = 512) -> dict[str, dict[int, Any]]:
    """``torch.export`` ``Dim``s: batch, and the image sides as ``patch_size * grid`` (grid 1..``max_grid``)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    grid_h, grid_w = Dim("grid_h", min=1, max=max_grid), Dim("grid_w", min=1, max=max_grid)
    return {"x": {0: batch, 2: patch_size * grid_h, 3: patch_size * grid_w}}


def _example(wrapper: ExportableViT, example_size: tuple[int, int], batch: int) -> Tensor:
    p = wrapper.patch_size
    if any(s <= 0 or s % p for s in example_size):
        raise ValueError(f"example_size={example_size}: each side must be a positive multiple of {p}")
    ref = wrapper.model.cls_token
    return torch.randn(batch, wrapper.model.in_chans, *example_size, device=ref.device, dtype=ref.dtype)


def torch_export(
    model: nn.Module, *, example_size: tuple[int, int] = (224, 224), batch: int = 2
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of :class:`ExportableViT` with dynamic batch and grid (see :func:`dynamic_shapes`)."""
    wrapper = ExportableViT(model)
    x = _example(wrapper, example_size, batch)
    with _tracing(model):
        return torch.export.export(wrapper, (x,), dynamic_shapes=dynamic_shapes(wrapper.patch_size))


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    to: Target = "onnx",
    example_size: tuple[int, int] = (224, 224),
    batch: int = 2,
    opset: int = 18,
    optimize: bool = True,
) -> Path:
    """Write ``model`` (a :class:`~dinov3_integration.models.DinoVisionTransformer`) to ``path`` (atomically).

    ``to="onnx"``: an ONNX model (inputs ``pixel_values``, outputs ``cls_token``/``patch_tokens``, dynamic batch,
    height and width); ``to="torch-export"``: a ``torch.export`` program (``.pt2``, load with
    ``torch.export.load``). ``example_size``/``batch`` only shape the tracing example; ``optimize``
    runs the ONNX graph optimiser (constant folding; off: a faster export, the same numbers).

    Raises:
        ValueError: an unknown target or an example size that is not a patch multiple.
        ImportError: ``onnx``/``onnxscript`` missing for ``to="onnx"`` (``pip install 'dinov3-integration[export]'``).
    """
    if to not in EXPORT_TARGETS:
        raise ValueError(f"to={to!r}: choose one of {', '.join(EXPORT_TARGETS)}")
    dst = Path(path).expanduser()
    program = torch_export(model, example_size=example_size, batch=batch)
    if to == "torch-export":
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write_bytes(dst, buffer.getvalue())
        return dst
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({exc}); pip install 'dinov3-integration[export]'"
        ) from exc
    with _tracing(model):
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
    with atomic_path(dst) as tmp:
        onnx_program.save(str(tmp))
    return dst
