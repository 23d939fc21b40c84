"""Opt-in face crops of REFER decisions: encrypted at rest, deleted after a retention limit.

A gate stores no face image by default. Some operators want the staff who handle a referred
traveller (or review the case later) to see the face the lane saw, so `[privacy]
keep_refer_crops` keeps exactly that and no more: only REFER decisions, only the primary
face (its box enlarged a little, never the whole frame), sealed with the template key
(AES-256-GCM, sync.template_crypto) and deleted once older than the retention limit.

Each file is named after the audit record of its decision (sequence number and UTC time),
and that name is the GCM associated data: a crop renamed to sit beside another decision fails
authentication instead of showing the wrong face. The retention clock is the time in the
name, not the file's mtime, which a copy or restore would reset.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from gate.sqlite_store import create_private_file, require_private
from sync.template_crypto import TemplateCipher

log = logging.getLogger(__name__)

CROPS_DIR_NAME = "refer-crops"
CROP_MARGIN = 0.25  # added on each side, as a share of the face box's width / height
JPEG_QUALITY = 90
# Passed as TemplateCipher's model id: no embedding model has this id, so a crop blob can
# never authenticate as a template (or a template as a crop) under the shared key.
CROP_DOMAIN = "edgegate/refer-crop/v1"
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^refer-(\d{10})-(\d{8}T\d{6}Z)\.crop$")


class CropError(RuntimeError):
    """A crop could not be cut or encoded (no usable face box in the frame)."""


@dataclass(frozen=True)
class StoredCrop:
    path: Path
    audit_seq: int  # the audit record of the REFER decision
    taken_at: datetime


def crop_face(image: np.ndarray, box, margin: float = CROP_MARGIN) -> np.ndarray:
    """The face box enlarged by `margin` on each side, clipped to the frame."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if not (w > 0 and h > 0):
        raise CropError(f"face box {tuple(box)} is empty")
    rows, cols = image.shape[:2]
    left, top = max(0, int(x1 - margin * w)), max(0, int(y1 - margin * h))
    right, bottom = min(cols, int(np.ceil(x2 + margin * w))), min(rows, int(np.ceil(y2 + margin * h)))
    if right <= left or bottom <= top:
        raise CropError(f"face box {tuple(box)} lies outside the {cols}x{rows} frame")
    return image[top:bottom, left:right]


def _record_name(audit_seq: int, taken_at: datetime) -> str:
    return f"refer-{audit_seq:010d}-{taken_at.astimezone(timezone.utc).strftime(_TIME_FORMAT)}"


class ReferCropStore:
    """`<state_dir>/refer-crops/`: a 0700 folder of 0600 sealed JPEG crops."""

    def __init__(self, state_dir: Path, cipher: TemplateCipher, retention: timedelta) -> None:
        self.directory = Path(state_dir) / CROPS_DIR_NAME
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        require_private(self.directory)  # a loose folder means a restore went wrong: refuse
        self._cipher = cipher
        self.retention = retention

    def save(self, image: np.ndarray, box, audit_seq: int, taken_at: datetime) -> Path:
        """Seal the crop of `box` in `image` as the crop of audit record `audit_seq`."""
        ok, jpeg = cv2.imencode(".jpg", crop_face(image, box), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise CropError("the face crop could not be JPEG-encoded")
        name = _record_name(audit_seq, taken_at)
        path = self.directory / f"{name}.crop"
        create_private_file(path)
        with open(path, "wb") as f:
            f.write(self._cipher.seal(jpeg.tobytes(), name, CROP_DOMAIN))
            f.flush()
            os.fsync(f.fileno())
        return path

    def open(self, path: Path) -> bytes:
        """The JPEG bytes of a stored crop; TemplateIntegrityError if altered or renamed."""
        path = Path(path)
        require_private(path)
        return self._cipher.open(path.read_bytes(), path.stem, CROP_DOMAIN)

    def crops(self) -> list[StoredCrop]:
        found = []
        for path in sorted(self.directory.iterdir()):
            m = _NAME.match(path.name)
            if m:
                taken = datetime.strptime(m.group(2), _TIME_FORMAT).replace(tzinfo=timezone.utc)
                found.append(StoredCrop(path, int(m.group(1)), taken))
        return found

    def purge(self, now: datetime) -> list[Path]:
        """Delete every crop taken more than `retention` before `now`; returns the paths."""
        cutoff = now - self.retention
        gone = []
        for crop in self.crops():
            if crop.taken_at <= cutoff:
                crop.path.unlink(missing_ok=True)
                gone.append(crop.path)
        if gone:
            log.info("deleted %d REFER face crops older than %s", len(gone), self.retention)
        return gone
