"""The factory: ``create_model`` and the official hub functions, called the way ported code calls them.

Satellite files by path (issue 19.1), tags without ``pretrained`` (12.7 / 13.2), Meta's hub signature and
``hubconf.py`` (12.7), training mode and ignored keywords (19.6), hints that name real arguments (12.5 / 13.12),
loading on ``meta`` with ``assign=True`` (15.1), integer tensors and contradicting configs (14.6 / 14.7).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import randomize_
from dinov3_integration import factory
from dinov3_integration.factory import create_model, dinov3_vit7b16, dinov3_vitl16, dinov3_vits16
from dinov3_integration.hub import formats
from dinov3_integration.hub.checkpoint_io import save_state_dict_file
from dinov3_integration.hub.errors import CheckpointFormatError, WeightsMismatchError, WeightsNotFoundError
from dinov3_integration.hub.loading import load_pretrained
from dinov3_integration.models.specs import SAT_MEAN, get_model_spec

REPO = Path(__file__).resolve().parents[1]
TINY = {"depth": 1, "embed_dim": 64, "num_heads": 1}
VITS_FILE = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"

# Every released satellite file name, with the model it belongs to.
SATELLITE_FILES = [
    ("dinov3_vitl16", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"),
    ("dinov3_vitl16", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.safetensors"),
    ("dinov3_vit7b16", "dinov3_vit7b16_pretrain_sat493m-a6675841.pth"),
    ("dinov3_vit7b16", "dinov3_vit7b16_pretrain_sat493m-a6675841.safetensors"),
]


# Every test: empty weights cache and Hugging Face cache (offline), no $DINOV3_WEIGHTS_DIR (conftest.py).
pytestmark = pytest.mark.usefixtures("isolated")


def tiny(name: str = "dinov3_vits16", seed: int = 0, weights: str | None = None, **kwargs: object) -> torch.nn.Module:
    """A tiny random model with every tensor non-trivial (local_cls_norm differs from norm)."""
    torch.manual_seed(seed)
    model = randomize_(create_model(name, pretrained=False, weights=weights, **{**TINY, **kwargs}))
    with torch.no_grad():
        model.rope_embed.periods.copy_(formats.rope_periods(model.embed_dim // model.num_heads))
    return model


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        return model.eval().forward_features(x)["x_norm_patchtokens"]


# --------------------------------------------------------------------------------------------- satellite by path


@pytest.mark.parametrize(("name", "filename"), SATELLITE_FILES)
@pytest.mark.parametrize("call", ["create_model", "hub_function"])
def test_satellite_file_by_path_always_loads(tmp_path: Path, name: str, filename: str, call: str) -> None:
    source = tiny(name, weights="sat493m")
    assert source.local_cls_norm is not None
    path = save_state_dict_file(source.state_dict(), tmp_path / "sat493m" / filename)
    if call == "create_model":
        model = create_model(name, weights=str(path), **TINY)
    else:
        model = {"dinov3_vitl16": dinov3_vitl16, "dinov3_vit7b16": dinov3_vit7b16}[name](weights=str(path), **TINY)
        assert model.training  # the reference's hub functions return the module as built
    assert_same_state(model, source)
    assert torch.equal(outputs(model), outputs(source))
    assert model.weights_tag == "sat493m" and model.weights_source == f"file {path}"


def test_satellite_file_under_a_plain_name_is_recognised_by_its_tensors(tmp_path: Path) -> None:
    source = tiny("dinov3_vitl16", weights="sat493m")
    path = save_state_dict_file(source.state_dict(), tmp_path / "my_vitl.pth")
    model = create_model("dinov3_vitl16", weights=path, **TINY)
    assert model.local_cls_norm is not None
    assert_same_state(model, source)


def test_web_weights_in_a_folder_named_like_satellite_stay_web_weights(tmp_path: Path) -> None:
    source = tiny("dinov3_vitl16")
    path = save_state_dict_file(source.state_dict(), tmp_path / "sat493m_runs" / "dinov3_vitl16_lvd.pth")
    model = create_model("dinov3_vitl16", weights=path, **TINY)
    assert model.local_cls_norm is None and model.weights_tag is None
    assert_same_state(model, source)


def test_satellite_hint_names_what_works(tmp_path: Path) -> None:
    source = tiny("dinov3_vitl16", weights="sat493m")
    path = save_state_dict_file(source.state_dict(), tmp_path / "my_vitl.pth")
    plain = create_model("dinov3_vitl16", pretrained=False, **TINY)
    from dinov3_integration.hub.sources import resolve_weights

    with pytest.raises(WeightsMismatchError) as info:
        load_pretrained(plain, resolve_weights("dinov3_vitl16", path))
    text = str(info.value)
    assert "weights=<this file>" in text and "pretrained=False, weights='sat493m'" in text


# --------------------------------------------------------------------------------------------- tags and signatures


@pytest.mark.parametrize(
    "build",
    [
        lambda: dinov3_vits16(weights="lvd1689m", **TINY),
        lambda: create_model("dinov3_vits16", weights="lvd1689m", **TINY),
        lambda: dinov3_vits16(**TINY),  # pretrained=True by default, as in Meta's hubconf
    ],
)
def test_a_tag_loads_or_fails_never_random(isolated: dict[str, Path], monkeypatch, build) -> None:
    with pytest.raises(WeightsNotFoundError, match="No weights found for dinov3_vits16"):
        build()
    source = tiny()
    save_state_dict_file(source.state_dict(), isolated["dir"] / VITS_FILE)
    monkeypatch.setenv("DINOV3_WEIGHTS_DIR", str(isolated["dir"]))
    model = build()
    assert_same_state(model, source)
    assert model.weights_tag == "lvd1689m"


def test_official_signature_and_reference_enum() -> None:
    params = inspect.signature(dinov3_vitl16).parameters
    assert {"pretrained", "weights", "check_hash"} <= set(params)
    assert params["pretrained"].default is True and params["check_hash"].default is False
    assert "check_hash" in inspect.signature(create_model).parameters

    class Weights:  # the reference's enum members carry the tag as .value
        value = "SAT493M"

    sat = dinov3_vitl16(pretrained=False, weights=Weights(), device="meta")
    assert sat.local_cls_norm is not None and sat.weights_tag == "sat493m"


def test_hub_function_ignores_unknown_keywords_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dinov3"):
        model = dinov3_vits16(pretrained=False, not_an_argument=3, **TINY)
    assert model.training and model.n_blocks == 1
    assert "not_an_argument" in caplog.text
    with pytest.raises(TypeError, match="not_an_argument"):
        create_model("dinov3_vits16", not_an_argument=3)


def test_torch_hub_load_local_repo() -> None:
    model = torch.hub.load(str(REPO), "dinov3_vitl16", source="local", pretrained=False, depth=1, trust_repo=True)
    assert model.embed_dim == 1024 and model.n_blocks == 1 and model.training
    big = torch.hub.load(str(REPO), "dinov3_vit7b16", source="local", pretrained=False, device="meta")
    assert big.embed_dim == 4096 and big.local_cls_norm is not None


def test_hints_name_arguments_that_exist() -> None:
    small = create_model("dinov3_vits16", device="meta").state_dict()
    from dinov3_integration.hub.resolved import ResolvedWeights

    with pytest.raises(WeightsMismatchError) as info:
        load_pretrained(create_model("dinov3_vitb16", device="meta"), ResolvedWeights(small, "x", "official"))
    text = str(info.value)
    assert "load_pretrained(model, resolve_weights(name, weights), strict=False)" in text
    assert "strict" in inspect.signature(load_pretrained).parameters


def test_old_import_paths_still_work() -> None:
    import dinov3_integration
    from dinov3_integration import models
    from dinov3_integration.models import registry

    assert models.create_model is factory.create_model is dinov3_integration.create_model
    assert registry.create_model is factory.create_model and models.dinov3_vitl16 is factory.dinov3_vitl16
    assert registry.get_model_spec("dinov3_vits16") is get_model_spec("dinov3_vits16")


# --------------------------------------------------------------------------------------------- fast load


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vits16plus", "dinov3_vit7b16"])
def test_meta_load_equals_slow_path(tmp_path: Path, name: str, dtype: torch.dtype) -> None:
    source = tiny(name)
    stored = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = save_state_dict_file(stored, tmp_path / "w.safetensors")
    slow = create_model(name, pretrained=False, **TINY)
    slow.load_state_dict(stored)  # copies into the float32 model
    fast = create_model(name, weights=path, **TINY)
    assert_same_state(fast, slow)
    assert all(p.requires_grad and p.device.type == "cpu" for p in fast.parameters())
    assert not any(t.is_meta for t in [*fast.parameters(), *fast.buffers()])
    assert torch.equal(outputs(fast), outputs(slow))
    for model in (fast, slow):  # a no-grad forward after writes through .data still follows the weights
        model.blocks[0].attn.qkv.weight.data.mul_(2.0)
    assert torch.equal(outputs(fast), outputs(slow))


def test_meta_load_never_initialises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_state_dict_file(tiny("dinov3_vit7b16").state_dict(), tmp_path / "w.safetensors")
    from dinov3_integration.models import vision_transformer

    def forbidden(self: object) -> None:
        raise AssertionError("init_weights ran on a model that gets its weights from a file")

    monkeypatch.setattr(vision_transformer.DinoVisionTransformer, "init_weights", forbidden)
    model = create_model("dinov3_vit7b16", weights=path, **TINY)
    assert model.local_cls_norm is not None


# --------------------------------------------------------------------------------------------- wrong kinds, configs


def test_integer_tensor_where_the_model_is_floating_is_a_mismatch(tmp_path: Path) -> None:
    sd = tiny().state_dict()
    sd["blocks.0.norm1.weight"] = (sd["blocks.0.norm1.weight"] * 1000).to(torch.int32)
    sd["cls_token"] = sd["cls_token"] > 0
    path = save_state_dict_file(sd, tmp_path / "ints.safetensors")
    with pytest.raises(WeightsMismatchError, match=r"2 of another kind .*blocks.0.norm1.weight: int32") as info:
        create_model("dinov3_vits16", weights=path, **TINY)
    assert "cls_token: bool where the model has float32" in str(info.value)


def _hf_folder(tmp_path: Path, model: torch.nn.Module, **config: object) -> Path:
    folder = tmp_path / "hf_model"
    folder.mkdir()
    save_state_dict_file(formats.official_to_hf(model.state_dict()), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"num_attention_heads": 2}, "num_attention_heads=2 but the model has 1 heads"),
        ({"rope_theta": 10000.0}, "rope_theta=10000.0 but the model's RoPE base is 100.0"),
        ({"num_attention_heads": 3}, "does not split width 64"),
        ({"hidden_size": 128}, "hidden_size=128 but the tensors are 64 wide"),
        ({"num_hidden_layers": 12}, "num_hidden_layers=12 but the tensors hold 1 blocks"),
    ],
)
def test_hf_config_contradicting_the_model_or_tensors_is_refused(tmp_path: Path, config: dict, match: str) -> None:
    folder = _hf_folder(tmp_path, tiny(), **{"hidden_size": 64, "num_hidden_layers": 1, **config})
    with pytest.raises((WeightsMismatchError, CheckpointFormatError), match=match):
        create_model("dinov3_vits16", weights=folder, **TINY)


def test_hf_config_rope_theta_is_honoured_by_convert(tmp_path: Path) -> None:
    from dinov3_integration.hub.convert import read_official

    source = tiny(pos_embed_rope_base=1000.0)
    folder = _hf_folder(
        tmp_path, source, hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=256,
        rope_theta=1000.0,
    )  # fmt: skip
    official, kwargs, _ = read_official(folder)
    assert kwargs["pos_embed_rope_base"] == 1000.0
    torch.testing.assert_close(official["rope_embed.periods"], formats.rope_periods(64, 1000.0), rtol=0, atol=0)


def test_satellite_model_reports_sat_normalisation(tmp_path: Path) -> None:
    source = tiny("dinov3_vitl16", weights="sat493m")
    path = save_state_dict_file(source.state_dict(), tmp_path / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth")
    from dinov3_integration.models.specs import normalization_for

    assert normalization_for(create_model("dinov3_vitl16", weights=path, **TINY).weights_tag)[0] == SAT_MEAN


# --------------------------------------------------------------------------------------------- round trips


def test_official_hf_official_keeps_local_cls_norm(tmp_path: Path) -> None:
    from dinov3_integration.hub import convert_checkpoint

    source = tiny("dinov3_vit7b16")
    assert not torch.equal(source.local_cls_norm.weight, source.norm.weight)
    src = save_state_dict_file(source.state_dict(), tmp_path / "7b.safetensors")
    folder = convert_checkpoint(src, tmp_path / "hf_7b", to="hf")
    back = torch.load(convert_checkpoint(folder, tmp_path / "back.pth", to="official"), weights_only=True)
    assert set(back) == set(source.state_dict())
    for key, value in source.state_dict().items():
        if key != "rope_embed.periods":  # Hugging Face stores none: recomputed (the reference values)
            assert torch.equal(back[key], value), key
    loaded = create_model("dinov3_vit7b16", weights=folder, **TINY)  # through the hub: the extras come along
    assert torch.equal(loaded.local_cls_norm.weight, source.local_cls_norm.weight)


def test_official_to_timm_warns_about_what_it_cannot_hold(tmp_path: Path) -> None:
    from dinov3_integration.hub import convert_checkpoint

    source = tiny()
    assert source.mask_token.any()
    src = save_state_dict_file(source.state_dict(), tmp_path / "s.safetensors")
    with pytest.warns(UserWarning, match="timm layout cannot hold mask_token"):
        convert_checkpoint(src, tmp_path / "timm.safetensors", to="timm")
    with torch.no_grad():
        source.mask_token.zero_()
    quiet = save_state_dict_file(source.state_dict(), tmp_path / "z.safetensors")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_checkpoint(quiet, tmp_path / "timm2.safetensors", to="timm")  # nothing lost: no warning


def test_convert_unwraps_a_training_checkpoint_without_model(tmp_path: Path) -> None:
    from dinov3_integration.hub import convert_checkpoint

    source = tiny()
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
    teacher["ibot_head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"teacher": teacher, "student": {}, "iteration": 7}, tmp_path / "ckpt.pth")
    out = torch.load(convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "o.pth", to="official"), weights_only=True)
    assert set(out) == set(source.state_dict())
    assert all(torch.equal(out[k], v) for k, v in source.state_dict().items())


def test_satellite_layout_is_decided_by_tensors_then_by_name() -> None:
    from dinov3_integration.hub.loading import needs_satellite_layout
    from dinov3_integration.hub.resolved import ResolvedWeights

    vitl, vit7b = get_model_spec("dinov3_vitl16"), get_model_spec("dinov3_vit7b16")
    sat_sd = tiny("dinov3_vitl16", weights="sat493m").state_dict()
    web_sd = tiny("dinov3_vitl16").state_dict()
    hf_sd = formats.official_to_hf(web_sd)
    assert needs_satellite_layout(vitl, ResolvedWeights(sat_sd, "file /w/plain.pth", "official"))
    assert not needs_satellite_layout(vitl, ResolvedWeights(web_sd, "file /sat493m/x.pth", "official", "sat493m"))
    assert needs_satellite_layout(vitl, ResolvedWeights(hf_sd, "file /w/vitl-eadcf0ff.safetensors", "hf"))
    assert needs_satellite_layout(vitl, ResolvedWeights(hf_sd, "hf-hub:facebook/x", "hf", "sat493m"))
    assert not needs_satellite_layout(vitl, ResolvedWeights(hf_sd, "hf-hub:facebook/x", "hf", "lvd1689m"))
    assert not needs_satellite_layout(vit7b, ResolvedWeights(sat_sd, "x", "official"))  # the 7B is always untied
