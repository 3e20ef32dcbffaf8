"""The ``peft-mpn`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__


EPILOG = """examples:
  peft-mpn --version
  peft-mpn inspect runs/demo/mpn-adapter      # what an adapter directory holds
"""


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.adapter) / "adapter_config.json"
    if not path.is_file():
        print(f"peft-mpn inspect: no adapter_config.json in {args.adapter}; pass an adapter dir.", file=sys.stderr)
        return 2
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "MPN":
        print(f"peft-mpn inspect: {path} is a {config.get('peft_type')} adapter, not MPN.", file=sys.stderr)
        return 2
    sizes = config.get("patch_sizes", {})
    summary = {
        "base_model": config.get("base_model_name_or_path"),
        "task_type": config.get("task_type"),
        "patches": sum(len(s) for s in sizes.values()),
        "frozen": sum(config.get("num_frozen", {}).values()),
        "neurons": sum(sum(s) for s in sizes.values()),
        "blocks": {block: len(s) for block, s in sizes.items()},
        "languages": config.get("languages", []),
        "metrics": config.get("metrics", {}),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``peft-mpn``."""
    parser = argparse.ArgumentParser(
        prog="peft-mpn",
        description="Multilingual Patch Neurons: fix a fact once, in English, and have it hold in every language.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"peft-mpn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    inspect = commands.add_parser(
        "inspect",
        help="summarise an MPN adapter directory",
        description="Print what an MPN adapter directory holds: base model, patches, frozen patches, languages.",
        epilog="example:\n  peft-mpn inspect runs/demo/mpn-adapter",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("adapter", help="directory with adapter_config.json")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
