"""Identity hand-overs in the station's inbox: read once, verified, then gone from disk; and the
room rule: nothing outside kiosk/ and tools/ imports the station."""
from __future__ import annotations

import ast
import json

import cv2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.identity import IdentityError, IdentityReference, sign_statement
from kiosk.inbox import READY, Trust, next_handover
from kiosk.specimen import build_dg1, build_dg2, build_sod, make_csca, make_document_signer, td1_mrz
from tests.paths import LFW_IMAGES, REPO, require

PHOTO = LFW_IMAGES / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg"


def test_provider_and_chip_hand_overs_are_read_once_and_deleted(tmp_path):
    key = Ed25519PrivateKey.generate()
    csca = make_csca()
    trust = Trust((csca.cert,), {"vneid": key.public_key()})
    inbox = tmp_path / "inbox"
    photo = require(PHOTO).read_bytes()
    a = inbox / "a"
    a.mkdir(parents=True)
    (a / "photo.jpg").write_bytes(photo)
    (a / "statement.json").write_text(json.dumps(sign_statement(key, "vneid", "VNEID-1", "Đặng Thị Mai", photo),
                                                 ensure_ascii=False), encoding="utf-8")
    assert next_handover(inbox, trust) is None  # not READY yet: maybe still being copied
    (a / READY).touch()
    ref = next_handover(inbox, trust)
    assert isinstance(ref, IdentityReference) and ref.display_name == "Đặng Thị Mai" and not a.exists()
    assert next_handover(inbox, trust) is None

    b = inbox / "b"
    b.mkdir()
    img = cv2.imread(str(PHOTO))
    dg1 = build_dg1(td1_mrz("012345678", "DANG", "THI MAI"))
    dg2 = build_dg2(cv2.imencode(".jpg", img)[1].tobytes(), "jpeg", img.shape[1], img.shape[0])
    for name, data in (("dg1.bin", dg1), ("dg2.bin", dg2), ("sod.bin", build_sod({1: dg1, 2: dg2},
                                                                                make_document_signer(csca)))):
        (b / name).write_bytes(data)
    (b / READY).touch()
    ref = next_handover(inbox, trust)
    assert ref.subject_id == "VNM-012345678" and ref.display_name == "Dang Thi Mai" and not b.exists()


def test_a_refused_hand_over_is_reported_and_still_deleted(tmp_path):
    key = Ed25519PrivateKey.generate()
    trust = Trust((), {"vneid": key.public_key()})
    inbox = tmp_path / "inbox"
    photo = require(PHOTO).read_bytes()
    c = inbox / "c"
    c.mkdir(parents=True)
    (c / "photo.jpg").write_bytes(photo)
    (c / "statement.json").write_text(json.dumps(sign_statement(key, "someone-else", "X-1", "X", photo)))
    (c / READY).touch()
    got = next_handover(inbox, trust)
    assert isinstance(got, IdentityError) and "'someone-else' is not trusted" in str(got) and not c.exists()
    d = inbox / "d"
    d.mkdir()
    (d / READY).touch()
    got = next_handover(inbox, trust)
    assert isinstance(got, IdentityError) and "neither dg1/dg2/sod.bin nor photo" in str(got) and not d.exists()


def test_no_room_but_tools_imports_the_station():
    for room in ("gate", "sync", "vision", "devices", "models"):
        for path in (REPO / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n == "kiosk" or n.startswith("kiosk.") for n in names), f"{path} imports kiosk"
