"""Tests for the download layer: local HTTP server, file:// URLs, the cache folder and Hugging Face caches.

No test touches the network: every URL points at a server on 127.0.0.1 started here, and every Hugging Face
access goes to a cache laid out under ``tmp_path`` in offline mode. This module deliberately does not import
torch, so the processes spawned by the concurrency test start quickly.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from _helpers import fetch, files_under
from _http_server import LocalHTTPServer, make_hf_cache
from dinov3_integration.hub import cache as cache_mod
from dinov3_integration.hub.cache import (
    atomic_write,
    cache_path_for_url,
    cache_relpath,
    get_cache_dir,
    hash_prefix_from_filename,
    redact_url,
    url_to_filename,
)
from dinov3_integration.hub.download import download_url, hf_download, is_signed_url
from dinov3_integration.hub.errors import (
    DINOV3_DOWNLOAD_FORM,
    DownloadError,
    GatedRepoAccessError,
    HashMismatchError,
    HTTPStatusError,
    IncompleteDownloadError,
    LinkExpiredError,
    URLNotFoundError,
    WeightsError,
    WeightsNotFoundError,
)

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
SIGNED_QUERY = "?Policy=eyJTdGF0ZW1lbnQiOiJ4In0_&Signature=abc~def&Key-Pair-Id=K123"


# --------------------------------------------------------------------------------------------- names and folders


@pytest.mark.parametrize(
    ("url", "name"),
    [
        (
            "https://x/dinov3/dinov3_vits16_pretrain_lvd1689m-08c60483.pth" + SIGNED_QUERY,
            "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
        ),
        ("https://host/a/b/model.safetensors#frag", "model.safetensors"),
        ("file:///tmp/some%20dir/w.pth", "w.pth"),
    ],
)
def test_url_to_filename_drops_query_and_fragment(url: str, name: str) -> None:
    assert url_to_filename(url) == name


def test_url_without_file_name_is_rejected() -> None:
    with pytest.raises(WeightsError, match="dst="):
        url_to_filename("https://host/")


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("dinov3_vits16_pretrain_lvd1689m-08c60483.pth", "08c60483"),
        ("dinov3_vit7b16_pretrain_sat493m-A6675841.pth", "a6675841"),
        ("a-b-0123456789abcdef.safetensors", "0123456789abcdef"),
        ("model-abc.pth", None),  # fewer than 8 hex digits
        ("model-v2.pth", None),
        ("model.pth", None),
    ],
)
def test_hash_prefix_from_filename(name: str, prefix: str | None) -> None:
    assert hash_prefix_from_filename(name) == prefix


def test_redact_url_hides_signature() -> None:
    shown = redact_url("https://x/w.pth" + SIGNED_QUERY)
    assert "Signature" not in shown and shown.startswith("https://x/w.pth")
    assert is_signed_url("https://x/w.pth" + SIGNED_QUERY)
    assert not is_signed_url("https://x/w.pth?download=1")


def test_cache_dir_env_override_and_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOV3_CACHE", str(tmp_path / "mine"))
    assert get_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DINOV3_CACHE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert get_cache_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert files_under(tmp_path) == ["out.bin"]


# --------------------------------------------------------------------------------------------- happy paths


def test_download_into_cache_and_reuse(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD)
    path = fetch(url)
    # A name without a hash prefix is keyed on the URL: <hash of the URL without query>/model.pth.
    assert path == cache_path_for_url(url) and path.parent.parent == weights_cache and path.name == "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert fetch(url) == path
    assert server.count("/w/model.pth") == 1  # the second call made no request
    assert files_under(weights_cache) == [f"{path.parent.name}/model.pth"]


def test_signed_url_cached_under_clean_name(server: LocalHTTPServer, weights_cache: Path) -> None:
    name = f"dinov3_vits16_pretrain_lvd1689m-{SHA[:8]}.pth"
    url = server.add(f"/dinov3/{name}", body=PAYLOAD) + SIGNED_QUERY
    path = fetch(url)
    assert path.name == name
    assert files_under(weights_cache) == [name]
    assert server.records(f"/dinov3/{name}")[0].query  # the signature was sent to the server


def test_explicit_dst_file_and_folder(server: LocalHTTPServer, tmp_path: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD)
    assert fetch(url, dst=tmp_path / "x.pth").read_bytes() == PAYLOAD
    folder = tmp_path / "folder"
    folder.mkdir()
    assert fetch(url, dst=folder) == folder / "model.pth"


def test_full_sha256_accepted(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD)
    assert fetch(url, expected_sha256=SHA.upper()).read_bytes() == PAYLOAD


# --------------------------------------------------------------------------------------------- hash mismatches


def test_filename_hash_prefix_mismatch(server: LocalHTTPServer, weights_cache: Path) -> None:
    wrong = "0" * 8 if not SHA.startswith("0" * 8) else "1" * 8
    url = server.add(f"/w/model-{wrong}.pth", body=PAYLOAD)
    with pytest.raises(HashMismatchError) as info:
        fetch(url)
    assert info.value.expected == wrong and info.value.actual == SHA
    assert wrong in str(info.value) and SHA in str(info.value) and "deleted" in str(info.value)
    assert files_under(weights_cache) == []
    # check_hash=False skips the file-name prefix.
    assert fetch(url, check_hash=False).read_bytes() == PAYLOAD


def test_caller_sha256_mismatch(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD)
    with pytest.raises(HashMismatchError, match="given by the caller") as info:
        fetch(url, expected_sha256="ab" * 32)
    assert "ab" * 32 in str(info.value) and SHA in str(info.value)
    assert files_under(weights_cache) == []


def test_cached_file_checked_against_caller_sha256(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD)
    cached = cache_path_for_url(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"something else")
    with pytest.raises(HashMismatchError, match="left untouched"):
        fetch(url, expected_sha256=SHA)
    assert cached.read_bytes() == b"something else"
    assert server.count("/w/model.pth") == 0


# --------------------------------------------------------------------------------------------- flaky servers


def test_dropped_connection_always_fails_cleanly(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, drop_after=len(PAYLOAD) // 2)
    with pytest.raises(IncompleteDownloadError) as info:
        fetch(url, retries=2)
    err = info.value
    assert err.expected == len(PAYLOAD) and 0 < err.received < len(PAYLOAD)
    assert f"{err.received} of {len(PAYLOAD)} bytes" in str(err)
    assert server.count("/w/model.pth") == 3
    assert files_under(weights_cache) == []


def test_dropped_first_attempt_succeeds_on_retry(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, drop_after=len(PAYLOAD) // 2, drop_times=1)
    assert fetch(url, retries=2).read_bytes() == PAYLOAD
    records = server.records("/w/model.pth")
    assert len(records) == 2
    assert files_under(weights_cache) == [cache_relpath(url)]


def test_resumes_with_range_request(server: LocalHTTPServer, weights_cache: Path) -> None:
    half = len(PAYLOAD) // 2
    url = server.add("/w/model.pth", body=PAYLOAD, drop_after=half, drop_times=1, support_range=True, chunk_size=half)
    assert fetch(url, expected_sha256=SHA).read_bytes() == PAYLOAD
    records = server.records("/w/model.pth")
    assert len(records) == 2 and records[1].headers.get("Range") == f"bytes={half}-"


def test_server_error_retried_then_ok(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, status=503, fail_times=2)
    assert fetch(url, retries=3).read_bytes() == PAYLOAD
    assert server.count("/w/model.pth") == 3


def test_server_error_gives_up(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", status=500)
    with pytest.raises(HTTPStatusError, match="HTTP 500") as info:
        fetch(url, retries=1)
    assert info.value.status == 500
    assert server.count("/w/model.pth") == 2
    assert files_under(weights_cache) == []


def test_timeout_retried(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/w/model.pth", body=PAYLOAD, stall=1.0, stall_times=1)
    assert fetch(url, timeout=0.3, retries=1).read_bytes() == PAYLOAD
    assert server.count("/w/model.pth") == 2


def test_connection_refused_is_a_download_error(tmp_path: Path, weights_cache: Path) -> None:
    with LocalHTTPServer() as srv:  # take a free port, then close the server so nothing listens there
        url = srv.base_url + "/w/model.pth"
    with pytest.raises(DownloadError, match="after 2 attempt"):
        fetch(url, retries=1)
    assert files_under(weights_cache) == []


# --------------------------------------------------------------------------------------------- 4xx answers


def test_403_on_signed_link_asks_for_fresh_link(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.add("/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", status=403) + SIGNED_QUERY
    with pytest.raises(LinkExpiredError) as info:
        fetch(url)
    message = str(info.value)
    assert "expired" in message and "fresh link" in message and DINOV3_DOWNLOAD_FORM in message
    assert "Signature" not in message  # the signature is not leaked into logs/tracebacks
    assert server.count("/dinov3/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth") == 1
    assert files_under(weights_cache) == []


def test_404_names_url_and_is_not_retried(server: LocalHTTPServer, weights_cache: Path) -> None:
    url = server.base_url + "/nope/model.pth"
    with pytest.raises(URLNotFoundError) as info:
        fetch(url, retries=3)
    assert url in str(info.value) and info.value.status == 404
    assert isinstance(info.value, WeightsNotFoundError)
    assert server.count("/nope/model.pth") == 1
    assert files_under(weights_cache) == []


def test_unsupported_scheme() -> None:
    with pytest.raises(WeightsError, match="local file"):
        download_url("ftp://host/model.pth")


# --------------------------------------------------------------------------------------------- file:// URLs


def test_file_url_read_in_place_and_verified(tmp_path: Path, weights_cache: Path) -> None:
    src = tmp_path / f"w-{SHA[:8]}.pth"
    src.write_bytes(PAYLOAD)
    assert download_url(src.as_uri()) == src
    assert files_under(weights_cache) == []  # nothing copied into the cache
    bad = tmp_path / "w-00000000.pth"
    bad.write_bytes(PAYLOAD)
    with pytest.raises(HashMismatchError, match="left untouched"):
        download_url(bad.as_uri())
    assert bad.read_bytes() == PAYLOAD  # a user's own file is never deleted


def test_file_url_copied_to_dst(tmp_path: Path) -> None:
    src = tmp_path / "w.pth"
    src.write_bytes(PAYLOAD)
    out = download_url(src.as_uri(), tmp_path / "copy.pth", expected_sha256=SHA, progress=False)
    assert out.read_bytes() == PAYLOAD


def test_file_url_missing(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="No such file"):
        download_url((tmp_path / "missing.pth").as_uri())


# --------------------------------------------------------------------------------------------- two processes


def _download_in_child(url: str, dst: str, barrier: object, results: object) -> None:
    barrier.wait(timeout=60)  # type: ignore[attr-defined]
    try:
        path = download_url(url, dst, progress=False, backoff=0.0)
        results.put(("ok", hashlib.sha256(path.read_bytes()).hexdigest()))  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent
        results.put(("error", repr(exc)))  # type: ignore[attr-defined]


def test_two_processes_download_same_file(server: LocalHTTPServer, tmp_path: Path) -> None:
    # Slow enough (~0.4 s) that the second process arrives while the first one holds the lock.
    url = server.add("/w/model.pth", body=PAYLOAD, chunk_size=16_384, chunk_delay=0.02)
    dst = tmp_path / "dl" / "model.pth"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_download_in_child, args=(url, str(dst), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    assert outcomes == [("ok", SHA), ("ok", SHA)]
    assert dst.read_bytes() == PAYLOAD
    assert 1 <= server.count("/w/model.pth") <= 2
    assert files_under(dst.parent) == ["model.pth"]


# --------------------------------------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf_offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hf_constants

    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import time; patch the constants it consults too.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return root


def test_hf_cache_hit_offline(hf_offline_cache: Path) -> None:
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    commit = make_hf_cache(hf_offline_cache, repo, {"model.safetensors": b"weights", "config.json": b"{}"})
    path = hf_download(repo, "model.safetensors")
    assert path.read_bytes() == b"weights"
    assert hf_download(repo, "config.json", revision=commit).read_bytes() == b"{}"


def test_hf_offline_nothing_cached_lists_what_was_searched(hf_offline_cache: Path) -> None:
    repo = "facebook/dinov3-vitb16-pretrain-lvd1689m"
    with pytest.raises(WeightsNotFoundError) as info:
        hf_download(repo, "model.safetensors")
    err = info.value
    folder = str(hf_offline_cache / "models--facebook--dinov3-vitb16-pretrain-lvd1689m")
    assert any(folder in place for place in err.searched)
    assert folder in str(err) and "offline" in str(err) and "hf download" in str(err)


def test_hf_offline_missing_file_in_cached_repo(hf_offline_cache: Path) -> None:
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    make_hf_cache(hf_offline_cache, repo, {"config.json": b"{}"})
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        hf_download(repo, "model.safetensors")


def _fake_hf_error(name: str, status: int | None = None) -> BaseException:
    from dinov3_integration.hub.download import _hf_errors

    cls = _hf_errors()[name]
    exc = cls.__new__(cls)  # skip __init__: it wants a live HTTP response object
    exc.args = (f"fake {name}",)
    if status is not None:
        exc.response = type("Resp", (), {"status_code": status})()
    return exc


@pytest.mark.parametrize(
    ("name", "status", "expected", "text"),
    [
        ("GatedRepoError", None, GatedRepoAccessError, "Accept the licence"),
        ("HfHubHTTPError", 401, GatedRepoAccessError, "HF_TOKEN"),
        ("RepositoryNotFoundError", None, WeightsNotFoundError, "not found"),
        ("RevisionNotFoundError", None, WeightsNotFoundError, "Revision 'v9'"),
        ("EntryNotFoundError", None, WeightsNotFoundError, "has no file"),
        ("HfHubHTTPError", 502, DownloadError, "network"),
        ("LocalEntryNotFoundError", None, DownloadError, "Could not reach the Hugging Face Hub"),
    ],
)
def test_hf_errors_translated(
    monkeypatch: pytest.MonkeyPatch, name: str, status: int | None, expected: type, text: str
) -> None:
    import huggingface_hub

    def fail(*args: object, **kwargs: object) -> str:
        raise _fake_hf_error(name, status)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(expected, match=text) as info:
        hf_download("facebook/dinov3-vitl16-pretrain-lvd1689m", "model.safetensors", "v9", local_files_only=False)
    if expected is GatedRepoAccessError:
        assert "https://huggingface.co/facebook/dinov3-vitl16-pretrain-lvd1689m" in str(info.value)
        assert "hf auth login" in str(info.value)


def test_cache_module_has_no_torch_import_at_top() -> None:
    # Keeps `import dinov3_integration.hub.download` light for tools and child processes.
    assert "torch" not in cache_mod.__dict__
