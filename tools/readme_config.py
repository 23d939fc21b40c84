"""Regenerate the README's configuration references from the config schemas
(`python -m tools.readme_config`), so the documented keys cannot drift from the code: the lane's
(gate.config, with its [sync] table), the central's (sync.config, with the console's [console] table)
and the enrolment station's (kiosk.config)."""
from __future__ import annotations

import sys
from pathlib import Path

import configschema
from console.config import console_reference_rows
from gate.config import reference_markdown
from kiosk.config import reference_markdown as station_reference_markdown
from sync.config import CentralConfig


def central_reference_markdown() -> str:
    """The central's file: its [central] table and the operations console's [console] table."""
    return configschema.reference_markdown(configschema.describe(CentralConfig, "central") + console_reference_rows())


SECTIONS = (("config-reference", reference_markdown), ("central-config-reference", central_reference_markdown),
            ("station-config-reference", station_reference_markdown))


def render(readme: str) -> str:
    for marker, generate in SECTIONS:
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        if start not in readme or end not in readme:
            raise ValueError(f"README.md has no {start} ... {end} section")
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{start}\n{generate()}\n{end}{tail}"
    return readme


def main() -> int:
    p = Path(__file__).resolve().parents[1] / "README.md"
    p.write_text(render(p.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
