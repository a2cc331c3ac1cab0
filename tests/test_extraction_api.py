"""``dinov3_integration.extract`` (issue 16 item 1): the Python API gives what ``dinov3 extract`` writes.

In-process, tiny random models, tiny inputs. The command is run through ``main([...])``, the way a user types it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import dinov3_integration
from _helpers import main_in_subprocess, make_video, manifest, write_images
from dinov3_integration.cli.main import main
from dinov3_integration.extraction import ExtractionError, ExtractionReport, FileSink, Stored, extract, run_job
from dinov3_integration.features import encode_metadata, read_features, read_metadata

TINY_KW = {"depth": 2, "embed_dim": 32, "num_heads": 2}
CLI = [
    "--random-weights", "--model-kwargs", "depth=2,embed_dim=32,num_heads=2", "--resolution", "32",
    "--num-workers", "0", "-q", "--save", "cls,patch,storage", "--frames", "3", "--batch-size", "2",
]  # fmt: skip
API: dict[str, Any] = dict(
    random_weights=True, model_kwargs=TINY_KW, resolution=32, num_workers=0, quiet=True,
    save=["cls", "patch", "storage"], frames=3, batch_size=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api_inputs")
    write_images(root, [("imgs/a.png", 40, 48), ("imgs/b.png", 48, 40), ("imgs/sub/c.png", 40, 48)])
    make_video(root / "imgs/clip.mp4", n=6, h=32, w=48)
    (root / "imgs/broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture(scope="module")
def command_out(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmd") / "out"
    assert main(["extract", str(inputs / "imgs"), "--out", str(out), *CLI]) == 1  # broken.png fails
    return out


def _files(out: Path) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    found = {}
    for path in sorted(out.rglob("*.safetensors")):
        tensors, _ = read_features(path)
        found[path.relative_to(out).as_posix()] = (tensors, read_metadata(path)[0])
    return found


def test_in_memory_results_equal_the_command_files(inputs: Path, command_out: Path) -> None:
    written = _files(command_out)
    results = extract(inputs / "imgs", **API)
    assert not isinstance(results, ExtractionReport)  # out=None: an iterator, nothing written
    by_input = {r.input: r for r in results}
    broken = by_input[str(inputs / "imgs/broken.png")]
    assert len(by_input) == 5 and broken.status == "failed" and broken.error and not broken.tensors
    ok = {k: r for k, r in by_input.items() if r.ok}
    assert len(ok) == 4 == len(written)
    for rel, (tensors, raw_meta) in written.items():
        r = ok[str(inputs / rel[: -len(".safetensors")])]
        assert set(r.tensors) == set(tensors), rel
        for key, value in tensors.items():
            assert torch.equal(r.tensors[key], value) and r.tensors[key].dtype == value.dtype, (rel, key)
        # The same metadata, but for what only a file has (its format tag and data checksum).
        file_meta = {k: v for k, v in raw_meta.items() if k not in ("format", "data_digest")}
        assert encode_metadata(r.metadata) == file_meta, rel
    video = ok[str(inputs / "imgs/clip.mp4")]
    assert video.kind == "video" and video.tensors["patch.1"].shape == (3, 2, 3, 32)
    assert video.tensors["frame_indices"].dtype == torch.int64 and video.tensors["cls.1"].shape == (3, 32)


def test_out_writes_what_the_command_writes(inputs: Path, command_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "api"
    report = dinov3_integration.extract([str(inputs / "imgs")], out=out, **API)
    assert isinstance(report, ExtractionReport)
    assert report.counts == {"ok": 4, "cached": 0, "failed": 1} and report.manifest == out.resolve() / "manifest.jsonl"
    assert "5 inputs: 4 written, 0 already complete, 1 failed" in report.summary()
    a, b = _files(command_out), _files(out)
    assert set(a) == set(b) and len(a) == 4
    for rel in a:
        assert set(a[rel][0]) == set(b[rel][0])
        assert all(torch.equal(a[rel][0][k], b[rel][0][k]) for k in a[rel][0]), rel
        assert a[rel][1] == b[rel][1], rel  # every metadata value, data_digest included (no timestamps)
    lines = manifest(out)
    assert lines == manifest(command_out)
    assert lines == report.records
    # Resumed like the command: everything complete is cached.
    again = extract(inputs / "imgs", out=out, **API)
    assert isinstance(again, ExtractionReport) and again.counts == {"ok": 0, "cached": 4, "failed": 1}


def test_aggregate_clip_in_memory_equals_the_command(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    scene.mkdir()
    write_images(scene, [(f"f{i}.png", 32, 48) for i in range(2)], seed=3)
    agg = ["--aggregate", "--random-aggregator", "--aggregator-kwargs", "depth=2", "--layers", "0,1"]
    assert main(["extract", str(scene), "--out", str(tmp_path / "o"), *CLI[:-6], *agg]) == 0
    tensors, _ = read_features(tmp_path / "o/scene.safetensors")
    (result,) = list(
        extract(
            scene, random_weights=True, model_kwargs=TINY_KW, resolution=32, num_workers=0, quiet=True,
            aggregate=True, random_aggregator=True, aggregator_kwargs={"depth": 2}, layers=[0, 1],
        )
    )  # fmt: skip
    assert result.kind == "clip" and set(result.tensors) == set(tensors) == {"aggregated.0", "aggregated.1"}
    assert all(torch.equal(result.tensors[k], tensors[k]) for k in tensors)


def test_bad_options_give_the_command_errors(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = inputs / "imgs/a.png"
    cases = [
        (["--batch-size", "0"], {"batch_size": 0}, "--batch-size must be at least 1"),
        (["--layers", "7"], {"layers": 7}, "--layers"),
        (["--save", "logits"], {"save": "logits"}, "--save 'logits' is not one of"),
        (["--resolution", "big"], {"resolution": "big"}, "--resolution"),
        (["--aggregate"], {"aggregate": True}, "--aggregate without --aggregator-weights"),
    ]
    for cli_extra, api_extra, expected in cases:
        capsys.readouterr()
        assert main(["extract", str(image), "--out", str(tmp_path / "o"), *CLI, *cli_extra]) == 2
        cli_error = capsys.readouterr().err.strip().removeprefix("dinov3 extract: error: ")
        with pytest.raises(ExtractionError) as info:
            extract(image, **{**API, **api_extra})  # raised at the call, before iterating
        assert expected in str(info.value) and str(info.value) == cli_error, (expected, cli_error)
    with pytest.raises(ExtractionError, match="unknown extract"):
        extract(image, batchsize=2)
    with pytest.raises(ExtractionError, match="does not exist|not found|no such"):
        extract(tmp_path / "missing.png", **API)


def test_defaults_are_the_command_defaults() -> None:
    from dinov3_integration.cli.main import parse_args
    from dinov3_integration.extraction.options import DEFAULTS

    args = vars(parse_args(["extract", "x.png", "--out", "o"]))
    assert {k: args[k] for k in DEFAULTS} == DEFAULTS
    assert dinov3_integration.extract is extract and dinov3_integration.read_features is read_features


class DictSink(FileSink):
    """A sink keeping outputs in a dict (no files): the engine reaches its storage only through the interface."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.store: dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]] = {}
        self.finds = 0

    def find(self, item: Any) -> Stored:
        self.finds += 1
        if item.key not in self.store:
            return Stored("missing", item.key)
        tensors, meta = self.store[item.key]
        return Stored("present", item.key, meta=meta, keys=frozenset(tensors))

    def write(self, item: Any, tensors: Any, metadata: Any) -> None:
        self.store[item.key] = ({k: v.clone() for k, v in tensors.items()}, encode_metadata(metadata))

    def output_name(self, item: Any) -> str:
        return f"dict:{item.key}"


def test_a_custom_sink_is_written_and_resumed_through_the_interface(inputs: Path, tmp_path: Path) -> None:
    from dinov3_integration.extraction.options import make_options

    args = make_options([inputs / "imgs/sub"], tmp_path / "o", **API)
    sink = DictSink(tmp_path / "o")
    report = run_job(args, sink=sink)
    assert report.counts["ok"] == 1 and report.records[0]["output"] == "dict:sub/c.png"
    assert not list((tmp_path / "o").rglob("*.safetensors"))  # nothing went around the sink
    (result,) = list(extract(inputs / "imgs/sub", **API))
    assert all(torch.equal(sink.store["sub/c.png"][0][k], v) for k, v in result.tensors.items())
    report = run_job(make_options([inputs / "imgs/sub"], tmp_path / "o", **API), sink=sink)
    assert report.counts["cached"] == 1 and sink.finds >= 1


# ------------------------------------------------------------------------------------ issue 15 item 2: the rerun
def _statuses(out: Path) -> list[str]:
    return [r["status"] for r in manifest(out)]


def test_15_2_complete_rerun_imports_no_torch_and_changes_are_redone(tmp_path: Path) -> None:
    import os

    from safetensors.torch import save_file

    from dinov3_integration.models import create_model

    torch.manual_seed(0)
    ckpt = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("dinov3_vits16", **TINY_KW).state_dict().items()}, ckpt)
    rng = np.random.default_rng(5)
    images = []
    for i in range(3):
        images.append(tmp_path / "in" / f"{i}.png")
        images[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images[-1])
    out = tmp_path / "out"
    base = ["extract", str(tmp_path / "in"), "--out", str(out), "--weights", str(ckpt), *CLI[1:7]]
    assert main(base) == 0 and _statuses(out) == ["ok"] * 3
    manifest = (out / "manifest.jsonl").read_bytes()

    rerun = main_in_subprocess(base)  # a fresh process, as a user reruns the command
    assert rerun["rc"] == 0 and rerun["loaded"] == [], rerun  # no torch, torchvision, not even safetensors
    assert "3 inputs: 0 written, 3 already complete, 0 failed" in rerun["stderr"]
    assert (out / "manifest.jsonl").read_bytes() == manifest.replace(b'"ok"', b'"cached"')  # a cached run's records

    # A changed input: only it is redone (the model is built).
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images[1])
    assert main(base) == 0 and _statuses(out) == ["cached", "ok", "cached"]
    # A changed setting: every output redone.
    assert main([*base, "--layers", "0"]) == 0 and _statuses(out) == ["ok"] * 3
    assert set(read_features(out / "in/0.png.safetensors")[0]) == {"cls.0", "patch.0"}
    # Weights rewritten in place with the same size and time: redone.
    st = ckpt.stat()
    raw = bytearray(ckpt.read_bytes())
    raw[-2] ^= 0x40
    ckpt.write_bytes(bytes(raw))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main([*base, "--layers", "0"]) == 0 and _statuses(out) == ["ok"] * 3
    again = main_in_subprocess([*base, "--layers", "0"])
    assert again["loaded"] == [] and _statuses(out) == ["cached"] * 3
    # A damaged output behind an intact header is found without torch too, and redone.
    path = out / "in/2.png.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main([*base, "--layers", "0"]) == 0 and _statuses(out) == ["cached", "cached", "ok"]


def test_raw_checksum_equals_the_tensor_checksum(tmp_path: Path) -> None:
    """verify_features hashes the file's bytes without torch; it must agree with tensors_digest, every dtype."""
    from dinov3_integration.features import FeatureFileError, tensors_digest, verify_features, write_features

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g),
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 2, generator=g).half(),
        "f64": torch.randn(3, generator=g).double(),
        "i64": torch.arange(4),
        "u8": torch.arange(6, dtype=torch.uint8).reshape(2, 3),
        "bool": torch.tensor([True, False]),
        "empty": torch.zeros(0, 8),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "x.safetensors"
    write_features(path, tensors, {"source": "x"})
    assert verify_features(path)["data_digest"] == tensors_digest(tensors)
    raw = path.read_bytes()
    for name, damaged in {"cut": raw[:-3], "trailing": raw + b"\0", "header": raw[:20]}.items():
        path.write_bytes(damaged)
        with pytest.raises(FeatureFileError):
            verify_features(path)
        assert name
