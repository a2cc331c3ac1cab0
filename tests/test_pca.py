"""PCA visualisation maths and pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinov3_integration.pca import compose_rows, fit_pca, foreground_mask, pca_colors, render_row


def test_fit_pca_matches_numpy_svd_with_whitening() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g) @ torch.randn(10, 10, generator=g)
    fit = fit_pca(x, 3)
    y = fit.transform(x)
    assert y.shape == (200, 3)
    np.testing.assert_allclose(y.var(0, unbiased=True).numpy(), 1.0, rtol=1e-6)  # whitened
    xc = (x - x.mean(0)).double().numpy()
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(np.abs(fit.components.numpy()), np.abs(vt[:3]), atol=1e-8)
    # sign convention (scikit-learn svd_flip): largest |loading| positive
    comps = fit.components
    assert (comps.gather(1, comps.abs().argmax(1, keepdim=True)) > 0).all()
    np.testing.assert_allclose(fit.std.numpy(), s[:3] / np.sqrt(199), rtol=1e-6)


def _object_features(h: int = 8, w: int = 10, d: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obj = torch.zeros(h, w, dtype=torch.bool)
    obj[2:6, 3:7] = True
    feats = 0.1 * torch.randn(h, w, d, generator=g)
    feats[obj] += torch.linspace(1, 2, d)
    return feats, obj


def test_foreground_is_the_object_not_the_border() -> None:
    feats, obj = _object_features()
    fg = foreground_mask(feats)
    assert (fg == obj).float().mean() > 0.9
    assert not fg[0].any() and not fg[-1].any()


def test_pca_colors_and_pictures() -> None:
    feats, obj = _object_features()
    ((rgb, fg),) = pca_colors([feats], mask=True)
    assert rgb.shape == (8, 10, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert (rgb[~fg] == 0).all() and (rgb[fg] > 0).any()
    joint = pca_colors([feats, feats.flip(1)], mask=False, joint=True)
    torch.testing.assert_close(joint[0][0].flip(1), joint[1][0])  # same features -> same colours
    image = torch.full((3, 128, 160), 7, dtype=torch.uint8)
    row = render_row(image, rgb, (128, 160))
    assert row.size == (320, 128)
    assert np.asarray(row)[:, :160].max() == 7
    alone = render_row(None, rgb, (64, 80), upsample="bilinear")
    assert alone.size == (80, 64)
    grid = compose_rows([row, alone])
    assert grid.size == (320, 192)


def _full_svd_pca(x: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The solver before the low-rank one: a full float64 SVD, components with scikit-learn's sign rule."""
    xc = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    return comps * signs[:, None], (s[:k] ** 2 / (x.shape[0] - 1)).sqrt()


def test_low_rank_solver_equals_the_full_svd() -> None:
    """Issue 15 item 3: the covariance/subspace solver gives the full SVD's components (same signs) and pictures."""
    g = torch.Generator().manual_seed(3)
    for m, d in [(600, 96), (40, 200)]:  # D > k + 8 (the refined path), and fewer samples than dimensions
        x = torch.randn(m, 12, generator=g) @ torch.randn(12, d, generator=g) + 0.2 * torch.randn(m, d, generator=g)
        fit = fit_pca(x, 3)
        comps, std = _full_svd_pca(x, 3)
        torch.testing.assert_close(fit.components, comps, rtol=0, atol=1e-6)
        torch.testing.assert_close(fit.std, std, rtol=1e-9, atol=0)
    feats, _ = _object_features(12, 14, 48)
    ((rgb, _),) = pca_colors([feats], mask=False)
    flat = feats.reshape(-1, 48).double()
    comps, std = _full_svd_pca(flat)
    want = torch.sigmoid(2 * ((flat - flat.mean(0)) @ comps.T / std)).float().reshape(12, 14, 3)
    torch.testing.assert_close(rgb, want, rtol=0, atol=1e-5)


def test_compose_picture_equal_widths_captions_and_banner() -> None:
    from dinov3_integration.pca import CAPTION_HEIGHT as C
    from dinov3_integration.pca import compose_picture, missing_input_panel

    feats, _ = _object_features()
    ((rgb, _),) = pca_colors([feats], mask=False)
    wide = render_row(missing_input_panel((32, 40)), rgb, (32, 40))  # 80 x 32
    narrow = render_row(missing_input_panel((40, 20)), rgb, (40, 20))  # 40 x 40
    picture = compose_picture([wide, narrow], ["a/very/long/path/to/wide.png", "narrow.png"], banner="RANDOM")
    assert picture.size == (80, C + C + 32 + C + 80)  # the narrow row scaled 2x to the common width
    arr = np.asarray(picture)
    assert (arr[:C] == (190, 0, 0)).all(-1).mean() > 0.5  # the banner
    assert (arr[2 * C + 32 + C :, :80] != 255).any(-1).all()  # no white margin beside the scaled row
    assert (np.asarray(missing_input_panel((4, 5))) == 200).all()
    assert compose_picture([wide]).size == wide.size


def test_compose_picture_array_equals_the_pil_composition() -> None:
    """The numpy canvas (rows as arrays or PIL images) has the pixels of the PIL composition it replaced: caption
    strips and rows pasted one under the other, narrower rows enlarged with Pillow's nearest filter."""
    from PIL import Image

    from dinov3_integration.pca import (
        caption_strip,
        compose_picture,
        compose_picture_array,
        compose_rows,
        render_row_array,
    )

    feats, _ = _object_features()
    ((rgb, _),) = pca_colors([feats], mask=True)
    rng = np.random.default_rng(0)
    rows = [
        render_row_array(rng.integers(0, 256, (3, *size), dtype=np.uint8), rgb, size) for size in [(32, 40), (13, 17)]
    ]
    captions = ["wide.png", "narrow.png"]
    width = rows[0].shape[1]
    parts = [caption_strip("BANNER", width, color=(255, 255, 255), background=(190, 0, 0), keep_end=False)]
    for caption, row in zip(captions, rows):
        picture = Image.fromarray(row)
        if picture.width != width:
            picture = picture.resize((width, round(picture.height * width / picture.width)), Image.NEAREST)
        parts += [caption_strip(caption, width), picture]
    want = np.asarray(compose_rows(parts))
    got = compose_picture_array(rows, captions, banner="BANNER")
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        compose_picture_array([Image.fromarray(r) for r in rows], captions, banner="BANNER"), want
    )
    np.testing.assert_array_equal(np.asarray(compose_picture(rows, captions, banner="BANNER")), want)


# ------------------------------------------------------------------------------------------------------------------
# Issue 15 item 3: the numpy solver and pictures against the torch code they replace (kept here as the reference:
# the full float64 SVD, the torch mask, colours and F.interpolate rendering of the release before).
def _old_fit(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x64 = x.double()
    comps, std = _full_svd_pca(x64, k)
    if comps.shape[0] < k:  # fewer samples than components: zero components, unit std (as fit_pca always did)
        comps = torch.cat([comps, comps.new_zeros(k - comps.shape[0], comps.shape[1])])
        std = torch.cat([std, std.new_ones(k - std.shape[0])])
    return x64.mean(0), comps, std


def _old_mask(f: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    h, w, d = f.shape
    flat = f.reshape(-1, d).double()
    mean, comps, _ = _old_fit(flat, 1)
    fg = ((flat - mean) @ comps.T)[:, 0].reshape(h, w) > 0
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0, :] = border[-1, :] = True
    border[:, 0] = border[:, -1] = True
    if fg[border].float().mean() > 0.5:
        fg = ~fg
    if h >= 3 and w >= 3:
        fg = F.avg_pool2d(F.pad(fg.float()[None, None], (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0, 0] > 0.5
    return fg if fg.any() else torch.ones(h, w, dtype=torch.bool)


def _old_colors(maps: list[torch.Tensor], mask: bool, joint: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    maps = [m.float() for m in maps]
    fgs = [_old_mask(f) if mask else torch.ones(f.shape[:2], dtype=torch.bool) for f in maps]
    if joint:
        fits = [_old_fit(torch.cat([f[m] for f, m in zip(maps, fgs)]), 3)] * len(maps)
    else:
        fits = [_old_fit(f[m] if int(m.sum()) >= 2 else f.reshape(-1, f.shape[-1]), 3) for f, m in zip(maps, fgs)]
    out = []
    for f, m, (mean, comps, std) in zip(maps, fgs, fits):
        proj = (f.reshape(-1, f.shape[-1]).double() - mean) @ comps.T / std.clamp_min(1e-12)
        out.append((torch.sigmoid(2.0 * proj).float().reshape(*f.shape[:2], 3) * m[..., None], m))
    return out


def _old_panel(rgb: torch.Tensor, size: tuple[int, int], upsample: str) -> np.ndarray:
    import torch.nn.functional as F

    kwargs = {} if upsample == "nearest" else {"align_corners": False}
    up = F.interpolate(rgb.permute(2, 0, 1)[None], size=size, mode=upsample, **kwargs)[0].clamp(0, 1)
    return (up * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _frames(n: int = 3, h: int = 12, w: int = 14, d: int = 96, seed: int = 5) -> list[torch.Tensor]:
    """Feature maps with an object (a low-rank signal inside, noise outside), D > 64 so Lanczos is used."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        f = 0.3 * torch.randn(h, w, d, generator=g) + torch.randn(d, generator=g)  # an offset: the mean matters
        obj = (slice(h // 4, h - h // 4), slice(w // 4 + i % 2, w - w // 4))
        f[obj] += torch.randn(*f[obj].shape[:2], 6, generator=g) @ torch.randn(6, d, generator=g)
        out.append(f)
    return out


@pytest.mark.parametrize(("m", "d"), [(900, 96), (600, 200), (150, 300), (40, 200), (500, 24)])
def test_solver_equals_the_full_svd(m: int, d: int) -> None:
    """Lanczos on the covariance (M, D > 64; rank-deficient when M < D) and the small-problem SVD give the full
    float64 SVD's components (same signs) and standard deviations, for torch and numpy input alike."""
    g = torch.Generator().manual_seed(m + d)
    x = torch.randn(m, 10, generator=g) @ torch.randn(10, d, generator=g) + 0.2 * torch.randn(m, d, generator=g)
    x = x + 3.0  # features are not centred
    comps, std = _full_svd_pca(x, 3)
    fit = fit_pca(x, 3)
    torch.testing.assert_close(fit.components, comps, rtol=0, atol=1e-9)
    torch.testing.assert_close(fit.std, std, rtol=1e-10, atol=0)
    fit_np = fit_pca(x.numpy(), 3)
    assert isinstance(fit_np.components, np.ndarray)
    np.testing.assert_array_equal(fit_np.components, fit.components.numpy())
    np.testing.assert_allclose(fit_np.transform(x.numpy()), fit.transform(x).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize(("mask", "joint"), [(True, False), (False, False), (True, True), (False, True)])
def test_colours_and_masks_equal_the_old_torch_code(mask: bool, joint: bool) -> None:
    maps = _frames(3, 24, 28)  # > 64 foreground patches: the colour PCA goes through Lanczos too
    new = pca_colors(maps, mask=mask, joint=joint)
    old = _old_colors(maps, mask, joint)
    for (rgb, fg), (rgb_old, fg_old) in zip(new, old):
        assert int(fg.sum()) > 64
        assert torch.equal(fg, fg_old)
        torch.testing.assert_close(rgb, rgb_old, rtol=0, atol=1e-6)
        assert (rgb[~fg] == 0).all()
    as_numpy = pca_colors([m.numpy() for m in maps], mask=mask, joint=joint)
    for (rgb, fg), (rgb_np, fg_np) in zip(new, as_numpy):
        assert isinstance(rgb_np, np.ndarray) and rgb_np.dtype == np.float32
        np.testing.assert_array_equal(rgb_np, rgb.numpy())
        np.testing.assert_array_equal(fg_np, fg.numpy())
    if mask:
        for f, (_, fg) in zip(maps, new):
            assert torch.equal(foreground_mask(f), fg)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize(("grid", "size"), [((12, 14), (192, 224)), ((9, 11), (50, 61)), ((5, 4), (10, 8))])
def test_png_pixels_equal_the_old_torch_rendering(tmp_path, upsample: str, grid, size) -> None:
    """The saved picture (numpy take for nearest, F.interpolate for bilinear) has the old code's pixels."""
    from PIL import Image

    from dinov3_integration.pca import compose_picture, save_png

    maps = _frames(2, *grid, d=80)
    image = torch.randint(0, 255, (3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    rows, want = [], []
    for (rgb, _), (rgb_old, _) in zip(pca_colors(maps), _old_colors(maps, True, False)):
        rows.append(render_row(image, rgb, size, upsample))
        want.append(np.concatenate([image.permute(1, 2, 0).numpy(), _old_panel(rgb_old, size, upsample)], axis=1))
    save_png(compose_picture(rows), tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        np.testing.assert_array_equal(np.asarray(im), np.concatenate(want))
    numpy_row = render_row(image.numpy(), pca_colors([m.numpy() for m in maps])[0][0], size, upsample)
    np.testing.assert_array_equal(np.asarray(numpy_row), want[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_feature_file_reader_without_torch_equals_read_features(tmp_path, dtype: str) -> None:
    from dinov3_integration.features import read_features, write_features
    from dinov3_integration.pca.files import FeatureFile

    g = torch.Generator().manual_seed(2)
    tensors = {"patch.3": torch.randn(2, 4, 5, 8, generator=g).to(getattr(torch, dtype)), "cls.3": torch.ones(2, 8)}
    tensors["frame_indices"] = torch.tensor([0, 7])
    write_features(tmp_path / "f.safetensors", tensors, {"kind": "video", "grid": [4, 5], "depth": 4})
    want, meta = read_features(tmp_path / "f.safetensors")
    fh = FeatureFile(tmp_path / "f.safetensors")
    assert fh.metadata == meta and fh.keys == sorted(want)
    got = fh.get("patch.3")
    assert got.shape == (2, 4, 5, 8)
    np.testing.assert_array_equal(got.astype(np.float32), want["patch.3"].float().numpy())
    np.testing.assert_array_equal(fh.get("frame_indices"), want["frame_indices"].numpy())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_shard_reader_without_torch_equals_feature_shards(tmp_path, dtype: str) -> None:
    """``pca.files.open_features`` on a shard folder, its index and one shard: each input's tensors (numpy, its
    rows only) equal ``FeatureShards``' (torch), bfloat16 widened exactly; a per-file output is itself."""
    from dinov3_integration.feature_shard_index import write_index
    from dinov3_integration.feature_shards import ShardWriter
    from dinov3_integration.features import FeatureShards, write_features
    from dinov3_integration.pca.files import FeatureFile, ShardInput, open_features

    g = torch.Generator().manual_seed(3)
    cast = getattr(torch, dtype)
    inputs = {  # a video between two images: every tensor of the second and third input starts at an offset
        "b.png": {"patch.3": torch.randn(3, 4, 8, generator=g).to(cast), "cls.3": torch.randn(8, generator=g)},
        "a.mp4": {"patch.3": torch.randn(2, 4, 5, 8, generator=g).to(cast), "frame_indices": torch.tensor([0, 7])},
        "c.png": {"patch.3": torch.randn(2, 2, 8, generator=g).to(cast), "cls.3": torch.randn(8, generator=g)},
    }
    with ShardWriter(tmp_path / "shards", max_bytes="1MB", fsync=False) as writer:
        for name, tensors in inputs.items():
            writer.add(name, tensors, {"kind": "video" if name.endswith("mp4") else "image", "source": name})
    write_index(tmp_path / "shards")
    want = FeatureShards(tmp_path / "shards")
    shard = tmp_path / "shards" / want.row("a.mp4")["shard"]
    for path in (tmp_path / "shards", tmp_path / "shards" / "index.json", shard):
        got = open_features(path)
        assert [name for name, _ in got] == [f"{tmp_path / 'shards'}[{i}]" for i in ("a.mp4", "b.png", "c.png")]
        for (_, fh), input in zip(got, want):
            assert isinstance(fh, ShardInput) and fh.keys == sorted(inputs[input])
            assert fh.metadata == want.metadata(input) and fh.metadata["source"] == input
            for key, tensor in want.tensors(input).items():
                array = fh.get(key)
                assert array.shape == tuple(inputs[input][key].shape), (input, key)
                np.testing.assert_array_equal(array, tensor.float().numpy() if tensor.is_floating_point() else tensor)
                assert array.dtype == (np.float32 if dtype == "bfloat16" and key == "patch.3" else tensor.numpy().dtype)
    write_features(tmp_path / "f.safetensors", inputs["b.png"], {"kind": "image"})
    ((name, fh),) = open_features(tmp_path / "f.safetensors")
    assert name == str(tmp_path / "f.safetensors") and isinstance(fh, FeatureFile)


# ------------------------------------------------------------------------------------------------------------------
# `dinov3 pca --from-features`: no model, no torch, and the picture of the model path.
TINY = ["--random-weights", "--model-kwargs", "depth=2,embed_dim=96,num_heads=4"]
SRC_ASSETS = Path(__file__).resolve().parents[1] / "src" / "dinov3_integration" / "assets"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory):
    """A photo-like image with an object, its tiny-model features (``dinov3 extract``) and the model-path picture."""
    from PIL import Image

    from dinov3_integration.cli.main import main

    root = tmp_path_factory.mktemp("pca_cli")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    img[24:72, 32:96] = (250, 30, 30)
    Image.fromarray(img).save(root / "photo.png")
    args = [*TINY, "--resolution", "96", "-q"]
    assert main(["extract", str(root / "photo.png"), "--out", str(root / "feats"), "--num-workers", "0", *args]) == 0
    assert main(["pca", str(root / "photo.png"), "--out", str(root / "model.png"), *args]) == 0
    return root


def test_from_features_picture_equals_the_model_path_and_builds_no_model(extracted, tmp_path, monkeypatch) -> None:
    from PIL import Image

    import dinov3_integration.cli.pca_cmd as pca_cmd
    import dinov3_integration.extraction.model as extraction_model
    import dinov3_integration.factory as factory
    import dinov3_integration.models as models
    from dinov3_integration.cli.main import main

    def refuse(*args, **kwargs):
        raise AssertionError("pca --from-features built a model")

    for module, name in [(pca_cmd, "build_model"), (extraction_model, "build_model"), (factory, "create_model")]:
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(models, "create_model", refuse, raising=False)
    out = tmp_path / "from_features.png"
    assert main(["pca", "--from-features", str(extracted / "feats" / "photo.png.safetensors"), "--out", str(out)]) == 0
    with Image.open(out) as a, Image.open(extracted / "model.png") as b:
        got, want = np.asarray(a), np.asarray(b)
    assert got.shape == want.shape == (16 + 16 + 96, 2 * 128, 3)
    np.testing.assert_array_equal(got, want)  # banner, caption, the input panel and the colours


def test_panels_resize_like_torchvision() -> None:
    """The torch-free input panel: Pillow decode + numpy integer resize == load_image + resize_uint8, bit for bit,
    up and down, one axis or both, bilinear and bicubic (where torch's kernel can be told without torch)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import _geometry

    from dinov3_integration.data.preprocess import load_image, resize_uint8
    from dinov3_integration.pca.panels import can_resize_like_torch, load_panel, resize_like_torch

    native = getattr(_geometry, "_do_native_uint8_resize_on_cpu", None)  # torchvision's own decision
    if native is not None:
        assert can_resize_like_torch("bilinear") == native(InterpolationMode.BILINEAR)
        assert can_resize_like_torch("bicubic") == native(InterpolationMode.BICUBIC)
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.integers(0, 256, (3, 61, 83), dtype=np.uint8))
    image[:, 10:40, 20:60] = torch.tensor([250, 30, 30], dtype=torch.uint8)[:, None, None]
    hwc = image.permute(1, 2, 0).numpy()
    sizes = [(61, 83), (61, 40), (200, 83), (64, 96), (30, 41), (17, 250), (7, 5), (183, 249)]
    for interp in ("bilinear", "bicubic"):
        if not can_resize_like_torch(interp):
            continue
        for size in sizes:
            want = resize_uint8(image, size, interp).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(resize_like_torch(hwc, size, interp), want, err_msg=f"{interp} {size}")
    path = SRC_ASSETS / "images" / "coffee.jpg"
    for interp in ("bilinear", "bicubic"):
        if can_resize_like_torch(interp):
            want = resize_uint8(load_image(path), (224, 336), interp).numpy()
            np.testing.assert_array_equal(load_panel(str(path), (224, 336), interp), want)


def test_from_features_runs_without_torch(extracted, tmp_path) -> None:
    """``--from-features`` never imports torch, with the source image shown and with it gone (colours only); the
    pictures equal the model path's (and only the input panel changes when the source is gone)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    moved = tmp_path / "feats"
    shutil.copytree(extracted / "feats", moved)
    src = tmp_path / "photo.png"  # the file records its source path: point it at a file that does not exist
    from dinov3_integration.features import read_features, write_features

    tensors, meta = read_features(moved / "photo.png.safetensors")
    meta.pop("data_digest", None)
    meta["source"] = str(src)
    write_features(moved / "photo.png.safetensors", tensors, meta)
    out, shown = tmp_path / "colours.png", tmp_path / "shown.png"
    files = {out: moved / "photo.png.safetensors", shown: extracted / "feats" / "photo.png.safetensors"}
    code = "import sys\nfrom dinov3_integration.cli.main import main\n" + "".join(
        f"assert main(['pca', '--from-features', {str(f)!r}, '--out', {str(o)!r}, '-q']) == 0\n"
        for o, f in files.items()
    )
    code += "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from dinov3_integration.pca.panels import can_resize_like_torch

    if can_resize_like_torch("bilinear"):
        assert proc.stdout.split("\n")[0] == "[]", proc.stdout
    with Image.open(out) as a, Image.open(shown) as s, Image.open(extracted / "model.png") as b:
        got, with_source, want = np.asarray(a), np.asarray(s), np.asarray(b)
    np.testing.assert_array_equal(with_source, want)
    np.testing.assert_array_equal(got[32:, 128:], want[32:, 128:])  # the colour panel
    assert (got[32:, :128] == 200).all()  # the grey stand-in for the missing source


def test_build_model_hashes_the_weights_only_when_asked(monkeypatch) -> None:
    import argparse

    import dinov3_integration.extraction.model as common

    args = argparse.Namespace(
        model="dinov3_vits16",
        weights=None,
        random_weights=True,
        seed=0,
        model_kwargs=["depth=1,embed_dim=32,num_heads=2"],
    )
    calls = []
    real = common.state_dict_digest
    monkeypatch.setattr(common, "state_dict_digest", lambda m: calls.append(1) or real(m))
    monkeypatch.setattr(common, "_MODEL_CACHE", {})
    loaded = common.build_model(args, torch.device("cpu"))
    assert calls == []  # pca never asks
    assert loaded.digest == real(loaded.model) and loaded.digest.startswith("sha256:")
    assert loaded.digest == loaded.digest and calls == [1]  # computed once, then kept
