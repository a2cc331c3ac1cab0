"""Loading without random initialisation (issue 15.1): ``Aggregator.from_vggt``, the integrated model's
``from_pretrained`` and the 7B ``create_model`` build on ``meta`` and load with ``assign=True``.

Each fast path is compared bit for bit (``torch.equal``) with the slow one it replaces (build on the CPU with random
initialisation, then copy the weights in): state dicts, every buffer (non-persistent ones too), ``requires_grad``,
outputs on a tiny input, and the errors for checkpoints that do not fit. A dispatch mode records every random fill
on a real tensor, so "never materialises random weights" is checked, not assumed. Tiny models only; no timing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import randomize_
from dinov3_integration.extraction.model import LoadedModel
from dinov3_integration.factory import create_model
from dinov3_integration.hub.errors import WeightsMismatchError
from dinov3_integration.integrated import DINOv3IntegratedModel
from dinov3_integration.models import SAT_MEAN
from dinov3_integration.vggt_compat import Aggregator, StateDictMismatchError

RANDOM_OPS = frozenset(
    "uniform_ normal_ bernoulli_ random_ exponential_ cauchy_ log_normal_ geometric_ rand randn randint randperm "
    "normal bernoulli rand_like randn_like randint_like multinomial".split()
)


class RandomFills(TorchDispatchMode):
    """Records the random ops (``nn.init``'s fills, ``torch.rand*``) that touch a real (non-``meta``) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.random: list[str] = []
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in RANDOM_OPS:
            real = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor) and not t.is_meta]
            if real:
                self.random.append(name)
                self.shapes.add(tuple(real[0].shape))
        return out


def assert_same_module(fast: torch.nn.Module, slow: torch.nn.Module) -> None:
    """Same state dict, same buffers (non-persistent too), same ``requires_grad``, nothing left on ``meta``."""
    sa, sb = fast.state_dict(), slow.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ba, bb = dict(fast.named_buffers()), dict(slow.named_buffers())
    assert ba.keys() == bb.keys()
    for key in ba:
        assert ba[key].dtype == bb[key].dtype and torch.equal(ba[key], bb[key]), key
    pa, pb = dict(fast.named_parameters()), dict(slow.named_parameters())
    assert {k: p.requires_grad for k, p in pa.items()} == {k: p.requires_grad for k, p in pb.items()}
    assert not [n for n, t in [*pa.items(), *ba.items()] if t.is_meta]
    assert fast.training == slow.training


def clips(S: int = 2, H: int = 32, W: int = 48) -> torch.Tensor:
    return torch.rand(1, S, 3, H, W, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ Aggregator

AGG_CONFIGS = {
    "conv": dict(img_size=28, patch_size=14, embed_dim=32, depth=2, num_heads=4, patch_embed="conv"),
    "dinov2": dict(
        img_size=28,
        patch_size=14,
        embed_dim=32,
        depth=2,
        num_heads=4,
        patch_embed="dinov2_vitl14_reg",
        patch_embed_config=dict(embed_dim=32, depth=1, num_heads=2),
    ),  # fmt: skip
    "dinov3": dict(  # backbone width 64 -> patch_proj to 32
        img_size=32,
        embed_dim=32,
        depth=2,
        num_heads=4,
        aa_block_size=2,
        patch_embed="dinov3_vits16",
        patch_embed_config=dict(depth=1, embed_dim=64, num_heads=1),
    ),  # fmt: skip
}


def vggt_file(tmp_path: Path, kwargs: dict, suffix: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """A full-VGGT-style checkpoint (``aggregator.*`` plus a head) of a randomised Aggregator."""
    torch.manual_seed(0)
    source = randomize_(Aggregator(**kwargs), std=0.05)
    state = {f"aggregator.{k}": v.clone() for k, v in source.state_dict().items()}
    state["camera_head.trunk.0.norm1.weight"] = torch.ones(8)
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


def slow_from_vggt(path: Path, **kwargs) -> Aggregator:
    """What ``from_vggt`` did before: build on the CPU (random init), then copy the weights in."""
    state = torch.load(path, weights_only=True) if path.suffix != ".safetensors" else None
    if state is None:
        from safetensors.torch import load_file

        state = load_file(str(path))
    model = Aggregator(**kwargs)
    model.load_vggt_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("kind", list(AGG_CONFIGS))
def test_from_vggt_equals_the_slow_build(tmp_path: Path, kind: str, suffix: str) -> None:
    kwargs = AGG_CONFIGS[kind]
    path, _ = vggt_file(tmp_path, kwargs, suffix)
    slow = slow_from_vggt(path, **kwargs)
    with RandomFills() as fills:
        fast = Aggregator.from_vggt(path, **kwargs)
    assert fills.random == []  # every tensor comes from the file: no random init ran on a real tensor
    assert_same_module(fast, slow)
    x = clips(H=kwargs["img_size"], W=kwargs["img_size"] * 3 // 2 // fast.patch_size * fast.patch_size)
    with torch.no_grad():
        a, b = fast(x)[0], slow(x)[0]
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


def test_from_vggt_device_and_dtype(tmp_path: Path) -> None:
    kwargs = AGG_CONFIGS["dinov2"]
    path, _ = vggt_file(tmp_path, kwargs, ".pt")
    slow = slow_from_vggt(path, **kwargs).to(dtype=torch.bfloat16)
    fast = Aggregator.from_vggt(path, device="cpu", dtype=torch.bfloat16, **kwargs)
    assert_same_module(fast, slow)
    assert fast._resnet_mean.dtype == torch.bfloat16


def test_from_vggt_new_patch_proj_is_initialised_as_the_slow_build(tmp_path: Path) -> None:
    """Blocks from VGGT, backbone from DINOv3 weights, a ``patch_proj`` in neither: initialised for real, with the
    same random draws as the slow build (nothing else draws before it)."""
    vggt_kwargs = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=4, patch_embed="conv")
    path, _ = vggt_file(tmp_path, vggt_kwargs, ".pt")
    backbone = tmp_path / "dinov3_vits16_tiny.pth"
    torch.manual_seed(3)
    torch.save(randomize_(create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=1)).state_dict(), backbone)
    kwargs = dict(AGG_CONFIGS["dinov3"], patch_embed_weights=str(backbone))
    torch.manual_seed(7)
    slow = Aggregator(**kwargs)
    slow.load_vggt_state_dict(torch.load(path, weights_only=True), skip_patch_embed=True)
    torch.manual_seed(7)
    with RandomFills() as fills:
        fast = Aggregator.from_vggt(path, **kwargs)
    assert fills.shapes == {(32, 64), (32,)}  # only the new patch_proj: Linear's init, then truncated normal
    assert_same_module(fast, slow.eval())
    assert fast.patch_proj is not None and fast.patch_proj.weight.std() > 0.01


def test_from_vggt_strict_errors_are_unchanged(tmp_path: Path) -> None:
    kwargs = AGG_CONFIGS["conv"]
    _, state = vggt_file(tmp_path, kwargs, ".pt")
    del state["aggregator.global_blocks.1.ls2.gamma"]
    state["aggregator.frame_blocks.9.mlp.fc1.weight"] = torch.zeros(1)
    state["aggregator.camera_token"] = torch.zeros(1, 2, 1, 16)
    with pytest.raises(StateDictMismatchError) as old:
        Aggregator(**kwargs).load_vggt_state_dict(state)
    with pytest.raises(StateDictMismatchError) as new:
        Aggregator.from_vggt(state, **kwargs)
    assert str(new.value) == str(old.value) and "global_blocks.1.ls2.gamma" in str(new.value)
    assert (new.value.missing_keys, new.value.unexpected_keys, new.value.mismatched) == (
        old.value.missing_keys,
        old.value.unexpected_keys,
        old.value.mismatched,
    )


def test_from_vggt_not_strict_with_missing_tensors_builds_on_the_cpu(tmp_path: Path) -> None:
    """``strict=False``: the tensors the checkpoint lacks keep their initialisation, exactly as before."""
    kwargs = AGG_CONFIGS["dinov2"]
    _, state = vggt_file(tmp_path, kwargs, ".pt")
    del state["aggregator.frame_blocks.0.attn.qkv.weight"]
    torch.manual_seed(5)
    slow = Aggregator(**kwargs)
    slow.load_vggt_state_dict(state, strict=False)
    torch.manual_seed(5)
    fast = Aggregator.from_vggt(state, strict=False, **kwargs)
    assert_same_module(fast, slow.eval())


def test_from_vggt_not_strict_with_only_unexpected_keys_stays_fast(tmp_path: Path) -> None:
    kwargs = AGG_CONFIGS["conv"]
    path, state = vggt_file(tmp_path, kwargs, ".pt")
    state["aggregator.frame_blocks.9.mlp.fc1.weight"] = torch.zeros(1)  # unexpected: ignored with strict=False
    with RandomFills() as fills:
        fast = Aggregator.from_vggt(state, strict=False, **kwargs)
    assert fills.random == []
    assert_same_module(fast, slow_from_vggt(path, **kwargs))


def test_meta_aggregator_refuses_to_keep_missing_tensors(tmp_path: Path) -> None:
    kwargs = AGG_CONFIGS["dinov3"]
    _, state = vggt_file(tmp_path, kwargs, ".pt")
    with torch.device("meta"):
        agg = Aggregator(**kwargs)
    assert all(p.is_meta for p in agg.parameters()) and not agg._resnet_mean.is_meta
    with pytest.raises(WeightsMismatchError, match=r"meta device and the checkpoint lacks 23 of its tensors"):
        agg.load_vggt_state_dict(state, skip_patch_embed=True)  # the backbone would stay on meta


# ------------------------------------------------------------------------------------------------ integrated


def tiny_integrated(name: str = "dinov3_vits16", **kwargs) -> DINOv3IntegratedModel:
    torch.manual_seed(0)
    model = DINOv3IntegratedModel(
        name,
        backbone_overrides={"depth": 2, "embed_dim": 64, "num_heads": 4},
        img_size=32,
        **kwargs,
    )
    return randomize_(model, std=0.05).eval()


def slow_from_pretrained(folder: Path) -> DINOv3IntegratedModel:
    """What ``from_pretrained`` did before: build from the configuration (random init), then copy the tensors in."""
    import json

    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())["config"]
    config["model"]["backbone"]["pretrained"] = False
    if config["model"]["backbone"]["weights"] not in ("lvd1689m", "sat493m"):
        config["model"]["backbone"]["weights"] = None
    model = DINOv3IntegratedModel.from_config(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(use_aggregator=True, aggregator_depth=2, freeze_backbone=True),
        dict(use_aggregator=True, aggregator_depth=1, aggregator_embed_dim=32, aggregator_num_heads=2),
        dict(name="dinov3_vitl16", use_aggregator=False, weights="sat493m", pretrained=False),  # satellite mean/std
    ],
    ids=["aggregator-frozen", "aggregator-projected", "backbone-sat"],
)
def test_integrated_from_pretrained_equals_the_slow_build(tmp_path: Path, kwargs: dict) -> None:
    folder = tiny_integrated(**kwargs).save_pretrained(tmp_path / "saved")
    slow = slow_from_pretrained(folder)
    with RandomFills() as fills:
        fast = DINOv3IntegratedModel.from_pretrained(folder)
    assert fills.random == []
    assert_same_module(fast, slow)
    assert fast.to_config().to_dict() == slow.to_config().to_dict()
    if kwargs.get("weights") == "sat493m":
        assert torch.allclose(fast.mean.flatten(), torch.tensor(SAT_MEAN))
    x = clips()
    with torch.no_grad():
        a, b = fast(x), slow(x)
        single_a, single_b = fast(x[:, 0]), slow(x[:, 0])
    for key in ("cls_token", "patch_tokens", "storage_tokens"):
        assert torch.equal(a[key], b[key]) and torch.equal(single_a[key], single_b[key]), key
    if fast.aggregator is not None:
        assert torch.equal(a["features"], b["features"])
        assert all(torch.equal(p, q) for p, q in zip(a["output_list"], b["output_list"]) if p is not None)


def test_integrated_from_pretrained_strict_errors_are_unchanged(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tiny_integrated(use_aggregator=True, aggregator_depth=1).save_pretrained(tmp_path / "saved")
    state = load_file(str(folder / "model.safetensors"))
    del state["aggregator.camera_token"]
    state["aggregator.extra.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(RuntimeError) as old:
        slow_from_pretrained(folder)
    with pytest.raises(RuntimeError) as new:
        DINOv3IntegratedModel.from_pretrained(folder)
    assert str(new.value) == str(old.value)
    assert "aggregator.camera_token" in str(new.value) and "aggregator.extra.weight" in str(new.value)


# ------------------------------------------------------------------------------------------------ 7B


def test_vit7b_loads_without_random_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 7B architecture (local_cls_norm, SwiGLU, masked k bias) on a small width: built on meta,
    no random fill on a real tensor, nothing left on meta, equal to the file."""
    from dinov3_integration.models import vision_transformer

    small = dict(depth=1, embed_dim=256, num_heads=2)
    torch.manual_seed(0)
    source = randomize_(create_model("dinov3_vit7b16", pretrained=False, **small))
    path = tmp_path / "dinov3_vit7b16_tiny.pth"
    torch.save(source.state_dict(), path)
    built_on: list[object] = []
    init = vision_transformer.DinoVisionTransformer.__init__

    def recording_init(self, *args, **kwargs) -> None:  # noqa: ANN001
        built_on.append(kwargs.get("device"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(vision_transformer.DinoVisionTransformer, "__init__", recording_init)
    with RandomFills() as fills:
        model = create_model("dinov3_vit7b16", weights=path, **small)
    assert built_on == ["meta"] and fills.random == []
    assert model.local_cls_norm is not None
    loaded = model.state_dict()
    assert loaded.keys() == source.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def test_build_aggregator_on_meta_keeps_its_normalisation() -> None:
    """``build_aggregator(..., device="meta")`` (the integrated model's meta build): the normalisation is in no state
    dict, so it is built real, with its values (it was a meta tensor before, its values lost)."""
    from dinov3_integration.integrated import build_aggregator
    from dinov3_integration.utils.normalization import NORMALIZATIONS

    backbone = create_model("dinov3_vits16", device="meta", depth=1, embed_dim=64, num_heads=1)
    agg = build_aggregator(backbone, normalization="sat", device="meta", depth=2, num_heads=4)
    assert all(p.is_meta for p in agg.parameters())
    mean, std = NORMALIZATIONS["sat"]
    assert agg.normalization == (tuple(torch.tensor(mean).tolist()), tuple(torch.tensor(std).tolist()))


# ------------------------------------------------------------------------------------------------ extract --aggregate


def extract_args(weights: Path | None, kwargs: str, seed: int = 11) -> argparse.Namespace:
    """The options ``runners.build_aggregator`` reads (``dinov3 extract --aggregate ...``)."""
    return argparse.Namespace(
        aggregator_kwargs=[kwargs],
        aggregator_weights=None if weights is None else str(weights),
        seed=seed,
        normalization="auto",
    )


def tiny_loaded() -> LoadedModel:
    torch.manual_seed(2)
    backbone = randomize_(create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=1), std=0.05).eval()
    return LoadedModel(model=backbone, name="dinov3_vits16", weights="test", weights_tag=None, model_kwargs={})


def slow_extract_aggregator(args: argparse.Namespace, loaded: LoadedModel) -> Aggregator:
    """What ``extract --aggregate --aggregator-weights`` did before: assemble with ``--seed`` on the CPU (random
    init), then copy the checkpoint's blocks in."""
    from dinov3_integration.extraction.options import parse_model_kwargs
    from dinov3_integration.hub.checkpoint_io import load_state_dict_file
    from dinov3_integration.integrated import build_aggregator

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        agg = build_aggregator(loaded.model, normalization="auto", **parse_model_kwargs(args.aggregator_kwargs))
    agg.load_vggt_state_dict(load_state_dict_file(args.aggregator_weights), strict=True, skip_patch_embed=True)
    return agg.eval()


def aggregate_checkpoint(tmp_path: Path, loaded: LoadedModel, **kwargs) -> Path:
    """A full-VGGT-style checkpoint of a randomised Aggregator behind the same backbone (other weights)."""
    from dinov3_integration.integrated import build_aggregator

    torch.manual_seed(4)
    source = build_aggregator(create_model("dinov3_vits16", depth=1, embed_dim=64, num_heads=1), **kwargs)
    state = {f"aggregator.{k}": v.clone() for k, v in randomize_(source, std=0.05).state_dict().items()}
    state["camera_head.trunk.0.norm1.weight"] = torch.ones(8)
    torch.save(state, tmp_path / "vggt.pt")
    return tmp_path / "vggt.pt"


@pytest.mark.parametrize(
    ("source_kwargs", "kwargs"),
    [
        (dict(depth=2, num_heads=4), "depth=2,num_heads=4"),
        (dict(depth=2, embed_dim=32, num_heads=4), "depth=2,embed_dim=32,num_heads=4"),  # with its patch_proj
    ],
    ids=["same-width", "patch_proj-in-checkpoint"],
)
def test_extract_aggregator_weights_load_without_random_init(tmp_path: Path, source_kwargs: dict, kwargs: str) -> None:
    """``extract --aggregate --aggregator-weights``: built on ``meta``, no random fill on a real tensor, the same
    module and the same outputs, bit for bit, as the random build it replaces."""
    from dinov3_integration.extraction.runners import build_aggregator

    loaded = tiny_loaded()
    args = extract_args(aggregate_checkpoint(tmp_path, loaded, **source_kwargs), kwargs)
    slow = slow_extract_aggregator(args, loaded)
    with RandomFills() as fills:
        fast, recorded = build_aggregator(args, loaded, torch.device("cpu"))
    assert fills.random == []  # every Aggregator tensor comes from the file (the backbone was built before)
    assert_same_module(fast, slow)
    assert recorded["normalization"] == [list(v) for v in slow.normalization]
    x = clips()
    with torch.no_grad():
        a, b = fast(x)[0], slow(x)[0]
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


def test_extract_aggregator_new_patch_proj_is_seeded_as_before(tmp_path: Path) -> None:
    """A narrower Aggregator than the backbone, from a checkpoint without ``patch_proj``: the new Linear is the only
    random fill, with the draws ``--seed`` gave it in the random build."""
    from dinov3_integration.extraction.runners import build_aggregator

    loaded = tiny_loaded()
    path = aggregate_checkpoint(tmp_path, loaded, depth=2, embed_dim=32, num_heads=4)
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if ".patch_proj." not in k}
    torch.save(state, path)
    args = extract_args(path, "depth=2,embed_dim=32,num_heads=4", seed=5)
    slow = slow_extract_aggregator(args, loaded)
    with RandomFills() as fills:
        fast, _ = build_aggregator(args, loaded, torch.device("cpu"))
    assert fills.shapes == {(32, 64), (32,)}  # only the new patch_proj: Linear's init, then truncated normal
    assert_same_module(fast, slow)
    other, _ = build_aggregator(extract_args(path, "depth=2,embed_dim=32,num_heads=4", seed=6), loaded, "cpu")
    assert not torch.equal(other.patch_proj.weight, fast.patch_proj.weight)  # the seed decides it


def test_extract_aggregator_weights_errors_are_unchanged(tmp_path: Path) -> None:
    from dinov3_integration.extraction.errors import ExtractionError
    from dinov3_integration.extraction.runners import build_aggregator

    loaded = tiny_loaded()
    path = aggregate_checkpoint(tmp_path, loaded, depth=2, num_heads=4)
    state = torch.load(path, weights_only=True)
    del state["aggregator.global_blocks.1.ls2.gamma"]
    state["aggregator.frame_blocks.9.mlp.fc1.weight"] = torch.zeros(1)
    torch.save(state, path)
    args = extract_args(path, "depth=2,num_heads=4")
    with pytest.raises(StateDictMismatchError) as old:
        slow_extract_aggregator(args, loaded)
    with pytest.raises(ExtractionError) as new:
        build_aggregator(args, loaded, torch.device("cpu"))
    assert str(new.value) == f"--aggregator-weights {path}: {old.value}"
    assert "global_blocks.1.ls2.gamma" in str(new.value)


@pytest.mark.parametrize("kwargs", ["depth=2,num_heads=4", "depth=2,embed_dim=32,num_heads=4"])
def test_export_aggregator_weights_load_without_random_init(tmp_path: Path, kwargs: str) -> None:
    """``dinov3 export --aggregate --aggregator-weights``: the backbone from its file and the Aggregator on ``meta``
    from the checkpoint, no random fill on a real tensor, the module the old random build + copy gave."""
    from dinov3_integration.cli.export_cmd import _model
    from dinov3_integration.extraction.options import parse_model_kwargs

    loaded = tiny_loaded()
    backbone = tmp_path / "backbone.pth"
    torch.save(loaded.model.state_dict(), backbone)
    source = parse_model_kwargs([kwargs])
    path = aggregate_checkpoint(tmp_path, loaded, **source)
    args = argparse.Namespace(
        model="dinov3_vits16",
        weights=str(backbone),
        model_kwargs=["depth=1,embed_dim=64,num_heads=1"],
        aggregate=True,
        aggregator_kwargs=[kwargs],
        aggregator_weights=str(path),
        random_aggregator=False,
        seed=3,
    )
    slow = slow_extract_aggregator(args, loaded)
    with RandomFills() as fills:
        fast = _model(args)
    assert fills.random == []  # the backbone and every Aggregator tensor come from the files
    assert_same_module(fast, slow)
    x = clips()
    with torch.no_grad():
        a, b = fast(x)[0], slow(x)[0]
    assert len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


# ------------------------------------------------------------------------------------------------ shared parts


def test_one_from_pretrained_and_one_leftover_check() -> None:
    """The ViT, the Aggregator and the integrated model share ``HubMixin.from_pretrained``; its leftover check (and
    ``assign_state_dict``'s) is ``utils.meta.raise_if_on_meta``, which names what a load left on ``meta``."""
    from dinov3_integration.models import DinoVisionTransformer
    from dinov3_integration.models.hf_api import HubMixin
    from dinov3_integration.utils.meta import meta_tensor_names, raise_if_on_meta

    shared = HubMixin.from_pretrained.__func__
    for cls in (DinoVisionTransformer, Aggregator, DINOv3IntegratedModel):
        assert cls.from_pretrained.__func__ is shared, cls
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    raise_if_on_meta(module, "test")  # all real: nothing raised
    module[0].bias = torch.nn.Parameter(torch.empty(3, device="meta"))
    module[1].register_buffer("extra", torch.empty(1, device="meta"), persistent=False)
    assert meta_tensor_names(module) == ["0.bias", "1.extra"]
    with pytest.raises(
        RuntimeError, match=r"^test left 2 tensors on the meta device after loading \(0.bias, 1.extra\)"
    ):
        raise_if_on_meta(module, "test")
