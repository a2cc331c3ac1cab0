"""Deployment export of the ViT and the Aggregator: ONNX and ``torch.export`` with dynamic shapes.

The exported graphs compute the RoPE tables and positions from the runtime patch grid (``H // p x W // p``), so one
file serves every resolution that is a multiple of the patch size. What is exported:

- a ViT: :class:`ExportableViT`: ``forward(x)`` with ``x`` ``[B, 3, H, W]`` **normalised** images
  (``dinov3_integration.transforms.make_transform(model)``) returns ``(cls_token [B, D], patch_tokens
  [B, H // p * W // p, D])``, the final-normed ``x_norm_clstoken`` and ``x_norm_patchtokens`` of
  ``forward_features``. Dynamic: batch, height, width. Names: ``pixel_values`` -> ``cls_token``, ``patch_tokens``.
- an :class:`~dinov3_integration.vggt_compat.Aggregator` (or a ``DINOv3IntegratedModel``'s): :class:`ExportableAggregator`:
  ``forward(images)`` with ``images`` ``[B, S, 3, H, W]`` in **[0, 1]** (normalised inside, as the eager module)
  returns one ``[B, S, P, 2C]`` tensor per kept layer (``P = patch_start_idx + h * w``), then ``patch_start_idx``
  (an int64 scalar). Dynamic: batch, frames, height, width. Names: ``images`` -> ``aggregated.L`` for each kept
  layer ``L`` (as ``dinov3 extract --aggregate`` names them), ``patch_start_idx``. The frames are patch-embedded
  in one pass (``frames_chunk_size`` is ignored: the same numbers).

The fast paths (in-place buffers) are switched off while tracing, and nothing is cached from a traced call.

``onnx``, ``onnxscript`` (the exporter) and ``onnxruntime`` (checking) are the optional ``export`` extra.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from .utils.atomic import atomic_path, atomic_write_bytes
from .vggt_compat.aggregator import Aggregator
from .vggt_compat.outputs import resolve_output_layers

__all__ = [
    "EXPORT_TARGETS",
    "ExportableAggregator",
    "ExportableViT",
    "dynamic_shapes",
    "exportable",
    "export_model",
    "torch_export",
    "write_program",
]

EXPORT_TARGETS = ("onnx", "torch-export")
Target = Literal["onnx", "torch-export"]
INPUT_NAMES = ["pixel_values"]
OUTPUT_NAMES = ["cls_token", "patch_tokens"]


class ExportableViT(nn.Module):
    """``x [B, 3, H, W]`` (normalised) -> ``(cls_token [B, D], patch_tokens [B, N, D])`` of a ViT."""

    input_names = INPUT_NAMES
    output_names = OUTPUT_NAMES

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = getattr(model, "model", model)  # a features_only wrapper exports its ViT
        self.patch_size = int(self.model.patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model.forward_features(x)
        return out["x_norm_clstoken"], out["x_norm_patchtokens"]

    def example(self, size: tuple[int, int], batch: int, frames: int) -> Tensor:
        """A random ``[batch, 3, *size]`` input for tracing (``frames`` is unused)."""
        ref = self.model.cls_token
        return torch.randn(batch, self.model.in_chans, *size, device=ref.device, dtype=ref.dtype)

    def dynamic_shapes(self, max_grid: int) -> dict[str, dict[int, Any]]:
        return dynamic_shapes(self.patch_size, max_grid)

    def settings(self) -> Iterator[tuple[nn.Module, str, Any]]:
        """``(module, attribute, value while tracing)``: no fast paths."""
        yield self.model, "use_fast_paths", False


class ExportableAggregator(nn.Module):
    """``images [B, S, 3, H, W]`` in ``[0, 1]`` -> ``(*[B, S, P, 2C] per kept layer, patch_start_idx)``.

    Args:
        aggregator: the Aggregator (its patch embedding and normalisation are part of the graph).
        layers: the layers to return (``"all"``, an index or a list, negative allowed); default: the Aggregator's
            ``output_layers``.
    """

    input_names = ["images"]

    def __init__(self, aggregator: Aggregator, layers: str | int | list[int] | None = None) -> None:
        super().__init__()
        self.aggregator = aggregator
        spec = aggregator.output_layers if layers is None else layers
        self.layers = resolve_output_layers(spec, aggregator.depth)
        self.patch_size = int(aggregator.patch_size)

    @property
    def output_names(self) -> list[str]:
        return [f"aggregated.{layer}" for layer in self.layers] + ["patch_start_idx"]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out, patch_start_idx = self.aggregator(images, output_layers=self.layers)
        index = torch.full((), patch_start_idx, dtype=torch.int64, device=images.device)
        return (*(tensor for _, tensor in out.items()), index)

    def example(self, size: tuple[int, int], batch: int, frames: int) -> Tensor:
        """A random ``[batch, frames, 3, *size]`` input in ``[0, 1]`` for tracing."""
        ref = self.aggregator.camera_token
        return torch.rand(batch, frames, 3, *size, device=ref.device, dtype=ref.dtype)

    def dynamic_shapes(self, max_grid: int) -> dict[str, dict[int, Any]]:
        """``Dim``s: batch, frames, and the image sides as ``patch_size * grid`` (grid 2..``max_grid``)."""
        from torch.export import Dim

        shapes = dynamic_shapes(self.patch_size, max_grid)["x"]
        frames = Dim("frames", min=1, max=4096)
        return {"images": {0: shapes[0], 1: frames, 3: shapes[2], 4: shapes[3]}}

    def settings(self) -> Iterator[tuple[nn.Module, str, Any]]:
        """``(module, attribute, value while tracing)``: all frames in one pass, no range check, no fast paths."""
        yield self.aggregator, "frames_chunk_size", None
        yield self.aggregator, "check_input_range", False
        if hasattr(self.aggregator, "use_fast_paths"):
            yield self.aggregator, "use_fast_paths", False
        if self.aggregator.patch_embed_kind == "dinov3":
            yield self.aggregator.patch_embed, "use_fast_paths", False


Exportable = Union[ExportableViT, ExportableAggregator]


def exportable(model: nn.Module, *, layers: str | int | list[int] | None = None) -> Exportable:
    """The module that is traced for ``model``: a ViT (or ``features_only`` wrapper) -> :class:`ExportableViT`;
    an Aggregator, or a ``DINOv3IntegratedModel`` with one -> :class:`ExportableAggregator` (``layers``: which
    layers it returns); an integrated model without an Aggregator -> its backbone's :class:`ExportableViT`.

    Raises:
        ValueError: ``layers`` given for a ViT.
    """
    if isinstance(model, (ExportableViT, ExportableAggregator)):
        return model
    inner = getattr(model, "aggregator", None)
    if isinstance(model, Aggregator) or isinstance(inner, Aggregator):
        return ExportableAggregator(model if isinstance(model, Aggregator) else inner, layers)
    if layers is not None:
        raise ValueError("layers= selects Aggregator outputs; a ViT export returns cls_token and patch_tokens")
    backbone = getattr(model, "backbone", None)  # an integrated model without an Aggregator
    return ExportableViT(backbone if isinstance(backbone, nn.Module) else model)


@contextlib.contextmanager
def _tracing(wrapper: Exportable) -> Iterator[None]:
    """Eval mode, the tracing settings of ``wrapper.settings()``, no gradients; all restored afterwards."""
    was_training = wrapper.training
    saved = [(module, name, module.__dict__.get(name, _UNSET), value) for module, name, value in wrapper.settings()]
    wrapper.eval()
    for module, name, _, value in saved:
        setattr(module, name, value)
    try:
        with torch.no_grad():
            yield
    finally:
        wrapper.train(was_training)
        for module, name, old, _ in reversed(saved):
            if old is _UNSET:
                delattr(module, name)
            else:
                setattr(module, name, old)


_UNSET = object()


def dynamic_shapes(patch_size: int, max_grid: int = 512) -> dict[str, dict[int, Any]]:
    """ViT ``torch.export`` ``Dim``s: batch, and the image sides as ``patch_size * grid`` (grid 2..``max_grid``).

    A one-patch side is outside the range: the traced layout (strides) assumes at least two patches per side, and
    the program says so (an input-range error) rather than failing inside the graph.
    """
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    grid_h, grid_w = Dim("grid_h", min=2, max=max_grid), Dim("grid_w", min=2, max=max_grid)
    return {"x": {0: batch, 2: patch_size * grid_h, 3: patch_size * grid_w}}


def torch_export(
    model: nn.Module,
    *,
    example_size: tuple[int, int] = (224, 224),
    batch: int = 2,
    frames: int = 3,
    layers: str | int | list[int] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of :func:`exportable` ``(model)`` with dynamic batch, grid (and frames for an
    Aggregator). ``example_size``/``batch``/``frames`` only shape the tracing example.

    Raises:
        ValueError: an example size that is not a positive patch multiple.
    """
    wrapper = exportable(model, layers=layers)
    p = wrapper.patch_size
    if any(s <= 0 or s % p for s in example_size):
        raise ValueError(f"example_size={example_size}: each side must be a positive multiple of {p}")
    x = wrapper.example(tuple(example_size), batch, frames)
    with _tracing(wrapper):
        return torch.export.export(wrapper, (x,), dynamic_shapes=wrapper.dynamic_shapes(512))


def write_program(
    program: torch.export.ExportedProgram,
    path: str | os.PathLike[str],
    *,
    to: Target = "onnx",
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    opset: int = 18,
    optimize: bool = True,
) -> Path:
    """Write an exported program to ``path`` (atomically): ``.pt2`` (``to="torch-export"``) or ONNX.

    ``input_names``/``output_names`` name the ONNX graph's inputs and outputs.

    Raises:
        ValueError: an unknown target.
        ImportError: ``onnx``/``onnxscript`` missing for ``to="onnx"`` (``pip install 'dinov3-integration[export]'``).
    """
    if to not in EXPORT_TARGETS:
        raise ValueError(f"to={to!r}: choose one of {', '.join(EXPORT_TARGETS)}")
    dst = Path(path).expanduser()
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
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            optimize=optimize,
            verbose=False,
        )
    with atomic_path(dst) as tmp:
        onnx_program.save(str(tmp))
    return dst


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    to: Target = "onnx",
    example_size: tuple[int, int] = (224, 224),
    batch: int = 2,
    frames: int = 3,
    layers: str | int | list[int] | None = None,
    opset: int = 18,
    optimize: bool = True,
) -> Path:
    """Write ``model`` to ``path`` (atomically): a ViT, an Aggregator or a ``DINOv3IntegratedModel`` (see
    :func:`exportable` and the module docstring for what each graph takes and returns).

    ``to="onnx"``: an ONNX model (ViT: ``pixel_values`` -> ``cls_token``, ``patch_tokens``; Aggregator:
    ``images`` -> ``aggregated.L`` per kept layer, ``patch_start_idx``; every batch, frame and image axis
    dynamic); ``to="torch-export"``: a ``torch.export`` program (``.pt2``, load with ``torch.export.load``).
    ``example_size``/``batch``/``frames`` only shape the tracing example; ``layers`` chooses the Aggregator's
    outputs (default its ``output_layers``); ``optimize`` runs the ONNX graph optimiser (constant folding; off: a
    faster export, the same numbers).

    Raises:
        ValueError: an unknown target, an example size that is not a patch multiple, or ``layers`` for a ViT.
        ImportError: ``onnx``/``onnxscript`` missing for ``to="onnx"`` (``pip install 'dinov3-integration[export]'``).
    """
    if to not in EXPORT_TARGETS:
        raise ValueError(f"to={to!r}: choose one of {', '.join(EXPORT_TARGETS)}")
    wrapper = exportable(model, layers=layers)
    program = torch_export(wrapper, example_size=example_size, batch=batch, frames=frames)
    return write_program(
        program,
        path,
        to=to,
        input_names=list(wrapper.input_names),
        output_names=list(wrapper.output_names),
        opset=opset,
        optimize=optimize,
    )


def load_saved(path: str | os.PathLike[str]) -> nn.Module:
    """The model of a folder written by ``save_pretrained`` (a ViT, an Aggregator or a ``DINOv3IntegratedModel``),
    or of a YAML configuration of the integrated model (``build_model``), in eval mode.

    Raises:
        FileNotFoundError: neither a folder with ``config.json`` nor a YAML file.
        ValueError: a ``config.json`` that no class of this library wrote (a transformers folder: export the
            model by name with ``weights=folder``).
    """
    import json

    from .integrated import DINOv3IntegratedModel, build_model
    from .models import DinoVisionTransformer

    source = Path(path).expanduser()
    if source.is_file() and source.suffix in (".yaml", ".yml"):
        from .config import load_config

        return build_model(load_config(source)).eval()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source}: neither a save_pretrained folder (config.json) nor a YAML configuration")
    classes = {cls.__name__: cls for cls in (DinoVisionTransformer, Aggregator, DINOv3IntegratedModel)}
    architecture = json.loads((source / "config.json").read_text(encoding="utf-8")).get("architecture")
    if architecture not in classes:
        raise ValueError(
            f"{source / 'config.json'} (architecture {architecture!r}) was not written by save_pretrained of "
            f"{', '.join(classes)}; for a transformers folder export the model by name with --weights {source}"
        )
    return classes[architecture].from_pretrained(source)
