"""The body of a subject's key-value message: templates plus what a gate needs to use them.

Layout (format 1): one msgpack map with short keys, templates as one raw little-endian float32
block, so a 128-d subject costs ~560 bytes and decodes without a per-number loop:

    {"v": 1, "sid": str, "list": "allow"|"deny", "model": str,
     "vf": int|nil, "vu": int|nil,          # validity window, Unix seconds UTC, nil = open
     "n": int, "dim": int, "tpl": bin}      # n*dim float32 LE, each row L2-normalised

The validity window travels inside the body (not only as a CHP ttl) so a gate that is cut
off from the central still stops admitting a subject whose window has closed.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import msgpack
import numpy as np

FORMAT_VERSION = 1
LIST_TYPES = ("allow", "deny")
MAX_TEMPLATES = 64
MAX_DIM = 4096
_NORM_TOLERANCE = 1e-3
_KEYS = {"v", "sid", "list", "model", "vf", "vu", "n", "dim", "tpl"}


class MalformedRecord(ValueError):
    """A body that is not a valid format-1 subject record; the reason names the field."""


@dataclass(frozen=True, eq=False)
class SubjectRecord:
    subject_id: str
    list_type: str
    model_id: str
    templates: np.ndarray  # (n, dim) float32, rows L2-normalised
    valid_from: int | None = None
    valid_until: int | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubjectRecord):
            return NotImplemented
        return (
            (self.subject_id, self.list_type, self.model_id, self.valid_from, self.valid_until)
            == (other.subject_id, other.list_type, other.model_id, other.valid_from, other.valid_until)
            and self.templates.shape == other.templates.shape
            and bool(np.array_equal(self.templates, other.templates))
        )


def normalise_templates(vectors: np.ndarray) -> np.ndarray:
    """Validate and L2-normalise enrolment vectors; refuse what would poison a matcher."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"templates must be a non-empty (n, dim) array, got shape {np.shape(vectors)}")
    if arr.shape[0] > MAX_TEMPLATES or arr.shape[1] > MAX_DIM:
        raise ValueError(f"at most {MAX_TEMPLATES} templates of at most {MAX_DIM} dimensions, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("templates contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise ValueError("a template has zero length and cannot be normalised")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def encode_record(rec: SubjectRecord) -> bytes:
    if rec.list_type not in LIST_TYPES:
        raise ValueError(f"list type {rec.list_type!r} is not one of {LIST_TYPES}")
    tpl = np.ascontiguousarray(rec.templates, dtype="<f4")
    return msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "sid": rec.subject_id,
            "list": rec.list_type,
            "model": rec.model_id,
            "vf": rec.valid_from,
            "vu": rec.valid_until,
            "n": int(tpl.shape[0]),
            "dim": int(tpl.shape[1]),
            "tpl": tpl.tobytes(),
        },
        use_bin_type=True,
    )


_FIELDS = operator.itemgetter("v", "sid", "list", "model", "vf", "vu", "n", "dim", "tpl")


_MAX_UNIX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z


def decode_record(body: bytes) -> SubjectRecord:
    """Parse and check one body. Written for speed (a snapshot decodes 100k of them): exact
    type checks (`type(x) is int` also rules out bool) and one numeric pass."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedRecord(f"body is not msgpack: {exc}") from exc
    if type(obj) is not dict or obj.keys() != _KEYS:
        raise MalformedRecord("body must be a map with exactly the keys " + ", ".join(sorted(_KEYS)))
    version, sid, list_type, model, vf, vu, n, dim, tpl = _FIELDS(obj)
    if version != FORMAT_VERSION:
        raise MalformedRecord(f"unsupported record format {version!r}")
    for name, value in (("sid", sid), ("model", model)):
        if type(value) is not str or not value:
            raise MalformedRecord(f"{name} must be a non-empty string")
    if list_type not in LIST_TYPES:
        raise MalformedRecord(f"list type {list_type!r} is not one of {LIST_TYPES}")
    if (vf is not None and type(vf) is not int) or (vu is not None and type(vu) is not int):
        raise MalformedRecord("vf and vu must be integers or nil")
    for name, value in (("vf", vf), ("vu", vu)):
        # Unix seconds a gate can turn into a date (years 1970-9999); anything else would
        # only fail later, deep inside the gate's watchlist store.
        if value is not None and not 0 <= value <= _MAX_UNIX_SECONDS:
            raise MalformedRecord(f"{name} = {value} is not a Unix time between 1970 and 9999")
    if type(n) is not int or type(dim) is not int or not (1 <= n <= MAX_TEMPLATES and 1 <= dim <= MAX_DIM):
        raise MalformedRecord(f"template count/dimension out of range: n={n!r} dim={dim!r}")
    if type(tpl) is not bytes or len(tpl) != n * dim * 4:
        raise MalformedRecord(f"template block must be n*dim*4 = {n * dim * 4} bytes")
    templates = np.frombuffer(tpl, dtype="<f4").reshape(n, dim)
    # One pass checks both: a NaN or infinity makes the squared norm fail the comparison.
    # (compared as Python floats: numpy's abs/compare/all on a one-element array cost three
    # times the einsum, a tenth of a snapshot's decode time)
    squared = np.einsum("ij,ij->i", templates, templates).tolist()
    if not all(abs(x - 1.0) <= 2 * _NORM_TOLERANCE for x in squared):
        if not np.isfinite(templates).all():
            raise MalformedRecord("templates contain NaN or infinite values")
        raise MalformedRecord("templates are not L2-normalised")
    return SubjectRecord(subject_id=sid, list_type=list_type, model_id=model, templates=templates,
                         valid_from=vf, valid_until=vu)
