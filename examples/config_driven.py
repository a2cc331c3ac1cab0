"""Quick start 3: build models from the YAML configuration.

Loads the packaged ``dinov3_config.yaml`` with a named variant and dotted overrides (tiny sizes by default), prints
the merged configuration, builds the model, runs it, then saves ``model.to_config()`` and reloads it to show the
round trip. Also shows the error for a mistyped key.

    PYTHONPATH=src python examples/config_driven.py                          # variant "video", tiny sizes
    PYTHONPATH=src python examples/config_driven.py --variant lightweight
    PYTHONPATH=src python examples/config_driven.py --config my.yaml         # your file as it is (no variant)
    PYTHONPATH=src python examples/config_driven.py --config my.yaml --variant fast --set model.aggregator.enabled=true
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from dinov3_integration import build_model
from dinov3_integration.config import ConfigError, list_variants, load_config, save_config

TINY = [
    "model.backbone.overrides={depth: 2, embed_dim: 64, num_heads: 4}",
    "model.backbone.img_size=32",
    "model.aggregator.depth=2",
    "model.aggregator.num_heads=4",
    "model.aggregator.output_layers=[-1]",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a YAML file (default: the packaged dinov3_config.yaml)")
    parser.add_argument(
        "--variant",
        default=None,
        help="a variant of the file to apply (default: 'video' for the packaged file, none for --config; packaged: "
        f"{', '.join(list_variants())})",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeat)")
    parser.add_argument("--full", action="store_true", help="do not add the tiny-size overrides")
    args = parser.parse_args(argv)

    overrides = ([] if args.full else TINY) + args.set
    variant = args.variant or None  # --variant '' means none
    if args.config is None and args.variant is None:
        variant = "video"
    source = args.config if args.config is not None else variant
    config = load_config(source, overrides, variant=variant if args.config is not None else None)
    print(f"loaded: {config.source}")
    print(yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None).rstrip())

    torch.manual_seed(0)
    model = build_model(config).eval()
    side = config.model.backbone.img_size
    x = torch.rand(1, 2, 3, side, side) if model.use_aggregator else torch.rand(2, 3, side, side)
    with torch.inference_mode():
        out = model(x)
    print(f"forward {tuple(x.shape)} ->", {k: tuple(v.shape) for k, v in out.items() if isinstance(v, torch.Tensor)})

    with tempfile.TemporaryDirectory() as tmp:
        path = save_config(model.to_config(), Path(tmp) / "model.yaml")
        rebuilt = build_model(load_config(path))
        rebuilt.load_state_dict(model.state_dict())
        same = rebuilt.to_config() == model.to_config()
        print(f"saved to_config() to {path.name} and rebuilt it: identical config = {same}")

    try:
        load_config(source, ["model.aggregator.depht=3"], variant=variant if args.config is not None else None)
    except ConfigError as err:
        print(f"a mistyped key is rejected before building:\n  {err}")


if __name__ == "__main__":
    main()
