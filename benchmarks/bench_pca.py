"""PCA pictures: the solver against the old full float64 SVD, and ``dinov3 pca`` against the model forward (15.3).

Two measurements, interleaved over ``--repeats`` rounds in one process (median of per-round ratios):

- ``from-features``: the colours of a 16-frame feature set (``--frames`` x ``--grid`` x ``--grid`` patches, width
  ``--dim``; what ``pca --from-features`` computes after reading the file), with :func:`dinov3_integration.pca.
  pca_colors` (one PCA per frame and the foreground masks) and with the old solver (full float64 SVDs) patched in;
  target <= 2 s per 16-frame set. The maximum colour difference between the two is printed (same pictures up to
  float rounding; the sign rule is the same).
- ``pca-vs-forward``: one image through ``get_intermediate_layers`` (the forward) against the whole PCA step that
  follows it (mask, PCA, colours, picture, PNG); target: PCA step <= 20 % of the forward.

Example::

    python benchmarks/bench_pca.py --model dinov3_vits16 --resolution 768 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import dinov3_integration.pca as pca  # noqa: E402
from dinov3_integration.factory import create_model  # noqa: E402


def old_fit_pca(x: torch.Tensor, k: int = 3) -> pca.PCAFit:
    """The solver before issue 15: a full SVD in float64."""
    x = x.detach().to("cpu", torch.float64)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True))).squeeze(1)
    signs[signs == 0] = 1
    return pca.PCAFit(mean, comps * signs[:, None], (s[:k] ** 2 / (x.shape[0] - 1)).sqrt())


def timed(fn) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_from_features(args: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(0)
    n = args.grid * args.grid
    base = torch.randn(args.frames, n, 24, generator=g) @ torch.randn(24, args.dim, generator=g)
    maps = [(b + 0.3 * torch.randn(n, args.dim, generator=g)).reshape(args.grid, args.grid, args.dim) for b in base]
    new_t, old_t, diff = [], [], 0.0
    for _ in range(args.repeats):
        t_new, new = timed(lambda: pca.pca_colors(maps))
        original = pca.fit_pca
        pca.fit_pca = old_fit_pca
        try:
            t_old, old = timed(lambda: pca.pca_colors(maps))
        finally:
            pca.fit_pca = original
        new_t.append(t_new)
        old_t.append(t_old)
        diff = max(diff, max(float((a[0] - b[0]).abs().max()) for a, b in zip(new, old)))
    med_new, med_old = statistics.median(new_t), statistics.median(old_t)
    print(
        f"from-features ({args.frames} frames of {args.grid}x{args.grid} x {args.dim}): new {med_new:.2f} s, "
        f"old {med_old:.2f} s ({med_old / med_new:.1f}x); target <= 2 s: {'met' if med_new <= 2 else 'NOT met'}; "
        f"max colour difference {diff:.1e}"
    )


def bench_vs_forward(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    side = args.resolution // model.patch_size * model.patch_size
    x = torch.randn(1, 3, side, side)
    image = torch.randint(0, 255, (3, side, side), dtype=torch.uint8)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            with torch.inference_mode():
                t_fwd, (patches,) = timed(lambda: model.get_intermediate_layers(x, n=[model.n_blocks - 1], norm=True))
            feats = patches[0].reshape(side // model.patch_size, side // model.patch_size, -1)

            def picture(feats: torch.Tensor = feats) -> None:
                ((rgb, _),) = pca.pca_colors([feats])
                row = pca.render_row(image, rgb, (side, side))
                pca.save_png(pca.compose_picture([row], ["image.jpg"]), Path(tmp) / "p.png")

            t_pca, _ = timed(picture)
            ratios.append(t_pca / t_fwd)
    ratio = statistics.median(ratios)
    print(
        f"pca-vs-forward ({args.model} at {side}x{side}): PCA step / forward = {ratio:.1%}; target <= 20%: "
        f"{'met' if ratio <= 0.2 else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dinov3_vits16")
    parser.add_argument("--resolution", type=int, default=768)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=48, help="patches per side of each frame (768 px / 16)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_from_features(args)
    bench_vs_forward(args)


if __name__ == "__main__":
    main()
