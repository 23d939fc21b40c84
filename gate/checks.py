"""PASS/FAIL rows shared by `gate-image verify` and `gatectl selftest`.

Field engineers read these tables on a laptop at the lane, so every row names the thing
checked and, when it is not a PASS, what was found instead. WARN and SKIP rows say why they
are not failures (a risk the config accepts, a part this gate does not have); only FAIL
makes the command exit non-zero.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    SKIP = "SKIP"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": str(self.status), "detail": self.detail}


def passed(checks: list[Check]) -> bool:
    """True when no row failed (and there was at least one row to judge)."""
    return bool(checks) and all(c.status is not Status.FAIL for c in checks)


def format_table(checks: list[Check]) -> str:
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'check':{width}s}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:{width}s}  {c.status:6s}  {c.detail}" for c in checks]
    verdict = "PASS" if passed(checks) else "FAIL"
    failed = sum(c.status is Status.FAIL for c in checks)
    lines.append(f"overall: {verdict}" + (f" ({failed} failed)" if failed else ""))
    return "\n".join(lines)
