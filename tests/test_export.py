"""Deployment export (issue 17 item 4): ONNX checked with onnxruntime, torch.export with Dims, both at resolutions
and batch sizes not used when exporting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinov3_integration import create_model
from dinov3_integration.cli.main import main

EXPORT_SIZE = (32, 48)
CHECKS = [(1, 64, 64), (3, 48, 80)]  # (batch, H, W): neither the export batch (2) nor its size


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("dinov3_vits16", depth=2, embed_dim=64, num_heads=4, n_storage_tokens=2).eval()


def _eager(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model.forward_features(x)
    return out["x_norm_clstoken"].numpy(), out["x_norm_patchtokens"].numpy()


def test_onnx_matches_eager_at_other_sizes(tmp_path, tiny) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from dinov3_integration.export import export_model

    path = export_model(tiny, tmp_path / "vit.onnx", to="onnx", example_size=EXPORT_SIZE, optimize=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert all(isinstance(d, str) for d in session.get_inputs()[0].shape[::2] + session.get_inputs()[0].shape[3:])
    for b, h, w in CHECKS:
        x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(h))
        cls, patches = session.run(None, {"pixel_values": x.numpy()})
        want_cls, want_patches = _eager(tiny, x)
        assert patches.shape == (b, (h // 16) * (w // 16), 64)
        np.testing.assert_allclose(cls, want_cls, atol=1e-4, rtol=0)
        np.testing.assert_allclose(patches, want_patches, atol=1e-4, rtol=0)
    assert tiny.use_fast_paths is True  # switched off only while tracing


def test_cli_torch_export_has_dynamic_batch_and_grid(tmp_path, tiny, capsys) -> None:
    out = tmp_path / "vit.pt2"
    weights = tmp_path / "w.safetensors"
    from dinov3_integration.hub import save_state_dict_file

    save_state_dict_file(tiny.state_dict(), weights)
    argv = ["export", "dinov3_vits16", str(out), "--to", "torch-export", "--weights", str(weights)]
    argv += ["--model-kwargs", "depth=2,embed_dim=64,num_heads=4,n_storage_tokens=2", "--example-size", "32", "48"]
    assert main(argv) == 0
    assert "dynamic batch" in capsys.readouterr().out
    program = torch.export.load(str(out))
    shape = program.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    assert all(isinstance(d, torch.SymInt) for d in (shape[0], shape[2], shape[3]))
    for b, h, w in CHECKS:
        x = torch.randn(b, 3, h, w)
        cls, patches = program.module()(x)
        want_cls, want_patches = _eager(tiny, x)
        np.testing.assert_allclose(cls.detach().numpy(), want_cls, atol=1e-5, rtol=0)
        np.testing.assert_allclose(patches.detach().numpy(), want_patches, atol=1e-5, rtol=0)
    assert main(["export", "dinov3_vits16", str(tmp_path / "x.onnx"), "--example-size", "30", "48"]) == 2
