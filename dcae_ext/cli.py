"""The `dcae-ext` command. Each subcommand lives in dcae_ext/commands/<name>.py and exposes
add_parser(subparsers) and run(args)."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["info", "demo", "bench", "reconstruct", "train", "eval", "encode", "tokenize", "decode"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcae-ext", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dcae_ext.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"dcae_ext.commands.{name}":
                raise
            continue
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args) or 0


if __name__ == "__main__":
    sys.exit(main())
