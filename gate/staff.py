"""What ground staff can ask the running lane over the control socket (see gate.control).

Every command that changes the lane needs an operator id and a reason; the Unix account that
sent it (from the kernel, not from the request) is recorded beside them, and with
`control.staff_file` the operator's PIN is checked first (gate.staff_auth).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from gate.control import Peer
from gate.events import StaffAction, StaffCommand

LANE_COMMANDS = {
    "open": StaffAction.OPEN_ONCE,
    "unlock": StaffAction.UNLOCK,
    "lock": StaffAction.LOCK,
    "out-of-service": StaffAction.OUT_OF_SERVICE,
    "in-service": StaffAction.IN_SERVICE,
    "emergency-reset": StaffAction.RESET,
}


def operator_label(operator: str, peer: Peer, pin_verified: bool = False) -> str:
    return f"{operator.strip()} (uid {peer.uid}{', PIN verified' if pin_verified else ''})"


class ControlHandler:
    def __init__(self, daemon):
        self.daemon = daemon

    def __call__(self, req: dict, peer: Peer) -> dict | Iterator[dict | None]:
        cmd = req["cmd"]
        if cmd == "status":
            return {"ok": True, **self.daemon.status_snapshot}
        if cmd == "watchlist-stats":
            from datetime import datetime, timezone

            st = self.daemon.store.stats(datetime.now(timezone.utc))
            return {"ok": True, "stats": st.__dict__ if hasattr(st, "__dict__") else st,
                    "matcher_size": len(self.daemon.matcher), "sequence": self.daemon.store.sequence()}
        if cmd == "events":
            return self._events(int(req.get("last", 20)), bool(req.get("follow", False)))
        if cmd in LANE_COMMANDS:
            operator, reason = str(req.get("operator", "")), str(req.get("reason", ""))
            if not operator.strip() or not reason.strip():
                return {"ok": False, "error": f"{cmd} needs --operator ID and --reason TEXT (both are audited)"}
            verified = False
            if self.daemon.staff is not None:  # per-person PINs: checked before anything happens
                refused = self.daemon.staff.verify(operator.strip(), str(req.get("pin") or ""))
                if refused:
                    return {"ok": False, "error": refused}
                verified = True
            try:
                ev = StaffCommand(0.0, LANE_COMMANDS[cmd], operator_label(operator, peer, verified), reason,
                                  req.get("direction"))
            except ValueError as e:
                return {"ok": False, "error": str(e)}
            return self.daemon.submit(ev)
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def _events(self, last: int, follow: bool) -> dict | Iterator[dict | None]:
        audit = self.daemon.audit
        rows = audit.tail(max(0, min(last, 10_000)))
        if not follow:
            return {"ok": True, "events": [_row(r) for r in rows]}

        def stream() -> Iterator[dict | None]:
            seq = rows[-1].seq if rows else audit.last_seq()
            for r in rows:
                yield _row(r)
            while not self.daemon.stop_requested.is_set():
                new = list(audit.iter_since(seq))
                for r in new:
                    seq = r.seq
                    yield _row(r)
                if not new:
                    time.sleep(0.2)
                    yield None  # idle: lets the server notice a client that has gone

        return stream()


def _row(r) -> dict[str, Any]:
    return {"seq": r.seq, "ts": r.ts, **r.body}
