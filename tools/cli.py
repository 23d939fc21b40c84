"""What the service command lines (gate-central, gate-kiosk) share: `--config FILE` before or
after the subcommand, and a failure the operator can fix printed as one line, never a
traceback (the exit status 2 says it was refused)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable


def config_parser_class(config_help: str) -> Callable[..., argparse.ArgumentParser]:
    """A `parser_class` for `add_subparsers` whose parsers also take `--config FILE`, so
    `gate-kiosk status --config F` works as well as `gate-kiosk --config F status`. Pass it to
    nested `add_subparsers` too (argparse would otherwise make those parsers without it)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)

    def with_config(**kw) -> argparse.ArgumentParser:
        return argparse.ArgumentParser(parents=[common], **kw)

    return with_config


def run_command(prog: str, parser: argparse.ArgumentParser, argv: list[str] | None,
                refused: tuple[type[BaseException], ...]) -> int:
    """Parse, log at INFO (`-v`: DEBUG), run the subcommand's `func`; an exception of a
    `refused` type is the one line "PROG: what went wrong" and exit status 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except refused as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
