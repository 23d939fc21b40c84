"""The rooms' import rules (../shared/DESIGN.md, README "Architecture"), checked on the source.

Every module of every room is parsed (ast, nothing is imported) and each `import` or
`from ... import` of one of edgegate's packages, at module level or inside a function, must be
allowed by ROOM_RULES below. The table is the rule: change it, with the reason in the README's
room paragraph, rather than working around it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# room -> what it may import of ours besides itself: a room name, or one dotted module of a room.
# "*" = everything. A room missing from every other row may be imported only by those listed.
ROOM_RULES: dict[str, frozenset[str]] = {
    # the schema machinery every config uses; imports nothing of ours
    "configschema": frozenset(),
    # builds and describes model files; nothing of ours but small helpers
    "models": frozenset({"configschema"}),
    # images, models and numbers; never gate, devices or sync
    "vision": frozenset({"models", "configschema"}),
    # hardware; never vision or sync (and, as gate composes it, never gate)
    "devices": frozenset({"configschema"}),
    # the wire; talks to the gate through sync/interfaces.py, never by importing gate; meets
    # vision only in tools/enrolment.py
    "sync": frozenset({"configschema"}),
    # the operations console (web pages over the central's store): the wire's store and export, and
    # the staff vocabulary of audit records (gate.event_text, words only), never the lane itself
    "console": frozenset({"sync", "configschema", "gate.event_text"}),
    # composes vision, devices and sync; none of them imports gate
    "gate": frozenset({"vision", "devices", "sync", "models", "configschema"}),
    # an enrolment kiosk: the library rooms, and of the gate what a station shares with a lane (the audit
    # log, the control socket with the kernel-reported account), never the lane's decision internals
    # (gate.lane, gate.decide, gate.daemon); the camera/models config sections it shares with a lane
    # are vision.config's
    "kiosk": frozenset({"vision", "devices", "sync", "models", "configschema", "gate.audit", "gate.control"}),
    # thin command lines over library code
    "tools": frozenset({"*"}),
}
NOT_ROOMS = {"tests", "config", "docs", "systemd", "build", "out"}


def _modules(room: str) -> list[Path]:
    return sorted((REPO / room).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every absolute import of ours; `from a import b` gives a.b too, so a
    rule may name one module of a room."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in out if name.split(".")[0] in ROOM_RULES]


def _allowed(room: str, name: str) -> bool:
    rules = ROOM_RULES[room]
    target = name.split(".")[0]
    if target == room or "*" in rules or target in rules:
        return True
    return any(name == r or name.startswith(r + ".") for r in rules if "." in r)


def test_every_package_is_a_room_with_rules():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - NOT_ROOMS
    assert packages <= set(ROOM_RULES), f"give {sorted(packages - set(ROOM_RULES))} a row in ROOM_RULES"


@pytest.mark.parametrize("room", sorted(ROOM_RULES))
def test_room_imports_only_what_it_may(room):
    broken = [f"{p.relative_to(REPO)}:{line} imports {name}"
              for p in _modules(room) for line, name in _imports(p) if not _allowed(room, name)]
    assert not broken, f"{room}/ may import only {sorted(ROOM_RULES[room])}:\n" + "\n".join(broken)


def test_the_checker_catches_a_forbidden_import(tmp_path):
    # the rule check itself must be able to fail: a vision module importing gate, a kiosk one the lane
    bad = tmp_path / "m.py"
    bad.write_text("import numpy\nfrom models.manifest import load_model\n\ndef f():\n    from gate import lane\n")
    assert [n for _, n in _imports(bad) if not _allowed("vision", n)] == ["gate.lane"]
    assert not _allowed("kiosk", "gate.lane") and _allowed("kiosk", "gate.audit") and _allowed("kiosk", "gate.audit.x")
    assert not _allowed("gate", "kiosk.station") and _allowed("tools", "kiosk.station")
