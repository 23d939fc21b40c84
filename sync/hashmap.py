"""The CHP hashmap kept in the central's database: current values, change log, sequence.

Each change takes the next global sequence number and also records `prev`, the sequence of
the previous change in the same scope. Gates subscribe to a few scopes only, so the global
numbers they see always jump; `prev` is what lets a gate tell "an update for another lane"
from "an update for my lane that I missed".

Bodies are sealed at rest (sync.central_seal): `put` seals the record once, bound to its key and
sequence, and stores the same blob in `kv` and `kv_log`; every read opens it. A row that does not
open is never handed out: the snapshot stops with SealedRowRefused (the gate keeps its cache),
a catch-up raises it (the server tells the gate to take a snapshot), and the publisher's
`changes_after` leaves it out, logging it once, and still moves past it. Deletions keep their
empty body (nothing to seal; it is what CHP and sync.forget read as "deleted").
"""
from __future__ import annotations

import bisect
import logging
from contextlib import contextmanager
from typing import Iterable, Iterator

from sync.central_db import MAX_PARAMS, CentralDatabase
from sync.central_seal import SealedRowRefused
from sync.kvmsg import PREV_PROPERTY, KVMsg, decode_properties, encode_properties
from sync.scopes import split_key
from sync.template_crypto import TemplateCipher, TemplateIntegrityError

log = logging.getLogger(__name__)

MAX_CATCH_UP = 50_000  # changes in one catch-up answer; beyond that a snapshot is cheaper


def _subtree_bounds(subtree: str) -> tuple[str, str]:
    # Keys under "/lane/A/" sort between "/lane/A/" and "/lane/A0" ('0' follows '/').
    return subtree, subtree[:-1] + "0"


class ChangeBatch(list[KVMsg]):
    """The changes `changes_after` could open, in order, plus how far it read the log
    (`read_to`, `rows`): a refused row is left out but still passed, so the publisher moves on."""

    read_to: int = 0
    rows: int = 0


class Hashmap:
    def __init__(self, db: CentralDatabase, cipher: TemplateCipher):
        self._conn = db
        self.cipher = cipher

    def _open(self, body: bytes, key: str, seq: int) -> bytes:
        """The clear body of a log row (b"" for a deletion); SealedRowRefused otherwise."""
        if not body:
            return b""
        try:
            return self.cipher.open_record(body, key, seq)
        except TemplateIntegrityError as exc:
            raise SealedRowRefused(str(exc)) from None

    def current_seq(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()[0])

    def _log_change(self, key: str, body: bytes, uuid: bytes, props: dict[str, str], now: float) -> tuple[int, bytes]:
        """(sequence, the body as stored: sealed, or b"" for a deletion). Caller holds the
        database's write transaction, so the sequence is global and in commit order
        (sync.central_db)."""
        scope, _ = split_key(key)
        seq = self.current_seq() + 1
        if body:
            body = self.cipher.seal_record(body, key, seq)
        row = self._conn.execute("SELECT seq FROM scope_heads WHERE scope = ?", (scope,)).fetchone()
        props = dict(props)
        props[PREV_PROPERTY] = str(row[0] if row else 0)
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
        self._conn.execute("INSERT INTO scope_heads(scope, seq) VALUES (?, ?) "
                           "ON CONFLICT(scope) DO UPDATE SET seq = excluded.seq", (scope, seq))
        self._conn.execute("INSERT INTO kv_log(seq, key, scope, uuid, props, body, logged_at) VALUES (?,?,?,?,?,?,?)",
                           (seq, key, scope, uuid, encode_properties(props).decode("utf-8"), body, now))
        self._conn.notify_change(seq)
        return seq, body

    def put(self, key: str, body: bytes, uuid: bytes, props: dict[str, str], expires_at: float | None,
            now: float) -> int:
        if not body:
            raise ValueError("an empty body means delete in CHP; use Hashmap.delete")
        seq, body = self._log_change(key, body, uuid, props, now)
        scope, subject_id = split_key(key)
        self._conn.execute(
            "INSERT INTO kv(key, scope, subject_id, seq, uuid, body, expires_at) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(key) DO UPDATE SET seq=excluded.seq, uuid=excluded.uuid, body=excluded.body, "
            "expires_at=excluded.expires_at",
            (key, scope, subject_id, seq, uuid, body, expires_at))
        return seq

    def delete(self, key: str, uuid: bytes, now: float) -> int | None:
        if self._conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is None:
            return None
        seq, _ = self._log_change(key, b"", uuid, {}, now)
        self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
        return seq

    def keys_of_subject(self, subject_id: str) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT key FROM kv WHERE subject_id = ? ORDER BY key", (subject_id,))]

    @contextmanager
    def snapshot(self, subtree: str) -> Iterator[tuple[int, Iterator[KVMsg]]]:
        """Yield (sequence, key-value messages) of one consistent state of a subtree. The
        messages raise SealedRowRefused at the first row that does not open: a snapshot with a
        row missing would be taken by the gate for the whole state (a deny-list entry gone)."""
        with self._conn.read_snapshot():
            seq = self.current_seq()
            if subtree:
                low, high = _subtree_bounds(subtree)
                rows = self._conn.stream("SELECT key, seq, body FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                                         (low, high))
            else:
                rows = self._conn.stream("SELECT key, seq, body FROM kv ORDER BY key")
            yield seq, self._opened(rows)

    def _opened(self, rows: Iterable[tuple]) -> Iterator[KVMsg]:
        # The snapshot's hot loop (100k rows in a 10 s budget): one AES-GCM open per row,
        # measured in the README (Security).
        try:
            for k, s, body in self.cipher.open_records(rows):
                yield KVMsg(key=k, seq=s, body=body)
        except TemplateIntegrityError as exc:
            raise SealedRowRefused(str(exc)) from None
        finally:  # a refused row ends the read here, in this thread (cursors are per thread)
            close = getattr(rows, "close", None)
            if close is not None:
                close()

    def changes_since(self, subtree: str, since: int, limit: int = MAX_CATCH_UP) -> tuple[int, list[KVMsg] | None]:
        """(current sequence, every change in one scope after `since`, in order) for a gate
        that moves between central nodes or lost contact for a while; None when the log no
        longer holds them all (pruned, a forgotten subject's entries deleted) or there are more
        than `limit` (a snapshot is then cheaper), so the gate must take a snapshot.

        Complete means: the first change after `since` names, as its `prev`, a change at or
        before `since` (the scope's changes form a chain through `prev`), or there is none and
        the scope's head is at or before `since`.

        A change whose body does not open raises SealedRowRefused: the answer must be all of
        them or none."""
        with self._conn.read_snapshot():
            seq = self.current_seq()
            rows = self._conn.execute(
                "SELECT seq, key, uuid, props, body FROM kv_log WHERE scope = ? AND seq > ? ORDER BY seq LIMIT ?",
                (subtree, since, limit + 1)).fetchall()
            head = self.scope_heads([subtree])[subtree]
        if len(rows) > limit:
            return seq, None
        changes = [KVMsg(key=k, seq=s, uuid=bytes(u) if u else b"", props=decode_properties(p.encode("utf-8")),
                         body=self._open(b, k, s)) for s, k, u, p, b in rows]
        if not changes:
            return seq, [] if head <= since else None
        try:
            first_prev = int(changes[0].props.get(PREV_PROPERTY, ""))
        except ValueError:
            return seq, None
        return seq, changes if first_prev <= since else None

    def changes_after(self, seq: int, limit: int) -> ChangeBatch:
        """The next `limit` log rows after `seq` that open, for the publisher. A row that does
        not is logged and left out (gates in its scope see the gap through `prev` and take a
        catch-up, which is refused, then a snapshot); `read_to` still passes it."""
        rows = self._conn.execute(
            "SELECT seq, key, uuid, props, body FROM kv_log WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        batch = ChangeBatch()
        batch.read_to = seq
        for s, k, u, p, b in rows:
            batch.rows += 1
            batch.read_to = s
            try:
                body = self._open(b, k, s)
            except SealedRowRefused as exc:
                log.error("change %d not published: %s", s, exc)
                continue
            batch.append(KVMsg(key=k, seq=s, uuid=bytes(u) if u else b"", props=decode_properties(p.encode("utf-8")),
                               body=body))
        return batch

    def scope_heads(self, scopes: Iterable[str]) -> dict[str, int]:
        """The sequence of each scope's latest change (0: none yet): one statement for up to
        MAX_PARAMS scopes (a whole fleet's)."""
        heads = {s: 0 for s in scopes}
        wanted = list(heads)
        for lo in range(0, len(wanted), MAX_PARAMS):
            chunk = wanted[lo:lo + MAX_PARAMS]
            query = f"SELECT scope, seq FROM scope_heads WHERE scope IN ({','.join('?' * len(chunk))})"
            for scope, seq in self._conn.execute(query, chunk):
                heads[scope] = int(seq)
        return heads

    def changes_behind(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """For each (scope, seq): how many changes of that scope the log holds after seq (the
        fleet view's gates that are behind), in one statement for up to MAX_PARAMS scopes: the
        seq column of those scopes' log rows after the oldest seq asked, counted here. The log
        holds the last `log_retention_s` of changes (an hour by default), so a gate far behind
        costs at most that much of its scopes' log. (A count per pair correlated with a list of
        pairs is one statement too, but PostgreSQL plans `seq > <outer column>` blind, as a third
        of the log, and scans all of it for every pair.)"""
        wanted = set(pairs)
        if not wanted:
            return {}
        since = min(seq for _, seq in wanted)
        seqs: dict[str, list[int]] = {}
        scopes = sorted({scope for scope, _ in wanted})
        for lo in range(0, len(scopes), MAX_PARAMS):
            chunk = scopes[lo:lo + MAX_PARAMS]
            for scope, seq in self._conn.execute(
                    f"SELECT scope, seq FROM kv_log WHERE seq > ? AND scope IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY seq", (since, *chunk)):
                seqs.setdefault(scope, []).append(int(seq))
        return {(scope, after): len(seqs.get(scope, ())) - bisect.bisect_right(seqs.get(scope, []), after)
                for scope, after in wanted}

    def uuid_seen(self, uuid: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM kv_log WHERE uuid = ? LIMIT 1", (uuid,)).fetchone() is not None

    def prune_log(self, published_seq: int, logged_before: float) -> int:
        """Drop log rows already published and older than the de-duplication window."""
        cur = self._conn.execute("DELETE FROM kv_log WHERE seq <= ? AND logged_at < ?", (published_seq, logged_before))
        return cur.rowcount
