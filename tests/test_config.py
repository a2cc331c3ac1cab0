"""The YAML configuration system: loading, variants, overrides, validation errors, saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dinov3_integration.config import (
    ConfigError,
    DINOv3Config,
    config_from_dict,
    default_config_path,
    list_variants,
    load_config,
    parse_override,
    save_config,
    validate_config,
)

TINY = ["model.backbone.overrides={depth: 2, embed_dim: 64, num_heads: 4}", "model.backbone.img_size=32"]


def write(tmp_path: Path, data: dict | str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- loading
def test_packaged_default_matches_schema_defaults():
    assert default_config_path().is_file()
    cfg = load_config()
    assert cfg == DINOv3Config()  # the YAML documents exactly the dataclass (and constructor) defaults
    assert cfg.source == str(default_config_path())
    assert cfg.model.backbone.dinov3_model == "dinov3_vitb16"
    assert cfg.model.aggregator.enabled is False


def test_packaged_variants():
    assert list_variants() == ["lightweight", "high_performance", "video"]
    light = load_config("lightweight")
    assert light.model.backbone.dinov3_model == "dinov3_vits16" and not light.model.aggregator.enabled
    hp = load_config("high_performance")
    assert hp.model.backbone.dinov3_model == "dinov3_vitl16" and hp.model.aggregator.enabled
    assert hp.model.aggregator.output_layers == [4, 11, 17, 23]
    video = load_config("video")
    assert video.model.aggregator.enabled and video.model.aggregator.frames_chunk_size == 8
    assert video.model.aggregator.output_layers == [-1]
    assert "variant 'video'" in video.source


@pytest.mark.parametrize(
    ("text", "parts", "value"),
    [
        ("model.aggregator.enabled=true", ["model", "aggregator", "enabled"], True),
        ("model.aggregator.output_layers=[4,11]", ["model", "aggregator", "output_layers"], [4, 11]),
        ("model.aggregator.mlp_ratio=0.5", ["model", "aggregator", "mlp_ratio"], 0.5),
        ("model.backbone.weights=null", ["model", "backbone", "weights"], None),
        ("model.backbone.dinov3_model=dinov3_vits16", ["model", "backbone", "dinov3_model"], "dinov3_vits16"),
        ("model.backbone.overrides={depth: 2}", ["model", "backbone", "overrides"], {"depth": 2}),
        ("a.b= ", ["a", "b"], ""),
    ],
)
def test_parse_override(text, parts, value):
    assert parse_override(text) == (parts, value)


def test_precedence_file_variant_override(tmp_path):
    path = write(
        tmp_path,
        {
            "model": {"backbone": {"dinov3_model": "dinov3_vits16", "img_size": 64}},
            "variants": {"big": {"model": {"backbone": {"dinov3_model": "dinov3_vitl16", "img_size": 128}}}},
        },
    )
    assert load_config(path).model.backbone.img_size == 64
    cfg = load_config(path, ["model.backbone.img_size=256"], variant="big")
    assert cfg.model.backbone.dinov3_model == "dinov3_vitl16"  # variant
    assert cfg.model.backbone.img_size == 256  # override beats variant
    assert cfg.model.aggregator.depth == 24  # schema default for keys the file omits
    assert load_config(path, {"model.backbone.img_size": 32}).model.backbone.img_size == 32  # mapping overrides


def test_overrides_named_in_brief():
    cfg = load_config(
        None,
        [
            "model.backbone.dinov3_model=dinov3_vits16",
            "model.aggregator.enabled=true",
            "model.aggregator.output_layers=[4, 11]",
            "model.aggregator.init_values=0.5",
        ],
    )
    agg = cfg.model.aggregator
    assert (cfg.model.backbone.dinov3_model, agg.enabled, agg.output_layers, agg.init_values) == (
        "dinov3_vits16",
        True,
        [4, 11],
        0.5,
    )
    assert "4 override(s)" in cfg.source


def test_int_accepted_where_number_expected():
    cfg = load_config(None, ["model.aggregator.rope_freq=10", "model.aggregator.mlp_ratio=2"])
    assert cfg.model.aggregator.rope_freq == 10.0 and isinstance(cfg.model.aggregator.rope_freq, float)


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == DINOv3Config()


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config("high_performance", TINY + ["model.aggregator.depth=4", "model.aggregator.output_layers=[1, 3]"])
    path = save_config(cfg, tmp_path / "sub" / "saved.yaml")
    assert load_config(path) == cfg
    assert "source" not in yaml.safe_load(path.read_text())


def test_config_error_is_value_error_with_fields():
    with pytest.raises(ValueError) as info:
        load_config(None, ["model.aggregator.depth=5", "model.aggregator.aa_block_size=2"])
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.key_path == "model.aggregator.aa_block_size" and err.value == 2
    assert err.source == "override 'model.aggregator.aa_block_size=2'"


# ---------------------------------------------------------------------------------------------------- errors
# (overrides, substrings every message must contain: source, key path, value, the fix)
OVERRIDE_ERRORS = [
    pytest.param(
        ["model.aggregator.depht=3"],
        ["override 'model.aggregator.depht=3'", "model.aggregator.depht = 3", "unknown key", "did you mean 'depth'"],
        id="unknown-key",
    ),
    pytest.param(
        ["model.backbone.dinov3_modle=dinov3_vits16"],
        ["model.backbone.dinov3_modle", "did you mean 'dinov3_model'"],
        id="unknown-backbone-key",
    ),
    pytest.param(
        ["model.backbone.img_size=big"],
        ["model.backbone.img_size = 'big'", "expected an integer, got str"],
        id="wrong-type-str",
    ),
    pytest.param(
        ["model.backbone.depth=true"],
        ["model.backbone.depth = True", "expected an integer or null, got bool"],
        id="wrong-type-bool",
    ),
    pytest.param(
        ["model.aggregator.output_layers=[a, b]"],
        ["model.aggregator.output_layers = ['a', 'b']", "expected a list of an integer or a string"],
        id="wrong-type-list",
    ),
    pytest.param(
        ["model.aggregator=3"],
        ["model.aggregator = 3", "expected a mapping of AggregatorConfig keys"],
        id="section-not-mapping",
    ),
    pytest.param(
        ["model.backbone.dinov3_model=dinov3_vitb17"],
        ["model.backbone.dinov3_model = 'dinov3_vitb17'", "unknown model", "Did you mean 'dinov3_vitb16'"],
        id="unknown-backbone",
    ),
    pytest.param(
        ["model.backbone.embed_dim=512"],
        [
            "model.backbone.embed_dim = 512",
            "contradicts dinov3_vitb16, whose embed_dim is 768",
            "set it to 768 or null",
        ],
        id="embed-dim-contradiction",
    ),
    pytest.param(
        ["model.backbone.depth=24"],
        ["model.backbone.depth = 24", "whose depth is 12"],
        id="depth-contradiction",
    ),
    pytest.param(
        ["model.backbone.num_heads=16"],
        ["model.backbone.num_heads = 16", "whose num_heads is 12"],
        id="num-heads-contradiction",
    ),
    pytest.param(
        ["model.backbone.patch_size=14"],
        ["model.backbone.patch_size = 14", "whose patch_size is 16"],
        id="patch-size-contradiction",
    ),
    pytest.param(
        ["model.backbone.n_storage_tokens=0"],
        ["model.backbone.n_storage_tokens = 0", "whose n_storage_tokens is 4"],
        id="storage-contradiction",
    ),
    pytest.param(
        ["model.backbone.overrides={depth: 2}", "model.backbone.depth=12"],
        ["model.backbone.depth = 12", "whose depth is 2 (after model.backbone.overrides)"],
        id="declared-vs-override",
    ),
    pytest.param(
        ["model.backbone.overrides={dept: 2}"],
        ["model.backbone.overrides.dept = 2", "not a DinoVisionTransformer argument", "did you mean 'depth'"],
        id="unknown-backbone-override",
    ),
    pytest.param(
        ["model.backbone.overrides={depth: two}"],
        ["model.backbone.overrides.depth = 'two'", "expected int like the registered value 12, got str"],
        id="backbone-override-type",
    ),
    pytest.param(
        ["model.backbone.overrides={img_size: 64}"],
        ["model.backbone.overrides.img_size = 64", "set model.backbone.img_size instead"],
        id="backbone-override-img-size",
    ),
    pytest.param(
        ["model.backbone.overrides={ffn_layer: swiglu65}"],
        ["model.backbone.overrides.ffn_layer = 'swiglu65'", "unknown ffn_layer", "did you mean 'swiglu64'"],
        id="backbone-override-choice",
    ),
    pytest.param(
        ["model.backbone.overrides={embed_dim: 64, num_heads: 5}"],
        ["model.backbone.overrides.num_heads = 5", "not divisible by 5 heads"],
        id="backbone-heads",
    ),
    pytest.param(
        ["model.backbone.pretrained=true", "model.backbone.overrides={depth: 2}"],
        ["model.backbone.overrides.depth = 2", "pretrained weights cannot load", "pretrained: false"],
        id="pretrained-with-arch-override",
    ),
    pytest.param(
        ["model.backbone.weights=sat493m"],
        ["model.backbone.weights = 'sat493m'", "dinov3_vitb16 has no 'sat493m' weights", "lvd1689m"],
        id="wrong-weight-tag",
    ),
    pytest.param(
        ["model.backbone.img_size=100"],
        ["model.backbone.img_size = 100", "multiple of the patch size 16; use 96"],
        id="img-size",
    ),
    pytest.param(
        ["model.backbone.intermediate_layers=[3, 12]"],
        ["model.backbone.intermediate_layers = [3, 12]", "layer index 12 is out of range", "12 layers; use 0..11"],
        id="intermediate-range",
    ),
    pytest.param(
        ["model.aggregator.embed_dim=0"],
        ["model.aggregator.embed_dim = 0", "must be a positive integer or null"],
        id="aggregator-width",
    ),
    pytest.param(
        ["model.aggregator.num_heads=5"],
        ["model.aggregator.num_heads = 5", "width 768 is not divisible by 5 heads", "such as 3, 4, 6"],
        id="aggregator-heads",
    ),
    pytest.param(
        ["model.aggregator.num_heads=128"],
        ["model.aggregator.num_heads = 128", "head dim 768//128 = 6 must be divisible by 4", "rope_freq: 0"],
        id="aggregator-head-dim",
    ),
    pytest.param(
        ["model.aggregator.depth=5", "model.aggregator.aa_block_size=2"],
        ["model.aggregator.aa_block_size = 2", "depth 5 is not a multiple of aa_block_size 2"],
        id="aa-block-size",
    ),
    pytest.param(
        ["model.aggregator.aa_order=[frame, globl]"],
        ["model.aggregator.aa_order = ['frame', 'globl']", "unknown attention type 'globl'", "did you mean 'global'"],
        id="aa-order-unknown",
    ),
    pytest.param(
        ["model.aggregator.aa_order=[frame]"],
        ["model.aggregator.aa_order = ['frame']", "'frame' and 'global' once each"],
        id="aa-order-missing",
    ),
    pytest.param(
        ["model.aggregator.output_layers=[4, 24]"],
        ["model.aggregator.output_layers = [4, 24]", "layer index 24 is out of range", "24 layers; use 0..23"],
        id="output-layers-range",
    ),
    pytest.param(
        ["model.aggregator.output_layers=[-25]"],
        ["layer index -25 is out of range"],
        id="output-layers-negative",
    ),
    pytest.param(
        ["model.aggregator.output_layers=last"],
        ["model.aggregator.output_layers = 'last'", 'use "all" or a list'],
        id="output-layers-string",
    ),
    pytest.param(
        ["model.aggregator.output_layers=[]"],
        ["model.aggregator.output_layers = []", "at least one layer"],
        id="output-layers-empty",
    ),
    pytest.param(
        ["model.aggregator.frames_chunk_size=0"],
        ["model.aggregator.frames_chunk_size = 0", "positive integer or null"],
        id="frames-chunk",
    ),
    pytest.param(
        ["model.aggregator.depth=0"],
        ["model.aggregator.depth = 0", "positive integer"],
        id="aggregator-depth",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), OVERRIDE_ERRORS)
def test_validation_errors(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert message.startswith("override '"), message  # names where the value came from
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_error_in_file_names_the_file(tmp_path):
    path = write(tmp_path, {"model": {"aggregator": {"enabeld": True}}})
    with pytest.raises(ConfigError, match=r"cfg\.yaml: model\.aggregator\.enabeld = True: .*did you mean 'enabled'"):
        load_config(path)


def test_error_in_variant_names_the_variant(tmp_path):
    path = write(tmp_path, {"variants": {"v": {"model": {"aggregator": {"num_heads": 7}}}}})
    with pytest.raises(ConfigError) as info:
        load_config(path, variant="v")
    assert str(info.value).startswith(f"{path} variant 'v': model.aggregator.num_heads = 7")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("model: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping with a 'model' key"),
        ("modle: {}\n", "unknown top-level key; did you mean 'model'?"),
        ("variants: 3\n", "expected a mapping of variant name"),
        ("variants: {v: {extra: 1}}\n", "a variant may only set 'model'"),
    ],
)
def test_file_errors(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path, variant="v" if content.startswith("variants: {") else None)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_yaml_error_reports_line(tmp_path):
    path = write(tmp_path, "model:\n  backbone: {img_size: [1, 2}\n")
    with pytest.raises(ConfigError, match=r"line 2"):
        load_config(path)


def test_missing_file_and_unknown_variant(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown variant; did you mean 'lightweight'"):
        load_config("lightwieght")
    with pytest.raises(ConfigError, match="available: lightweight, high_performance, video"):
        load_config(None, variant="nope")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.aggregator.enabled", "expected 'dotted.key=value'"),
        ("=3", "the key must be a dotted path"),
        ("model..depth=3", "the key must be a dotted path"),
        ("model.aggregator.output_layers=[1,", "the value is not valid YAML"),
        ("model.backbone.dinov3_model.x=1", "model.backbone.dinov3_model is 'dinov3_vitb16', not a mapping"),
    ],
)
def test_malformed_overrides(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, [override])


def test_programmatic_config_validation():
    cfg = config_from_dict({"model": {"aggregator": {"enabled": True, "depth": 2, "output_layers": [1]}}})
    arch = validate_config(cfg)
    assert (arch.embed_dim, arch.aggregator_embed_dim, arch.aggregator_num_heads) == (768, 768, 12)
    with pytest.raises(ConfigError, match=r"^<dict>: model\.nope"):
        config_from_dict({"model": {"nope": 1}})


# ---------------------------------------------------------------------------------------------------- hostile YAML
def test_alias_bomb_is_refused_quickly(tmp_path):
    """Issue 14 item 16: a 744-byte-class alias bomb (9 levels of 9 aliases: 9**9 values) is refused, not expanded."""
    import time

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    bomb = write(tmp_path, "\n".join(lines) + "\nmodel: {backbone: {overrides: *a9}}\n", "bomb.yaml")
    assert bomb.stat().st_size < 1000
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: <file> = 'line 1, column 1': .*expands to more than"):
        load_config(bomb)
    assert time.monotonic() - start < 5  # refused before construction (a generous bound; the check is linear)
    flow = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(ConfigError, match="override .*expands to more than"):  # overrides share the loader
        parse_override("model.backbone.overrides=[" + ", ".join(flow) + "]")
    with pytest.raises(ConfigError, match="refers to itself"):
        load_config(write(tmp_path, "model: &m {backbone: *m}\n", "loop.yaml"))


def test_small_anchors_still_work(tmp_path):
    text = "model:\n  backbone: &bb {dinov3_model: dinov3_vits16, img_size: 32}\n  aggregator: {enabled: false}\n"
    text += "variants:\n  again: {model: {backbone: *bb}}\n"
    cfg = load_config(write(tmp_path, text), variant="again")
    assert cfg.model.backbone.dinov3_model == "dinov3_vits16" and cfg.model.backbone.img_size == 32


def test_duplicate_keys_name_the_key_and_line(tmp_path):
    text = "model:\n  backbone:\n    img_size: 32\n    dinov3_model: dinov3_vits16\n    img_size: 64\n"
    with pytest.raises(
        ConfigError, match=r"'line 5, column 5': not valid YAML: duplicate key 'img_size' \(first at line 3\)"
    ):
        load_config(write(tmp_path, text))
    from dinov3_integration.config.safe_yaml import safe_load

    assert safe_load("b: &b {x: 1, y: 1}\nc: {<<: *b, x: 2}\n")["c"] == {"x": 2, "y": 1}  # `<<` then an override
    with pytest.raises(ConfigError, match="duplicate key 'depth'"):
        load_config(None, ["model.backbone.overrides={depth: 2, depth: 3}"])


def test_pretrained_false_with_a_weights_tag_is_never_silently_random(tmp_path, caplog):
    text = "model:\n  backbone:\n    dinov3_model: dinov3_vits16\n    pretrained: false\n    weights: lvd1689m\n"
    with pytest.raises(ConfigError, match=r"model\.backbone\.pretrained = False: with weights 'lvd1689m' this would "
                       r"build RANDOM weights.*set pretrained: true"):  # fmt: skip
        load_config(write(tmp_path, text))
    # A tag that selects an architecture (the satellite ViT-L) with pretrained: false builds it, and says so.
    from dinov3_integration.integrated import DINOv3IntegratedModel

    with caplog.at_level("WARNING", logger="dinov3"):
        model = DINOv3IntegratedModel("dinov3_vitl16", weights="sat493m", backbone_overrides={"depth": 1})
    assert model.backbone.untie_global_and_local_cls_norm
    assert "weights are RANDOM" in caplog.text
