"""Regenerate the README's configuration reference from the config schema
(`python -m tools.readme_config`), so the documented keys cannot drift from the code."""
from __future__ import annotations

import sys
from pathlib import Path

from gate.config import reference_markdown

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference_markdown()}\n{END}{tail}"


def main() -> int:
    p = Path(__file__).resolve().parents[1] / "README.md"
    p.write_text(render(p.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
