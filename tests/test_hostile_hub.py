"""Hostile cases for the weights hub (issues 13 and 14): each test reproduces a reported failure the way a user
meets it, with the local 127.0.0.1 server of ``_http_server``; nothing is written outside ``tmp_path``.

- cache names from URLs cannot leave the cache folder, and two URLs never share a cache file;
- a signed link's secret appears in no log record (DEBUG included), error message or traceback;
- every URL problem is the library's own ``DownloadError`` (the README's ``https://.../x.pth?Policy=...``);
- no ``.lock`` or ``.part`` is left; a killed download's ``.part`` is resumed; pages are not cached as weights;
- an unreachable Hugging Face Hub fails at once with one line; a lock held by a hung process is reported;
- files get the permissions a plain ``open`` would give.

Like ``test_hub_download.py`` this module does not import torch at the top, so spawned children start quickly.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from _helpers import fetch, files_under
from _http_server import LocalHTTPServer, make_hf_cache
from dinov3_integration.hub import huggingface as hf_mod
from dinov3_integration.hub import lock as lock_mod
from dinov3_integration.hub.cache import atomic_write, cache_path_for_url, url_to_filename
from dinov3_integration.hub.download import download_url, hf_download
from dinov3_integration.hub.errors import (
    DownloadError,
    HashMismatchError,
    IncompleteDownloadError,
    LinkExpiredError,
    URLNotFoundError,
    WeightsError,
)
from dinov3_integration.hub.lock import file_lock, lock_path
from dinov3_integration.utils.atomic import partial_path

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
SECRETS = ("P0L1CYSECRET", "S1GSECRET", "PASSW0RDSECRET")
SIGNED = f"?Policy={SECRETS[0]}&Signature={SECRETS[1]}&Key-Pair-Id=K123"
README_PLACEHOLDER = "https://.../x.pth?Policy=..."


def closed_port_url() -> str:
    with socket.socket() as sock:  # a free port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------------------------- 14.1 traversal


@pytest.mark.parametrize(
    "segment",
    ["%2F{abs}", "..%2F..%2Fescaped.pth", "..%5C..%5Cescaped.pth", "%2E%2E", "%2F{abs}%2F", "..%2F.hidden.pth"],
)
def test_cache_name_never_leaves_the_cache(
    server: LocalHTTPServer, weights_cache: Path, tmp_path: Path, segment: str
) -> None:
    planted = tmp_path / "planted" / "planted.sh"
    raw = "/x/" + segment.format(abs=quote(str(planted), safe=""))
    url = server.add(raw, body=PAYLOAD) + SIGNED
    try:
        path = fetch(url)
    except WeightsError as exc:  # a name that is nothing but dots: refused with a clear message
        assert "dst=" in str(exc)
        path = None
    if path is not None:
        assert path.resolve().is_relative_to(weights_cache.resolve()) and path.read_bytes() == PAYLOAD
        assert "/" not in path.name and "\\" not in path.name and ".." not in path.name
    outside = [p for p in files_under(tmp_path) if not p.startswith("cache/")]
    assert outside == [], f"written outside the cache: {outside}"


def test_existing_file_outside_the_cache_is_not_taken_as_cached(
    server: LocalHTTPServer, weights_cache: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.pth"
    victim.write_bytes(b"not from this server")
    url = server.add("/x/" + quote(str(victim), safe=""), body=PAYLOAD)
    path = fetch(url)
    assert path != victim and path.read_bytes() == PAYLOAD and server.count(urlpath(url)) == 1
    assert victim.read_bytes() == b"not from this server"


def urlpath(url: str) -> str:
    return "/" + url.split("/", 3)[3].split("?", 1)[0]


@pytest.mark.parametrize(("url", "name"), [("https://h/a/%00b%0Ac.pth", "_b_c.pth"), ("https://h/a/.bashrc", "bashrc")])
def test_url_to_filename_sanitises(url: str, name: str) -> None:
    assert url_to_filename(url) == name


def test_long_names_are_capped_keeping_the_hash_prefix() -> None:
    name = url_to_filename("https://h/" + "a" * 300 + "-08c60483.pth")
    assert len(name.encode()) <= 200 and name.endswith("-08c60483.pth")


# --------------------------------------------------------------------------------------------- 14.3 same name


def test_same_file_name_under_two_urls_are_two_files(server: LocalHTTPServer, weights_cache: Path) -> None:
    v1, v2 = os.urandom(1000), os.urandom(1000)
    u1 = server.add("/v1/model.pth", body=v1)
    u2 = server.add("/v2/model.pth", body=v2)
    p1, p2 = fetch(u1 + SIGNED), fetch(u2)
    assert p1 != p2 and p1.name == p2.name == "model.pth"
    assert p1.read_bytes() == v1 and p2.read_bytes() == v2
    # The cache is keyed on the URL without its query: a refreshed signed link reuses the same file.
    assert fetch(u1 + "?Policy=new&Signature=other") == p1 and server.count("/v1/model.pth") == 1


def test_hash_named_official_files_keep_their_name_at_the_top(server: LocalHTTPServer, weights_cache: Path) -> None:
    name = f"dinov3_vits16_pretrain_lvd1689m-{SHA[:8]}.pth"
    path = fetch(server.add(f"/dinov3/{name}", body=PAYLOAD) + SIGNED)
    assert path == weights_cache / name  # where torch.hub puts it, so existing downloads are found


# --------------------------------------------------------------------------------------------- 14.2 secrets


def _fail_cases(base: str, closed: str) -> dict[str, Callable[[], object]]:
    hashed = f"model-{SHA[:8]}.pth"
    wrong = "0" * 8 if not SHA.startswith("0" * 8) else "1" * 8
    return {
        "403 signed": lambda: fetch(f"{base}/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth{SIGNED}"),
        "404": lambda: fetch(f"{base}/nope/model.pth{SIGNED}"),
        "500": lambda: fetch(f"{base}/err/model.pth{SIGNED}", retries=1),
        "refused": lambda: fetch(f"{closed}/w/model.pth{SIGNED}", retries=1),
        "raw space": lambda: fetch(f"{base}/w/{hashed}?Policy={SECRETS[0]} x&Signature={SECRETS[1]}"),
        "dropped": lambda: fetch(f"{base}/drop/model.pth{SIGNED}", retries=1),
        "hash": lambda: fetch(f"{base}/w/model-{wrong}.pth{SIGNED}"),
        "html": lambda: fetch(f"{base}/page/model.pth{SIGNED}"),
        "placeholder": lambda: fetch(f"https://.../x.pth{SIGNED}"),
        "bad port": lambda: fetch(f"http://127.0.0.1:port/x.pth{SIGNED}"),
        "bad host": lambda: fetch(f"http://no-such-host.invalid/x.pth{SIGNED}", retries=1),
        "credentials": lambda: fetch(f"http://user:{SECRETS[2]}@{closed.split('//', 1)[1]}/x.pth{SIGNED}", retries=0),
        "unsupported": lambda: fetch(f"ftp://host/x.pth{SIGNED}"),
    }


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_no_secret_in_any_log_record_error_or_traceback(
    server: LocalHTTPServer, weights_cache: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add(f"/w/model-{SHA[:8]}.pth", body=PAYLOAD)
    server.add("/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", status=403)
    server.add("/err/model.pth", status=500)
    server.add("/drop/model.pth", body=PAYLOAD, drop_after=1000)
    wrong = "0" * 8 if not SHA.startswith("0" * 8) else "1" * 8
    server.add(f"/w/model-{wrong}.pth", body=PAYLOAD)
    server.add("/page/model.pth", body=b"<html><body>Access denied</body></html>", content_type="text/html")
    assert fetch(f"{server.base_url}/w/model-{SHA[:8]}.pth{SIGNED}").read_bytes() == PAYLOAD  # success logs too
    for case, call in _fail_cases(server.base_url, closed_port_url()).items():
        with pytest.raises(WeightsError) as info:
            call()
        text = "".join(traceback.format_exception(info.value))  # chained causes and contexts included
        assert not _leaks(text), f"{case}: secret in the error or its traceback:\n{text}"
        assert isinstance(info.value, DownloadError) or case == "hash", f"{case}: {info.value!r}"
    for record in caplog.records:
        shown = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        assert not _leaks(shown), f"secret in a log record: {shown}"
    out, err = capfd.readouterr()
    assert not _leaks(out + err)
    assert not _leaks(" ".join(files_under(weights_cache)))


def test_raw_space_is_not_retried(server: LocalHTTPServer, weights_cache: Path) -> None:
    server.add("/w/model.pth", body=PAYLOAD)
    with pytest.raises(DownloadError, match="%20"):
        fetch(f"{server.base_url}/w/model.pth?Policy=a b", retries=3)
    assert server.count("/w/model.pth") == 0


# --------------------------------------------------------------------------------------------- 13.7 URL errors


def test_readme_placeholder_through_resolve_weights_is_a_download_error(weights_cache: Path) -> None:
    from dinov3_integration.hub import resolve_weights

    with pytest.raises(DownloadError) as info:
        resolve_weights("dinov3_vitl16", README_PLACEHOLDER, offline=False)
    message = str(info.value)
    assert "host" in message and "download link" in message and "Policy=..." not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no raw UnicodeError in the traceback


@pytest.mark.parametrize(
    "url",
    [
        "https://.../x.pth",
        "http://[::1/x.pth",
        "http://127.0.0.1:99999/x.pth",
        "http://127.0.0.1:port/x.pth",
        "https://a..b/x.pth",
        "https:///x.pth",
        "http://" + "a" * 70 + ".com/x.pth",
        "https://host/",
        "ftp://host/x.pth",
        "file://otherhost/x.pth",
    ],
)
def test_every_malformed_url_is_a_download_error(weights_cache: Path, url: str) -> None:
    with pytest.raises(DownloadError):
        fetch(url, retries=0)
    assert files_under(weights_cache) == []


def test_unresolvable_host_fails_at_once(weights_cache: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="cannot be resolved"):
        fetch("http://no-such-host.invalid/x.pth", retries=3, backoff=1.0)
    print(f"unresolvable host: DownloadError after {time.monotonic() - start:.2f} s (no retries)")


# --------------------------------------------------------------------------------------------- 14.14 leftovers


def test_no_lock_or_part_left_after_downloads(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add(f"/w/model-{SHA[:8]}.pth", body=PAYLOAD)
    path = fetch(url)
    assert files_under(weights_cache) == [path.name]
    server.add("/bad/model.pth", status=500)
    with pytest.raises(DownloadError):
        fetch(server.base_url + "/bad/model.pth", retries=0)
    assert files_under(weights_cache) == [path.name]


def _slow_download(url: str, cache: str) -> None:
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # no multiprocessing semaphore to leak when this child is killed
    os.environ["DINOV3_CACHE"] = cache
    download_url(url, progress=False, backoff=0.0)


def test_killed_download_is_resumed(server: LocalHTTPServer, weights_cache: Path) -> None:
    payload = os.urandom(3 << 20)
    name = f"model-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    url = server.add(f"/w/{name}", body=payload, support_range=True, chunk_size=64 << 10, chunk_delay=0.02)
    target = cache_path_for_url(url)
    child = mp.get_context("spawn").Process(target=_slow_download, args=(url, str(weights_cache)))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _part_size(target) < (1 << 20):
            time.sleep(0.02)
        assert _part_size(target) >= (1 << 20), "the child never wrote a partial file"
    finally:
        child.kill()
        child.join(timeout=30)
    assert not target.exists()
    kept = _part_size(target)
    assert 0 < kept < len(payload)
    path = fetch(url)
    assert path.read_bytes() == payload
    assert server.records(f"/w/{name}")[-1].headers.get("Range") == f"bytes={kept}-"
    assert files_under(weights_cache) == [name]  # the .part and the dead process's .lock are gone


def _part_size(target: Path) -> int:
    from dinov3_integration.utils.atomic import PARTIAL_SUFFIX, temp_prefix

    part = target.parent / (temp_prefix(target) + PARTIAL_SUFFIX[1:])
    return part.stat().st_size if part.exists() else 0


def test_stale_part_without_hash_is_removed_not_spliced(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, support_range=True)
    target = cache_path_for_url(url)
    target.parent.mkdir(parents=True)
    part = partial_path(target)
    part.write_bytes(b"x" * 1000)  # from an older version of the file: nothing can verify a splice
    assert fetch(url).read_bytes() == PAYLOAD
    assert "Range" not in server.records("/w/model.pth")[0].headers
    assert files_under(weights_cache) == [f"{target.parent.name}/model.pth"]


def test_earlier_versions_partial_files_are_removed(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add(f"/w/model-{SHA[:8]}.pth", body=PAYLOAD)
    weights_cache.mkdir()
    (weights_cache / f".model-{SHA[:8]}.pth.0123abcd.part").write_bytes(b"old")
    (weights_cache / f".other-{SHA[:8]}.pth.0123abcd.part").write_bytes(b"not ours")
    fetch(url)
    assert files_under(weights_cache) == [f".other-{SHA[:8]}.pth.0123abcd.part", f"model-{SHA[:8]}.pth"]


def test_truncated_download_without_hash_is_not_committed(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, drop_after=len(PAYLOAD) - 10)
    with pytest.raises(IncompleteDownloadError, match=f"of {len(PAYLOAD)} bytes"):
        fetch(url, retries=0)
    assert files_under(weights_cache) == []
    with pytest.raises(IncompleteDownloadError):  # a rerun does not find a "cached" half file either
        fetch(url, retries=0)
    assert server.count("/w/model.pth") == 2


def test_resumed_across_attempts_then_checked_complete(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, drop_after=100_000, support_range=True, chunk_size=50_000)
    assert fetch(url, retries=2).read_bytes() == PAYLOAD
    assert [r.headers.get("Range") for r in server.records("/w/model.pth")] == [None, "bytes=100000-", "bytes=200000-"]


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"<html><body>Your session expired</body></html>", "text/html; charset=utf-8"),
        (b"\n  <!DOCTYPE html><html></html>", "application/octet-stream"),
        (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>", "binary/octet-stream"),
    ],
)
def test_html_page_is_not_cached_as_weights(
    server: LocalHTTPServer, weights_cache: Path, body: bytes, ctype: str
) -> None:
    url = server.add("/w/model.pth", body=body, content_type=ctype)
    with pytest.raises(DownloadError, match="web page") as info:
        fetch(url + SIGNED)
    assert "Nothing was saved" in str(info.value)
    assert files_under(weights_cache) == []


# --------------------------------------------------------------------------------------------- 14.15 hung lock


def test_lock_held_by_a_hung_process_is_reported(
    server: LocalHTTPServer,
    weights_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(lock_mod, "NOTICE_AFTER", 0.2)
    caplog.set_level(logging.INFO, logger="dinov3")
    url = server.add(f"/w/model-{SHA[:8]}.pth", body=PAYLOAD)
    target = cache_path_for_url(url)
    target.parent.mkdir(parents=True)
    result: list[object] = []
    with file_lock(target):  # stands for a hung process (flock: another open file description conflicts)
        worker = threading.Thread(target=lambda: result.append(download_url(url, progress=True, backoff=0.0)))
        worker.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("waiting for the lock" in r.message for r in caplog.records):
            time.sleep(0.05)
        assert server.count(urlpath(url)) == 0
    worker.join(timeout=60)
    waiting = [r for r in caplog.records if "waiting for the lock" in r.message]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING
    assert str(lock_path(target)) in waiting[0].message and f"process {os.getpid()}" in waiting[0].message
    assert "waiting for the lock" in capfd.readouterr().err  # progress=True says it on stderr too
    assert result == [target] and files_under(weights_cache) == [target.name]


# --------------------------------------------------------------------------------------------- 13.8 permissions


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_files_get_plain_open_permissions(
    server: LocalHTTPServer, weights_cache: Path, tmp_path: Path, umask: int
) -> None:
    import torch

    from dinov3_integration.hub.checkpoint_io import save_state_dict_file

    url = server.add("/w/model.pth", body=PAYLOAD)
    old = os.umask(umask)
    try:
        downloaded = fetch(url)
        saved = [
            save_state_dict_file({"w": torch.zeros(2)}, tmp_path / "out" / name) for name in ("a.safetensors", "b.pth")
        ]
        with atomic_write(tmp_path / "out" / "c.bin") as tmp:
            tmp.write_bytes(b"x")
        plain = tmp_path / "plain"
        plain.write_bytes(b"x")
    finally:
        os.umask(old)
    expected = plain.stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for path in [downloaded, *saved, tmp_path / "out" / "c.bin"]:
        assert path.stat().st_mode & 0o777 == expected, path
    assert downloaded.parent.stat().st_mode & 0o777 == 0o777 & ~umask


# --------------------------------------------------------------------------------------------- 13.11 offline HF


@pytest.fixture
def hub_at_closed_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Online mode (no HF_HUB_OFFLINE) with the Hub pointed at a closed 127.0.0.1 port; an empty HF cache."""
    import huggingface_hub.constants as hf_constants

    endpoint = closed_port_url()
    root = tmp_path / "hf"
    root.mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hf_mod, "_probes", {})
    return root


def test_unreachable_hub_fails_fast_with_one_clear_error(
    hub_at_closed_port: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from dinov3_integration.hub import resolve_weights

    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        resolve_weights("dinov3_vits16", "hf-hub:facebook/dinov3-vits16-pretrain-lvd1689m")
    elapsed = time.monotonic() - start
    with capfd.disabled():
        print(f"unreachable Hub: DownloadError after {elapsed:.2f} s")
    assert elapsed < 15  # a sanity bound only (it was 27-42 s); the figure is printed above
    message = str(info.value)
    assert "Could not reach the Hugging Face Hub" in message and "refused" in message and "HF_HUB_OFFLINE" in message
    assert str(hub_at_closed_port) in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "Retry" in r.getMessage()]
    assert "Retrying" not in capfd.readouterr().err


def test_unreachable_hub_still_serves_the_cache(hub_at_closed_port: Path) -> None:
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    make_hf_cache(hub_at_closed_port, repo, {"model.safetensors": b"weights"})
    start = time.monotonic()
    assert hf_download(repo, "model.safetensors").read_bytes() == b"weights"
    print(f"unreachable Hub, cached file: {time.monotonic() - start:.2f} s")


def test_huggingface_hub_retry_lines_become_debug_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with hf_mod._quiet_hf():
        logging.getLogger("huggingface_hub.utils._http").warning(
            "Retrying in 1s [Retry 1/5] for https://h/x?Signature=%s", SECRETS[1]
        )
    records = [r for r in caplog.records if "Retrying" in r.getMessage()]
    assert [(r.name, r.levelno) for r in records] == [("dinov3.hub", logging.DEBUG)]
    assert not _leaks(records[0].getMessage())


def test_unreachable_hub_from_a_fresh_process(tmp_path: Path) -> None:
    """The user's way: HF_ENDPOINT set before anything is imported, no HF_HUB_OFFLINE, one clear line on stderr."""
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}}
    env.update(HF_ENDPOINT=closed_port_url(), HF_HUB_CACHE=str(tmp_path / "hf"), DINOV3_CACHE=str(tmp_path / "c"))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"), env.get("PYTHONPATH", "")])
    code = (
        "import time\n"
        "from dinov3_integration.hub import resolve_weights\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    resolve_weights('dinov3_vits16', 'hf-hub:facebook/dinov3-vits16-pretrain-lvd1689m')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, round(time.monotonic() - t, 2))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    print(run.stdout, run.stderr)
    kind, seconds = run.stdout.split()
    assert kind == "DownloadError" and float(seconds) < 15
    assert "Retrying" not in run.stderr and "thrown while requesting" not in run.stderr


def test_url_errors_name_no_raw_exception(weights_cache: Path) -> None:
    for url in (README_PLACEHOLDER, closed_port_url() + "/x.pth"):
        with pytest.raises(WeightsError) as info:
            fetch(url, retries=0)
        assert info.value.__cause__ is None and info.value.__suppress_context__, repr(info.value.__context__)


def test_errors_still_typed(server: LocalHTTPServer, weights_cache: Path) -> None:
    server.add("/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", status=403)
    with pytest.raises(LinkExpiredError):
        fetch(server.base_url + "/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" + SIGNED)
    with pytest.raises(URLNotFoundError):
        fetch(server.base_url + "/none.pth")
    wrong = "0" * 8 if not SHA.startswith("0" * 8) else "1" * 8
    with pytest.raises(HashMismatchError):
        fetch(server.add(f"/w/m-{wrong}.pth", body=PAYLOAD))


def test_no_network_is_not_retried(weights_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import urllib.error
    import urllib.request

    calls: list[str] = []

    def unreachable(request: object, timeout: float) -> object:
        calls.append("x")
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DownloadError, match="Network is unreachable"):
        fetch("https://dl.fbaipublicfiles.com/dinov3/x.pth" + SIGNED, retries=3, backoff=1.0)
    assert calls == ["x"]


def test_deprecated_temp_helpers_still_work(tmp_path: Path) -> None:
    from dinov3_integration.hub.cache import commit_file, temp_path_beside

    tmp = temp_path_beside(tmp_path / "out.bin")
    tmp.write_bytes(b"data")
    commit_file(tmp, tmp_path / "out.bin")
    assert files_under(tmp_path) == ["out.bin"] and (tmp_path / "out.bin").read_bytes() == b"data"


def test_create_model_from_a_signed_link_logs_no_secret(
    server: LocalHTTPServer, weights_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The user's call, end to end: create_model(weights=<signed link>) on a tiny model, every DEBUG record read."""
    import torch

    from dinov3_integration import create_model
    from dinov3_integration.hub.checkpoint_io import save_state_dict_file

    tiny = dict(depth=1, embed_dim=64, num_heads=2)
    reference = create_model("dinov3_vits16", pretrained=False, **tiny)
    file = save_state_dict_file(reference.state_dict(), tmp_path / "tiny.safetensors")
    url = server.add("/w/tiny.safetensors", body=file.read_bytes()) + SIGNED
    caplog.set_level(logging.DEBUG)
    model = create_model("dinov3_vits16", weights=url, **tiny)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert not _leaks(model.weights_source) and "127.0.0.1" in model.weights_source
    assert any("create_model" in r.getMessage() for r in caplog.records)  # the factory's line was read too
    assert not [r.getMessage() for r in caplog.records if _leaks(r.getMessage())]


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_unrecognised_signed_url_is_redacted_in_the_error(scheme):
    from dinov3_integration.hub import resolve_weights
    from dinov3_integration.hub.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        resolve_weights("dinov3_vits16", f"{scheme}://bucket/x.pth?X-Amz-Signature=TOPSECRET")
    assert "TOPSECRET" not in str(info.value) and "TOPSECRET" not in repr(getattr(info.value, "searched", ""))
    assert "bucket/x.pth" in str(info.value)
