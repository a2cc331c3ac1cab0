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


# ------------------------------------------------------------------------------------------------ the Aggregator
AGG_EXPORT = (2, 3, 32, 48)  # (batch, frames, H, W) of the tracing example
AGG_CHECKS = [(1, 1, 80, 48), (3, 4, 48, 80), (1, 2, 64, 64)]  # none of them the export's batch, frames or size
AGG_LAYERS = [0, -1]


@pytest.fixture(scope="module")
def tiny_agg() -> torch.nn.Module:
    from conftest import randomize_
    from dinov3_integration.vggt_compat import Aggregator

    torch.manual_seed(0)
    agg = Aggregator(
        img_size=32, embed_dim=32, depth=2, num_heads=2, n_storage_tokens=2, patch_embed="dinov3_vits16",
        patch_embed_config={"depth": 1, "embed_dim": 32, "num_heads": 2}, frames_chunk_size=2,
    )  # fmt: skip
    return randomize_(agg, std=0.05).eval()


def _agg_eager(agg: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out, patch_start_idx = agg(x, output_layers=AGG_LAYERS)
    assert patch_start_idx == 3
    return [t.numpy() for t in out]


@pytest.fixture(scope="module")
def agg_program(tiny_agg) -> torch.export.ExportedProgram:
    """One export of the tiny Aggregator (the slow part), shared by the torch.export and ONNX checks."""
    from dinov3_integration.export import torch_export

    b, s, h, w = AGG_EXPORT
    return torch_export(tiny_agg, example_size=(h, w), batch=b, frames=s, layers=AGG_LAYERS)


@pytest.mark.slow
def test_aggregator_torch_export_has_dynamic_batch_frames_and_grid(tmp_path, agg_program, tiny_agg) -> None:
    from dinov3_integration.export import write_program

    program = torch.export.load(str(write_program(agg_program, tmp_path / "agg.pt2", to="torch-export")))
    shape = program.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    assert all(isinstance(d, torch.SymInt) for d in (shape[0], shape[1], shape[3], shape[4]))
    for b, s, h, w in AGG_CHECKS:
        x = torch.rand(b, s, 3, h, w, generator=torch.Generator().manual_seed(h + s))
        *layers, patch_start_idx = program.module()(x)
        assert int(patch_start_idx) == 3 and len(layers) == 2
        for got, want in zip(layers, _agg_eager(tiny_agg, x)):
            assert got.shape == (b, s, 3 + (h // 16) * (w // 16), 64)
            np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="images.size"):  # one patch row: outside the exported range (>= 2)
        program.module()(torch.rand(1, 2, 3, 16, 32))
    assert tiny_agg.frames_chunk_size == 2 and tiny_agg.check_input_range  # restored after tracing


@pytest.mark.slow
def test_aggregator_onnx_matches_eager_at_other_shapes(tmp_path, agg_program, tiny_agg) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from dinov3_integration.export import exportable, write_program

    names = exportable(tiny_agg, layers=AGG_LAYERS)
    assert names.output_names == ["aggregated.0", "aggregated.1", "patch_start_idx"]
    path = write_program(
        agg_program, tmp_path / "agg.onnx", input_names=names.input_names, output_names=names.output_names,
        optimize=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == names.output_names
    dims = session.get_inputs()[0].shape
    assert all(isinstance(d, str) for d in (dims[0], dims[1], dims[3], dims[4]))
    for b, s, h, w in AGG_CHECKS[:2]:
        x = torch.rand(b, s, 3, h, w, generator=torch.Generator().manual_seed(h * s))
        *layers, patch_start_idx = session.run(None, {"images": x.numpy()})
        assert int(patch_start_idx) == 3
        for got, want in zip(layers, _agg_eager(tiny_agg, x)):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_aggregator_traced_positions_equal_the_cached_ones(tiny_agg, monkeypatch) -> None:
    """The uncached positions of the traced path are the eager (cached) table, value for value."""
    eager = tiny_agg._positions(2, 3, 4, 5, torch.device("cpu"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = tiny_agg._positions(2, 3, 4, 5, torch.device("cpu"))
    assert eager[2] == traced[2] == 6
    assert all(torch.equal(a, b) for a, b in zip(eager[:2], traced[:2]))


def test_cli_aggregate_builds_the_extract_aggregator(tmp_path) -> None:
    from dinov3_integration.cli import export_cmd
    from dinov3_integration.cli._common import CLIError
    from dinov3_integration.integrated import build_aggregator

    parser = __import__("argparse").ArgumentParser()
    export_cmd.add_parser(parser.add_subparsers())
    base = ["export", "dinov3_vits16", str(tmp_path / "a.onnx"), "--model-kwargs", "depth=1,embed_dim=32,num_heads=2"]
    with pytest.raises(CLIError, match="--aggregator-weights .* or --random-aggregator"):
        export_cmd._model(parser.parse_args([*base, "--aggregate"]))
    with pytest.raises(CLIError, match="need --aggregate"):
        export_cmd._model(parser.parse_args([*base, "--random-aggregator"]))
    args = parser.parse_args(
        [*base, "--aggregate", "--random-aggregator", "--aggregator-kwargs", "depth=2", "--seed", "3"]
    )
    got = export_cmd._model(args)
    backbone = create_model("dinov3_vits16", depth=1, embed_dim=32, num_heads=2)
    torch.manual_seed(3)
    want = build_aggregator(backbone, depth=2)
    assert got.depth == 2 and not got.training
    aggregator_keys = [k for k in want.state_dict() if not k.startswith("patch_embed.")]
    assert all(torch.equal(got.state_dict()[k], want.state_dict()[k]) for k in aggregator_keys)
    assert main(["export", str(tmp_path), str(tmp_path / "x.onnx")]) == 2  # a folder without config.json


def test_cli_exports_a_saved_aggregator_folder(tmp_path, tiny_agg, monkeypatch, capsys) -> None:
    """MODEL as a save_pretrained folder: the Aggregator it holds is what is exported (export itself stubbed)."""
    import dinov3_integration.export as export

    seen = {}

    def fake_export_model(model, path, **kwargs):
        seen.update(model=model, **kwargs)
        return path

    monkeypatch.setattr(export, "export_model", fake_export_model)
    folder = tiny_agg.save_pretrained(tmp_path / "saved")
    argv = ["export", str(folder), str(tmp_path / "a.onnx"), "--layers", "-1", "--frames", "5"]
    assert main([*argv, "--example-size", "32", "48"]) == 0
    wrapper = seen["model"]
    assert isinstance(wrapper, export.ExportableAggregator) and wrapper.layers == [1]
    assert seen["frames"] == 5 and seen["example_size"] == (32, 48) and seen["to"] == "onnx"
    assert "outputs aggregated.1, patch_start_idx; dynamic batch, frames" in capsys.readouterr().out
    sd = wrapper.aggregator.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in tiny_agg.state_dict().items())
    assert main([*argv, "--weights", "x"]) == 2  # --weights applies to a model name only


def test_load_saved_and_exportable_pick_the_graph(tmp_path, tiny) -> None:
    """A YAML or an integrated-model folder exports its Aggregator; without one, its backbone (a ViT graph)."""
    import json

    from dinov3_integration.export import ExportableAggregator, ExportableViT, exportable, load_saved

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(
        "model:\n  backbone:\n    dinov3_model: dinov3_vits16\n    img_size: 32\n"
        "    overrides: {depth: 1, embed_dim: 32, num_heads: 2}\n"
        "  aggregator:\n    enabled: true\n    depth: 2\n    output_layers: [-1]\n"
    )
    model = load_saved(yaml)
    wrapper = exportable(model)
    assert isinstance(wrapper, ExportableAggregator) and wrapper.aggregator is model.aggregator
    assert wrapper.output_names == ["aggregated.1", "patch_start_idx"] and wrapper.input_names == ["images"]
    again = load_saved(model.save_pretrained(tmp_path / "integrated"))
    assert exportable(again, layers=[0, 1]).output_names == ["aggregated.0", "aggregated.1", "patch_start_idx"]
    yaml.write_text(yaml.read_text().replace("enabled: true", "enabled: false"))
    model = load_saved(yaml)
    assert isinstance(exportable(model), ExportableViT) and exportable(model).model is model.backbone
    with pytest.raises(ValueError, match="layers= selects Aggregator outputs"):
        exportable(tiny, layers=[-1])
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({"architectures": ["DINOv3ViTModel"]}))
    with pytest.raises(ValueError, match="export the model by name with --weights"):
        load_saved(tmp_path / "foreign")
