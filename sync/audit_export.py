"""`gate-ops audit pull` and the console's export: one gate's received audit for a time range,
its hash chain verified on the way, saying exactly where it breaks.

The exported range is anchored on the record just before it, which the central also holds,
so a range in the middle of a gate's history is checked as firmly as one from the start.
Every record in the range is written even after a break: the file is evidence, the report
says which part of it is trustworthy.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sync.audit_chain import GENESIS_HASH, AuditRow, ChainCheck, verify_chain
from sync.central import Central

FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class PullReport:
    gate_id: str
    records: int
    first_seq: int | None
    last_seq: int | None
    check: ChainCheck
    anchored: bool  # False when the record before the range is missing at the central
    out: Path

    def summary(self) -> str:
        if self.records == 0:
            return f"gate {self.gate_id}: no audit records in that range; wrote an empty {self.out}"
        head = f"gate {self.gate_id}: {self.records} record(s), seq {self.first_seq}..{self.last_seq} -> {self.out}"
        if not self.check.ok:
            return f"{head}\nCHAIN BROKEN at seq {self.check.first_broken_seq}: {self.check.reason}"
        if not self.anchored:
            before = (self.first_seq or 1) - 1
            return (f"{head}\nchain intact within the range, but record {before} before it is missing "
                    "at the central, so the range's start cannot be anchored")
        return f"{head}\nchain intact"


def iso_utc(value: dt.datetime) -> str:
    """The chain's timestamp form, so ranges compare exactly against stored `ts` text."""
    if value.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone; give times in UTC (e.g. 2026-11-23T13:00:00Z)")
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Tee:
    """Passes rows to the verifier while remembering the range's first and last seq."""

    def __init__(self, rows: Iterator[AuditRow], writer) -> None:
        self._rows = rows
        self._writer = writer
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None

    def __iter__(self) -> Iterator[AuditRow]:
        for row in self._rows:
            self._writer(row)
            self.count += 1
            if self.first is None:
                self.first = row.seq
            self.last = row.seq
            yield row


@dataclass(frozen=True)
class ExportResult:
    gate_id: str
    records: int  # in the range, all verified
    written: int  # of those, the ones `select` kept (all without one)
    first_seq: int | None
    last_seq: int | None
    check: ChainCheck
    anchored: bool


class _TextSink:
    """A file-like object over a write callable, for csv.writer."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write


def export_audit(central: Central, gate_id: str, since: dt.datetime, until: dt.datetime | None, fmt: str,
                 write: Callable[[str], object], select: Callable[[AuditRow], bool] | None = None,
                 header: bool = True) -> ExportResult:
    """Stream one gate's audit for a time range to `write` (text), verifying its hash chain on
    the way: the one path behind `gate-ops audit pull` (a file) and the console's export (an HTTP
    response). Every record of the range is verified; `select` chooses which are written (the
    console's outcome and subject filters), so a filtered export is still checked as a whole
    chain. `header`: the CSV header row (off for the second gate of a multi-gate export)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    since_ts = iso_utc(since)
    until_ts = iso_utc(until) if until is not None else None
    rows = central.audit.rows(gate_id, since_ts, until_ts)
    first = next(rows, None)
    anchor_prev, anchor_seq, anchored = GENESIS_HASH, 0, True
    if first is not None and first.seq > 1:
        before = central.audit.get(gate_id, first.seq - 1)
        if before is None:
            anchored = False
            anchor_prev, anchor_seq = first.prev_hash, first.seq - 1
        else:
            anchor_prev, anchor_seq = before.hash, before.seq

    def all_rows() -> Iterator[AuditRow]:
        if first is not None:
            yield first
            yield from rows

    written = 0
    if fmt == "jsonl":
        def emit(row: AuditRow) -> None:
            write(json.dumps({"gate_id": gate_id, "seq": row.seq, "ts": row.ts, "prev_hash": row.prev_hash,
                              "hash": row.hash, "body": row.body}, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        csv_writer = csv.writer(_TextSink(write))
        if header:
            csv_writer.writerow(["gate_id", "seq", "ts", "prev_hash", "hash", "body"])

        def emit(row: AuditRow) -> None:
            csv_writer.writerow([gate_id, row.seq, row.ts, row.prev_hash, row.hash,
                                 json.dumps(row.body, sort_keys=True, ensure_ascii=False)])

    def out(row: AuditRow) -> None:
        nonlocal written
        if select is None or select(row):
            emit(row)
            written += 1

    tee = _Tee(all_rows(), out)
    check = verify_chain(tee, prev_hash=anchor_prev, prev_seq=anchor_seq)
    for _ in tee:  # verify_chain stops at the first break; the export goes on
        pass
    return ExportResult(gate_id=gate_id, records=tee.count, written=written, first_seq=tee.first, last_seq=tee.last,
                        check=check, anchored=anchored)


def pull_audit(central: Central, gate_id: str, since: dt.datetime, until: dt.datetime | None,
               fmt: str, out: Path) -> PullReport:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # audit holds personal data
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        r = export_audit(central, gate_id, since, until, fmt, f.write)
    return PullReport(gate_id=gate_id, records=r.records, first_seq=r.first_seq, last_seq=r.last_seq, check=r.check,
                      anchored=r.anchored, out=out)
