"""``dinov3 models``: the registered models with parameters, GFLOPs, patch size and released weights."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list the registered models",
        description="List registered models: parameters, forward GFLOPs at a resolution, patch size, released weights.",
    )
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*vitl*'")
    p.add_argument("--pretrained", action="store_true", help="only models with released weights")
    p.add_argument("--resolution", type=int, default=224, help="square side for the GFLOPs column")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.set_defaults(func=run)
    return p


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def format_gflops(flops: int) -> str:
    """GFLOPs with one decimal, rounded once from the exact count (the README's table uses the same rule)."""
    return f"{flops / 1e9:.1f}"


def rows(pattern: str | None = None, *, pretrained: bool = False, resolution: int = 224) -> list[dict]:
    """One dict per model: ``name``, ``params``, ``flops`` (exact), ``gflops`` (2 decimals), ``patch_size``,
    ``weights``, ``description``."""
    from ..models import list_models, model_info

    out = []
    for name in list_models(pattern, pretrained=pretrained):
        info = model_info(name, resolution)
        out.append(
            {
                "name": info.name,
                "params": info.params,
                "flops": info.flops,
                "gflops": round(info.flops / 1e9, 2),
                "resolution": resolution,
                "patch_size": info.patch_size,
                "embed_dim": info.embed_dim,
                "depth": info.depth,
                "weights": list(info.weights),
                "description": info.description,
            }
        )
    return out


def format_table(table: list[dict], resolution: int) -> str:
    """Fixed-width text table of :func:`rows`."""
    header = ["name", "params", f"GFLOPs@{resolution}", "patch", "weights"]
    lines = [
        [
            r["name"],
            _params(r["params"]),
            format_gflops(r["flops"]),
            str(r["patch_size"]),
            ", ".join(r["weights"]) or "-",
        ]
        for r in table
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    right = {1, 2, 3}

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dinov3 models``."""
    from ._common import CLIError

    if args.resolution < 1:
        raise CLIError(f"--resolution must be positive, got {args.resolution}")
    table = rows(args.pattern, pretrained=args.pretrained, resolution=args.resolution)
    if args.json:
        for r in table:
            print(json.dumps(r))
        return 0
    if not table:
        print(f"no model matches {args.pattern!r}" if args.pattern else "no models registered")
        return 0
    print(format_table(table, args.resolution))
    print("\nweights: pass a tag (e.g. --weights lvd1689m), a local .pth/.safetensors file, a URL or hf-hub:ID")
    return 0
