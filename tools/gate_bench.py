"""gate-bench: speed and robustness measurements, printed as tables or one JSON object.

Each subcommand is a thin wrapper over a library function so benchmarks are reproducible from
Python too. Targets live here, never in timed unit tests.
"""
from __future__ import annotations

import argparse
import json
import sys


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=float)
    sys.stdout.write("\n")


def cmd_search(args) -> int:
    from tools.bench_search import add_search_args, run_search_cli  # noqa: F401  (owned by the search bench)

    return run_search_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gate-bench", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    from tools.bench_search import add_search_args

    s = sub.add_parser("search", help="1:N search latency and memory per gallery size and method")
    add_search_args(s)
    s.set_defaults(func=cmd_search)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
