"""Tests for resolving weights (search order, every kind of ``weights=``) and loading them into models.

Everything is local: tiny random models (width 64, one block) saved under ``tmp_path``, a Hugging Face cache laid
out on disk in offline mode, and a local HTTP server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from _http_server import LocalHTTPServer, make_hf_cache
from dinov3_integration.hub import formats
from dinov3_integration.hub.checkpoint_io import save_state_dict_file
from dinov3_integration.hub.errors import WeightsError, WeightsMismatchError, WeightsNotFoundError
from dinov3_integration.hub.sources import (
    ResolvedWeights,
    hf_repo_id,
    load_pretrained,
    official_filename,
    parse_hf_hub,
    resolve_weights,
)
from dinov3_integration.models import SAT_MEAN, create_model

TINY = {"depth": 1, "embed_dim": 64, "num_heads": 1}
VITS_FILE = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"


# Every test: empty weights cache and Hugging Face cache (offline), no $DINOV3_WEIGHTS_DIR (conftest.py).
pytestmark = pytest.mark.usefixtures("isolated")


def tiny_model(name: str = "dinov3_vits16", seed: int = 0, **kwargs: object) -> torch.nn.Module:
    """A small model whose every parameter is random (and RoPE periods bf16-rounded like the official files)."""
    torch.manual_seed(seed)
    model = create_model(name, **{"pretrained": False, **TINY, **kwargs})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
        model.rope_embed.periods.copy_(formats.rope_periods(64, 100.0, "reference"))
    return model


def official_sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def safetensors_bytes(sd: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    path = save_state_dict_file(sd, tmp_path / f"tmp-{len(sd)}-{id(sd)}.safetensors")
    data = path.read_bytes()
    path.unlink()
    return data


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- names


def test_official_names_and_repos() -> None:
    assert official_filename("dinov3_vits16", "lvd1689m") == VITS_FILE
    assert official_filename("dinov3_vitl16", "sat493m") == "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"
    assert official_filename("dinov3_vitl14", "lvd1689m") == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert hf_repo_id("dinov3_vitb16", "lvd1689m") == "facebook/dinov3-vitb16-pretrain-lvd1689m"
    assert hf_repo_id("dinov3_vitl16plus", "lvd1689m") is None  # not published on the Hub
    assert parse_hf_hub("hf-hub:org/name@v1.0") == ("org/name", "v1.0")
    assert parse_hf_hub("hf-hub:org/name") == ("org/name", None)
    with pytest.raises(WeightsError, match="hf-hub:org/name"):
        parse_hf_hub("hf-hub:not a repo")


# --------------------------------------------------------------------------------------------- default search order


def test_default_search_order_weights_dir_then_cache(
    isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    save_state_dict_file(official_sd(first), isolated["dir"] / VITS_FILE)
    save_state_dict_file(official_sd(second), isolated["cache"] / VITS_FILE)
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))

    resolved = resolve_weights("dinov3_vits16")
    assert "DINOV3_WEIGHTS_DIR" in resolved.source and resolved.format == "official" and resolved.tag == "lvd1689m"
    assert resolved.sha256 == hashlib.sha256((isolated["dir"] / VITS_FILE).read_bytes()).hexdigest()
    target = tiny_model(seed=3)
    load_pretrained(target, resolved)
    assert_same_weights(target, first)

    monkeypatch.delenv("DINOV3_WEIGHTS_DIR")
    resolved = resolve_weights("dinov3_vits16", "lvd1689m")
    assert "weights cache" in resolved.source
    load_pretrained(target, resolved)
    assert_same_weights(target, second)


def test_weights_dir_with_official_arch_subfolder(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    (isolated["dir"] / "dinov3_vits16").mkdir()
    save_state_dict_file(official_sd(tiny_model()), isolated["dir"] / "dinov3_vits16" / VITS_FILE)
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))
    assert resolve_weights("dinov3_vits16").path == isolated["dir"] / "dinov3_vits16" / VITS_FILE


def test_default_search_falls_back_to_hf_cache(isolated: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_model()
    data = safetensors_bytes(formats.official_to_hf(official_sd(source)), tmp_path)
    repo = "facebook/dinov3-vits16-pretrain-lvd1689m"
    make_hf_cache(isolated["hf"], repo, {"model.safetensors": data, "config.json": b'{"hidden_size": 64}'})

    resolved = resolve_weights("dinov3_vits16")
    assert resolved.format == "hf" and resolved.source.startswith(f"hf-hub:{repo}@main")
    assert resolved.config == {"hidden_size": 64}
    assert resolved.sha256 == hashlib.sha256(data).hexdigest()  # read from the blob name
    target = tiny_model(seed=5)
    load_pretrained(target, resolved)
    assert_same_outputs(target, source)


def test_nothing_found_offline_lists_every_place(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("dinov3_vitb16")
    err, message = info.value, str(info.value)
    expected_places = [
        str(isolated["dir"] / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
        str(isolated["cache"] / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
        str(isolated["hf"] / "models--facebook--dinov3-vitb16-pretrain-lvd1689m"),
    ]
    for place in expected_places:
        assert any(place in s for s in err.searched), place
        assert place in message, place
    assert "offline" in message and "DINOV3_WEIGHTS_DIR" in message


def test_weights_dir_unset_is_reported() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"\$DINOV3_WEIGHTS_DIR \(not set\)"):
        resolve_weights("dinov3_vits16")


def test_tags_and_models_without_weights() -> None:
    with pytest.raises(WeightsNotFoundError, match="released tags: lvd1689m"):
        resolve_weights("dinov3_vits16", "sat493m")
    with pytest.raises(WeightsNotFoundError, match="no released weights"):
        resolve_weights("dinov3_vitg16")


# --------------------------------------------------------------------------------------------- explicit sources


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file(tmp_path: Path, suffix: str) -> None:
    source = tiny_model()
    path = save_state_dict_file(official_sd(source), tmp_path / f"mine{suffix}")
    resolved = resolve_weights("dinov3_vits16", path)
    assert resolved.source == f"file {path}" and resolved.tag is None
    assert resolved.normalization[0] == (0.485, 0.456, 0.406)
    target = tiny_model(seed=4)
    load_pretrained(target, resolved)
    assert_same_weights(target, source)


def test_local_hf_folder_and_official_folder(tmp_path: Path) -> None:
    source = tiny_model()
    hf_dir = tmp_path / "dinov3-vits16-pretrain-lvd1689m"
    hf_dir.mkdir()
    save_state_dict_file(formats.official_to_hf(official_sd(source)), hf_dir / "model.safetensors")
    (hf_dir / "config.json").write_text("{}")
    resolved = resolve_weights("dinov3_vits16", str(hf_dir))
    assert resolved.format == "hf" and resolved.tag == "lvd1689m" and resolved.config == {}

    official_dir = tmp_path / "downloads"
    official_dir.mkdir()
    save_state_dict_file(official_sd(source), official_dir / VITS_FILE)
    assert resolve_weights("dinov3_vits16", f"local-dir:{official_dir}").path == official_dir / VITS_FILE
    with pytest.raises(WeightsNotFoundError, match="neither a Hugging Face model folder"):
        resolve_weights("dinov3_vitb16", official_dir)


def test_official_file_of_another_size_is_refused(tmp_path: Path) -> None:
    path = save_state_dict_file(official_sd(tiny_model()), tmp_path / VITS_FILE)
    with pytest.raises(WeightsMismatchError, match="dinov3_vits16 weights, but the model is dinov3_vitb16"):
        resolve_weights("dinov3_vitb16", path)


def test_url_download_cache_and_offline(isolated: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_model()
    data = save_state_dict_file(official_sd(source), tmp_path / "src.pth").read_bytes()
    name = f"dinov3_vits16_pretrain_lvd1689m-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    signed = "?Policy=abc&Signature=secret&Key-Pair-Id=K"
    with LocalHTTPServer() as server:
        url = server.add(f"/dinov3/{name}", body=data) + signed
        resolved = resolve_weights("dinov3_vits16", url, offline=False, progress=False)
        assert resolved.path == isolated["cache"] / name and resolved.tag == "lvd1689m"
        assert "secret" not in resolved.source
        # Offline: the cached copy is used, nothing is requested.
        assert resolve_weights("dinov3_vits16", url, offline=True).path == resolved.path
        assert server.count(f"/dinov3/{name}") == 1
        other = server.base_url + "/dinov3/dinov3_vits16_pretrain_lvd1689m-00000000.pth"
        with pytest.raises(WeightsNotFoundError, match="Offline mode"):
            resolve_weights("dinov3_vits16", other, offline=True)
        assert server.count("/dinov3/dinov3_vits16_pretrain_lvd1689m-00000000.pth") == 0
    # file:// URLs are read in place.
    assert resolve_weights("dinov3_vits16", (tmp_path / "src.pth").as_uri()).path == tmp_path / "src.pth"


def test_hf_hub_spec_with_revision_and_shards(isolated: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_model()
    hf_sd = formats.official_to_hf(official_sd(source))
    keys = sorted(hf_sd)
    shards = {
        "model-00001-of-00002.safetensors": {k: hf_sd[k] for k in keys[::2]},
        "model-00002-of-00002.safetensors": {k: hf_sd[k] for k in keys[1::2]},
    }
    index = {"weight_map": {k: name for name, part in shards.items() for k in part}}
    files = {name: safetensors_bytes(part, tmp_path) for name, part in shards.items()}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    commit = make_hf_cache(isolated["hf"], "someone/dinov3-finetune", files)

    resolved = resolve_weights("dinov3_vits16", f"hf-hub:someone/dinov3-finetune@{commit}")
    assert resolved.format == "hf" and resolved.path is None and resolved.sha256 is None
    assert commit in resolved.source
    target = tiny_model(seed=7)
    load_pretrained(target, resolved)
    assert_same_outputs(target, source)


@pytest.mark.parametrize("name", ["timm/vit_small_patch16_dinov3.lvd1689m", "vit_small_patch16_dinov3.lvd1689m"])
def test_timm_names(isolated: dict[str, Path], tmp_path: Path, name: str) -> None:
    source = tiny_model()
    data = safetensors_bytes(formats.official_to_timm(official_sd(source), qkv_bias=True), tmp_path)
    make_hf_cache(isolated["hf"], "timm/vit_small_patch16_dinov3.lvd1689m", {"model.safetensors": data})
    resolved = resolve_weights("dinov3_vits16", name)
    assert resolved.format == "timm" and resolved.tag == "lvd1689m"
    target = tiny_model(seed=8)
    load_pretrained(target, resolved)
    assert_same_outputs(target, source)


def test_timm_name_of_another_size_is_refused() -> None:
    with pytest.raises(WeightsMismatchError, match="are for dinov3_vitl16"):
        resolve_weights("dinov3_vits16", "vit_large_patch16_dinov3.lvd1689m")


def test_unrecognised_weights_string() -> None:
    with pytest.raises(WeightsNotFoundError, match="hf-hub:org/missing"):
        resolve_weights("dinov3_vits16", "org/missing")


# --------------------------------------------------------------------------------------------- load_pretrained


def test_mismatch_is_explained_and_non_strict_loads_what_fits() -> None:
    deeper = tiny_model(depth=2)
    resolved = ResolvedWeights(official_sd(deeper), "test weights", "official")
    target = tiny_model(seed=9)
    with pytest.raises(WeightsMismatchError, match="unexpected") as info:
        load_pretrained(target, resolved)
    assert "blocks.1." in str(info.value) and "strict=False" in str(info.value)
    result = load_pretrained(target, resolved, strict=False)
    assert result.missing_keys == [] and any(k.startswith("blocks.1.") for k in result.unexpected_keys)
    assert torch.equal(target.blocks[0].attn.qkv.weight, deeper.blocks[0].attn.qkv.weight)


def test_mismatch_names_the_model_the_weights_fit() -> None:
    small = create_model("dinov3_vits16", device="meta").state_dict()
    with pytest.raises(WeightsMismatchError, match="look like dinov3_vits16"):
        load_pretrained(create_model("dinov3_vitb16", device="meta"), ResolvedWeights(small, "x", "official"))


def test_training_checkpoint_with_heads(tmp_path: Path) -> None:
    source = tiny_model()
    teacher = {f"backbone.{k}": v for k, v in official_sd(source).items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"teacher": teacher, "student": {}, "iteration": 7}, tmp_path / "ckpt.pth")
    target = tiny_model(seed=10)
    load_pretrained(target, resolve_weights("dinov3_vits16", tmp_path / "ckpt.pth"))
    assert_same_weights(target, source)


def test_vitl14_uses_vitl16_file_with_resampled_kernel(
    isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_model("dinov3_vitl16")
    save_state_dict_file(official_sd(source), isolated["dir"] / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth")
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))
    model = create_model("dinov3_vitl14", pretrained=True, **TINY)
    assert model.patch_embed.proj.weight.shape[-2:] == (14, 14)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_sat_weights_from_hf_get_local_cls_norm(isolated: dict[str, Path], tmp_path: Path) -> None:
    source = tiny_model("dinov3_vitl16", weights="sat493m")
    assert source.local_cls_norm is not None
    hf_sd = formats.official_to_hf(official_sd(source))  # Hugging Face drops local_cls_norm
    data = safetensors_bytes(hf_sd, tmp_path)
    make_hf_cache(isolated["hf"], "facebook/dinov3-vitl16-pretrain-sat493m", {"model.safetensors": data})
    target = create_model("dinov3_vitl16", pretrained=False, weights="sat493m", **TINY)
    resolved = resolve_weights("dinov3_vitl16", "sat493m")
    load_pretrained(target, resolved)
    assert resolved.normalization[0] == SAT_MEAN and target.weights_tag == "sat493m"
    assert_same_outputs(target, source)


def test_create_model_pretrained_end_to_end(isolated: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    source = tiny_model()
    save_state_dict_file(official_sd(source), isolated["dir"] / VITS_FILE)
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))
    model = create_model("dinov3_vits16", pretrained=True, **TINY)
    assert_same_weights(model, source)
    assert model.weights_tag == "lvd1689m" and "DINOV3_WEIGHTS_DIR" in model.weights_source
