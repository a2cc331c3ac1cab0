"""Hostile inputs to ``dinov3 extract`` (issues 13 and 14): one test per reported case, each run the user's way.

In-process ``main([...])`` where a subprocess adds nothing (faster); subprocesses for torchrun and for what a
user sees on the terminal. Tiny random models; everything is written below the test's temporary folder.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _helpers import TESTS, cli_env, make_video, manifest, run_dinov3
from dinov3_integration.cli.main import main
from dinov3_integration.features import read_features

TINY_KW = "depth=2,embed_dim=32,num_heads=2"
TINY = ["--random-weights", "--model-kwargs", TINY_KW, "--resolution", "32", "--num-workers", "0", "-q"]


def _env(**extra: str) -> dict[str, str]:
    return cli_env(TESTS, **extra)  # the tests folder on the path too


def dinov3(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return run_dinov3(*args, env=env or _env(), timeout=timeout)


def save_rgb(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def tiny_checkpoint(path: Path) -> Path:
    from safetensors.torch import save_file

    from dinov3_integration.models import create_model

    torch.manual_seed(0)
    model = create_model("dinov3_vits16", depth=2, embed_dim=32, num_heads=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ------------------------------------------------------------------------------------------------------ issue 13
def test_13_3_aggregate_needs_aggregator_weights_or_explicit_random(tmp_path: Path) -> None:
    scene = tmp_path / "scene"
    for i in range(2):
        save_rgb(scene / f"f{i}.png", 32, 32, seed=i)
    out = tmp_path / "out"
    proc = dinov3("extract", str(scene), "--out", str(out), *TINY[:-1], "--aggregate", "--aggregator-kwargs", "depth=1")
    assert proc.returncode == 2 and "randomly initialised Aggregator" in proc.stderr
    assert "--aggregator-weights" in proc.stderr and "--random-aggregator" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(out.rglob("*.safetensors"))
    proc = dinov3(
        "extract", str(scene), "--out", str(out), *TINY[:-1], "--aggregate", "--aggregator-kwargs", "depth=1",
        "--random-aggregator",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--random-aggregator: the Aggregator has random weights" in proc.stderr
    assert main(["extract", str(scene), "--out", str(out), *TINY, "--random-aggregator"]) == 2  # needs --aggregate


def test_13_4_layers_negative_list_as_written(tmp_path: Path) -> None:
    image = save_rgb(tmp_path / "a.png")
    out = tmp_path / "out"
    # The README's form, with the value as a separate argument: argparse used to read -4,-1 as an option.
    assert main(["extract", str(image), "--out", str(out), *TINY, "--layers", "-2,-1", "--save", "cls"]) == 0
    tensors, meta = read_features(out / "a.png.safetensors")
    assert meta["layers"] == [0, 1] and set(tensors) == {"cls.0", "cls.1"}
    # Every example of `extract --help` parses as written.
    from dinov3_integration.cli.extract import EPILOG
    from dinov3_integration.cli.main import build_parser

    parser = build_parser()
    examples = [line.split("dinov3 ", 1)[1].split() for line in EPILOG.splitlines() if "dinov3 extract" in line]
    assert len(examples) >= 3
    for argv in examples:
        args = parser.parse_args(argv)
        assert args.command == "extract" and args.out == "feats"
    assert parser.parse_args(examples[1]).layers == "-4,-3,-2,-1"
    with pytest.raises(SystemExit):  # a real unknown option is still one
        parser.parse_args(["extract", "x", "--out", "o", "--layers", "-4,-1", "-z"])


def test_13_11_torchrun_reports_a_bad_command_line_once(tmp_path: Path) -> None:
    image = save_rgb(tmp_path / "a.png")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "dinov3_integration", "extract", str(image), "--out", str(tmp_path / "out"), *TINY,
        "--device", "cpu", "--layers", "7",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.count("--layers: index 7 is out of range") == 1, proc.stderr
    assert proc.stderr.count("dinov3 extract: error:") == 1, proc.stderr


# ------------------------------------------------------------------------------------------------------ issue 14
def test_14_2_signed_link_secret_in_no_log_line_or_metadata(tmp_path: Path) -> None:
    from _http_server import LocalHTTPServer

    body = tiny_checkpoint(tmp_path / "tiny.safetensors").read_bytes()
    image = save_rgb(tmp_path / "a.png")
    out = tmp_path / "out"
    secret = "Sig-s3cr3t-XYZ"
    with LocalHTTPServer() as server:
        url = server.add("/w/tiny.safetensors", body=body) + f"?Policy=p&Signature={secret}"
        proc = dinov3(
            "extract", str(image), "--out", str(out), "--weights", url, "--model-kwargs", TINY_KW,
            "--resolution", "32", "--num-workers", "0", "-v",
            env=_env(DINOV3_CACHE=str(tmp_path / "cache")),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stderr + proc.stdout
    assert "/w/tiny.safetensors" in proc.stderr  # the log line still names the weights
    _, meta = read_features(out / "a.png.safetensors")
    assert secret not in json.dumps(meta) and "/w/tiny.safetensors" in meta["weights"]
    assert secret not in (out / "manifest.jsonl").read_text()
    # The error when the weights cannot be loaded names the link without its secret.
    proc = dinov3(
        "extract", str(image), "--out", str(out), "--weights", url.replace("tiny.", "gone."), "--model-kwargs",
        TINY_KW, "--num-workers", "0", env=_env(DINOV3_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert proc.returncode == 2 and "/w/gone.safetensors" in proc.stderr and secret not in proc.stderr


def test_14_4_16_bit_and_float_images_scaled_by_their_range(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    grey16 = np.full((32, 48), 30146, dtype=np.uint16)  # 46 % grey
    Image.fromarray(grey16).save(folder / "g16.png")
    Image.fromarray(np.full((32, 48), 0.5, dtype=np.float32)).save(folder / "half.tif")
    Image.fromarray(np.full((32, 48, 3), 117, dtype=np.uint8)).save(folder / "g8.png")  # round(30146 / 257)
    Image.fromarray(np.full((32, 48, 3), 128, dtype=np.uint8)).save(folder / "h8.png")  # round(0.5 * 255)
    Image.fromarray(np.full((32, 48), 3.0, dtype=np.float32)).save(folder / "hot.tif")  # no known scale
    from dinov3_integration.data.preprocess import load_image

    assert load_image(folder / "g16.png").unique().tolist() == [117]
    assert load_image(folder / "half.tif").unique().tolist() == [128]
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    saturated = (load_image(tmp_path / "ramp.png") == 255).float().mean().item()
    assert saturated < 0.01  # was 99.6 %

    out = tmp_path / "out"
    assert main(["extract", str(folder), "--out", str(out), *TINY]) == 1  # hot.tif is refused
    by_name = {Path(r["input"]).name: r for r in manifest(out)}
    assert by_name["hot.tif"]["status"] == "failed" and "only values in [0, 1]" in by_name["hot.tif"]["error"]
    a, _ = read_features(out / "in/g16.png.safetensors")
    b, _ = read_features(out / "in/g8.png.safetensors")
    c, _ = read_features(out / "in/half.tif.safetensors")
    d, _ = read_features(out / "in/h8.png.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(c[k], d[k])


def test_14_5_output_of_another_input_is_not_reused_or_overwritten(tmp_path: Path) -> None:
    a = save_rgb(tmp_path / "a" / "same.png", seed=1)
    b = tmp_path / "b" / "same.png"
    b.parent.mkdir()
    save_rgb(b, seed=2)
    st = a.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))  # equal size and mtime: only the path tells them apart
    assert b.stat().st_size == st.st_size
    out = tmp_path / "out"
    assert main(["extract", str(a), "--out", str(out), *TINY]) == 0
    first, meta = read_features(out / "same.png.safetensors")
    assert main(["extract", str(b), "--out", str(out), *TINY]) == 1
    [rec] = manifest(out)
    assert rec["status"] == "failed" and str(a) in rec["error"] and "--overwrite" in rec["error"]
    kept, meta_kept = read_features(out / "same.png.safetensors")
    assert meta_kept["source"] == str(a) and torch.equal(kept["cls.1"], first["cls.1"])
    assert main(["extract", str(b), "--out", str(out), *TINY, "--overwrite"]) == 0
    new, meta_new = read_features(out / "same.png.safetensors")
    assert meta_new["source"] == str(b) and not torch.equal(new["cls.1"], first["cls.1"])


def test_14_9_stale_temp_removal_is_literal(tmp_path: Path) -> None:
    """``photo[1].png``'s cleanup never deletes ``photo1.png``'s temporary while it is being written."""
    from dinov3_integration.features import write_features
    from dinov3_integration.utils.atomic import atomic_path

    tensors = {"cls.1": torch.arange(4.0)}
    plain, bracket = tmp_path / "photo1.png.safetensors", tmp_path / "photo[1].png.safetensors"
    with atomic_path(plain) as tmp:
        tmp.write_bytes(b"partial")
        write_features(bracket, tensors, {})  # removes stale temporaries of photo[1] only
        assert tmp.exists()
        from safetensors.torch import save_file

        save_file(tensors, str(tmp))
    assert read_features(plain)[0]["cls.1"].tolist() == [0, 1, 2, 3]
    # Concurrently, many times: every write succeeds.
    errors: list[BaseException] = []

    def writer(dst: Path) -> None:
        try:
            for _ in range(30):
                write_features(dst, tensors, {})
        except BaseException as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in (plain, bracket)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not list(tmp_path.glob("*.tmp"))


def test_14_10_unbounded_work_is_refused(tmp_path: Path) -> None:
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 1000, 3), dtype=np.uint8)).save(thin)
    out = tmp_path / "out"
    assert main(["extract", str(thin), "--out", str(out), *TINY[:-3], "--resolution", "256", "--num-workers", "0"]) == 1
    [rec] = manifest(out)
    assert rec["status"] == "failed" and "8192-pixel cap" in rec["error"] and "--resolution HxW" in rec["error"]
    for fps in ("inf", "nan", "-1", "0"):
        proc = dinov3("extract", str(thin), "--out", str(out), *TINY, "--fps", fps)
        assert proc.returncode == 2 and "--fps must be a positive finite number" in proc.stderr, (fps, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_14_11_names_near_the_file_name_limit(tmp_path: Path) -> None:
    images = [save_rgb(tmp_path / "in" / ("n" * (n - 4) + ".png")) for n in (238, 240)]
    out = tmp_path / "out"
    assert main(["extract", str(tmp_path / "in"), "--out", str(out), *TINY]) == 0
    for image in images:
        assert (out / "in" / f"{image.name}.safetensors").is_file()
    assert not list(out.rglob("*.tmp"))


def test_14_12_unreadable_folder_and_partly_decodable_video_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("av")
    root = tmp_path / "in"
    save_rgb(root / "ok.png")
    locked = root / "locked"
    save_rgb(locked / "hidden.png")
    make_video(root / "clip.mp4", n=30)
    data = bytearray((root / "clip.mp4").read_bytes())
    n = len(data)
    data[n // 2 : n // 2 + n // 4] = bytes(n // 4)  # corrupt in the middle
    (root / "clip.mp4").write_bytes(bytes(data))
    if os.geteuid() == 0:  # root reads a chmod-000 folder: make the listing fail the way it does for a user
        real = os.scandir

        def scandir(path: object = ".") -> object:
            if os.fspath(path) == str(locked):
                raise PermissionError(errno.EACCES, "Permission denied", str(locked))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    out = tmp_path / "out"
    try:
        status = main(["extract", str(root), "--out", str(out), *TINY, "--frames", "30"])
    finally:
        locked.chmod(0o755)
    assert status == 1
    by_input = {r["input"]: r for r in manifest(out)}
    assert by_input[str(locked)]["status"] == "failed" and "Permission denied" in by_input[str(locked)]["error"]
    video = by_input[str(root / "clip.mp4")]
    assert video["status"] == "ok" and video["frames"] < 30 and "decoding stopped early" in video["warning"]
    _, meta = read_features(out / "in/clip.mp4.safetensors")
    assert "decoding stopped early" in meta["decode_warning"]
    assert by_input[str(root / "ok.png")]["status"] == "ok"


def test_14_13_resume_by_weights_identity_and_data_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tiny_checkpoint(tmp_path / "w.safetensors")
    image = save_rgb(tmp_path / "a.png")
    out = tmp_path / "out"
    common = ["--model-kwargs", TINY_KW, "--resolution", "32", "--num-workers", "0", "-q"]
    monkeypatch.chdir(tmp_path)
    assert main(["extract", str(image), "--out", str(out), "--weights", "w.safetensors", *common]) == 0
    assert main(["extract", str(image), "--out", str(out), "--weights", "./w.safetensors", *common]) == 0
    assert [r["status"] for r in manifest(out)] == ["cached"]  # the same weights, written differently
    copy = shutil.copy(ckpt, tmp_path / "copy.safetensors")
    assert main(["extract", str(image), "--out", str(out), "--weights", str(copy), *common]) == 0
    assert [r["status"] for r in manifest(out)] == ["cached"]
    # A zeroed data section behind an intact header is redone, not trusted.
    path = out / "a.png.safetensors"
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    good = {k: v.clone() for k, v in read_features(path)[0].items()}  # (safetensors maps the file)
    raw[header:] = bytes(len(raw) - header)
    path.write_bytes(bytes(raw))
    assert main(["extract", str(image), "--out", str(out), "--weights", str(ckpt), *common]) == 0
    assert [r["status"] for r in manifest(out)] == ["ok"]
    assert all(torch.equal(v, good[k]) for k, v in read_features(path)[0].items())


def test_14_15_errors_are_clear_lines_not_tracebacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = save_rgb(tmp_path / "a.png")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {
        "is an existing file": ["--out", str(afile)],
        "--num-workers must be 0": ["--out", str(tmp_path / "o"), "--num-workers", "-1"],
        "depth='abc'": ["--out", str(tmp_path / "o"), "--model-kwargs", "depth=abc"],
    }
    for expected, extra in cases.items():
        proc = dinov3("extract", str(image), *TINY, *extra)
        assert proc.returncode == 2 and expected in proc.stderr, (expected, proc.stderr)
        assert "Traceback" not in proc.stderr
    # An unwritable --out is found before any model is built (root ignores chmod: fail the write the same way).
    import dinov3_integration.utils.atomic as atomic

    built: list[str] = []
    import dinov3_integration.extraction.engine as engine

    monkeypatch.setattr(engine, "build_model", lambda *a, **k: built.append("model"))
    real_new_temp = atomic._new_temp

    def read_only(dst: Path, **kw: object) -> Path:
        if dst.parent == tmp_path / "ro":
            raise PermissionError(errno.EROFS, "Read-only file system", str(dst.parent))
        return real_new_temp(dst, **kw)

    monkeypatch.setattr(atomic, "_new_temp", read_only)
    (tmp_path / "ro").mkdir()
    with pytest.raises(Exception) as info:
        from dinov3_integration.cli.extract import check_output_folder

        check_output_folder(str(tmp_path / "ro"))
    assert "--out" in str(info.value) and "Read-only file system" in str(info.value)
    assert main(["extract", str(image), "--out", str(tmp_path / "ro"), *TINY]) == 2 and not built
    monkeypatch.undo()

    # A full disk when the manifest is written: a clear error, the finished features stay.
    import dinov3_integration.extraction.sinks as sinks

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sinks, "write_jsonl", full)
    out = tmp_path / "full"
    assert main(["extract", str(image), "--out", str(out), *TINY]) == 2
    assert (out / "a.png.safetensors").is_file()


# ------------------------------------------------------------------------------------------------------ issue 15
def test_15_2_complete_rerun_skips_the_model_and_still_redoes_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dinov3_integration.extraction.engine as engine

    ckpt = tiny_checkpoint(tmp_path / "w.safetensors")
    folder = tmp_path / "in"
    images = [save_rgb(folder / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out"
    base = ["extract", str(folder), "--out", str(out), "--weights", str(ckpt), *TINY[1:]]
    assert main(base) == 0
    first = {p.name: read_features(p)[0]["cls.1"].clone() for p in out.rglob("*.safetensors")}

    builds: list[int] = []
    real_build = engine.build_model

    def counting(*a: object, **k: object) -> object:
        builds.append(1)
        return real_build(*a, **k)

    monkeypatch.setattr(engine, "build_model", counting)
    assert main(base) == 0 and not builds  # nothing built, nothing hashed
    assert [r["status"] for r in manifest(out)] == ["cached"] * 3
    # A changed setting: the model is built and every output redone.
    assert main([*base, "--save-dtype", "float16"]) == 0 and len(builds) == 1
    assert [r["status"] for r in manifest(out)] == ["ok"] * 3
    assert main([*base, "--save-dtype", "float16"]) == 0 and len(builds) == 1
    # A changed input: built again, only that input redone.
    save_rgb(images[1], seed=9)
    assert main([*base, "--save-dtype", "float16"]) == 0 and len(builds) == 2
    assert [r["status"] for r in manifest(out)] == ["cached", "ok", "cached"]
    # Weights rewritten in place with the same size and time: the content hash tells them apart.
    st = ckpt.stat()
    raw = bytearray(ckpt.read_bytes())
    raw[-2] ^= 0x40  # a different value in the last parameter
    ckpt.write_bytes(bytes(raw))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert main([*base, "--save-dtype", "float16"]) == 0 and len(builds) == 3
    assert [r["status"] for r in manifest(out)] == ["ok"] * 3
    assert set(first) == {p.name for p in out.rglob("*.safetensors")}
