"""The `dcae-ext` command. Each subcommand lives in dcae_ext/commands/<name>.py and exposes
add_parser(subparsers) and run(args).

Errors come out as one line (what is wrong, which flag, what would work) and exit status 1 (2 for
a malformed command line); `--debug` shows the traceback instead. SIGINT (Ctrl-C) and SIGTERM stop a
command with one line and exit status 130 or 143 (training first saves its current step).
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["info", "demo", "bench", "reconstruct", "train", "eval", "encode", "tokenize", "decode"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows each flag's default (unless its help already does)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    from dcae_ext import __version__

    parser = Parser(prog="dcae-ext", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"dcae-ext {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dcae_ext.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"dcae_ext.commands.{name}":
                raise
            continue
        sub = module.add_parser(subparsers)
        if sub.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            sub.formatter_class = HelpFormatter
        sub.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
        sub.set_defaults(handler=module.run)
    return parser


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (ValueError, OSError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    from dcae_ext.commands._options import device_problem

    args = build_parser().parse_args(argv)
    prog = f"dcae-ext {args.command}"
    device = getattr(args, "device", None)
    problem = device_problem(device) if isinstance(device, str) else None
    if problem:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        return 2
    from dcae_ext.interrupt import Interrupted, raising_signals

    try:
        with raising_signals():  # SIGINT and SIGTERM: one line and 128 + the signal, never a traceback
            return args.handler(args) or 0
    except Interrupted as stop:
        if args.debug:
            raise
        print(f"{prog}: {stop}", file=sys.stderr)
        return stop.exit_status
    except Exception as error:
        if args.debug:
            raise
        hint = "" if isinstance(error, (ValueError, OSError)) else " (--debug shows the traceback)"
        print(f"{prog}: error: {one_line(error)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
