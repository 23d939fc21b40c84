"""ICAO 9303 DG2 + passive authentication of EF.SOD, and the identity-provider hand-over, on
documents issued by a test CSCA from real LFW photos (real keys, real CMS, real JPEG/JPEG 2000)."""
import datetime as dt
import json

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.icao9303 import DocumentError, load_csca_list, parse_dg2, passive_authentication
from kiosk.identity import ChipDocumentSource, IdentityError, ProviderFileSource, load_provider_key, sign_statement
from kiosk.specimen import build_dg1, build_dg2, build_sod, make_csca, make_document_signer, td1_mrz, tlv
from tests.paths import LFW_IMAGES, require

PHOTO = LFW_IMAGES / "Adam_Sandler" / "Adam_Sandler_0001.jpg"


@pytest.fixture(scope="module")
def csca():
    return make_csca("CSCA Viet Nam Test")


@pytest.fixture(scope="module")
def signer(csca):
    return make_document_signer(csca)


@pytest.fixture(scope="module")
def photo():
    return cv2.imread(str(require(PHOTO)))


def _document(photo, signer, fmt="jpeg", scheme="pkcs1"):
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".jp2", photo)
    dg1 = build_dg1(td1_mrz("079203012", "NGUYEN", "VAN AN"))
    dg2 = build_dg2(data.tobytes(), fmt, photo.shape[1], photo.shape[0])
    return dg1, dg2, build_sod({1: dg1, 2: dg2}, signer, scheme=scheme)


@pytest.mark.parametrize("fmt, scheme, kind", [("jpeg", "pkcs1", "rsa"), ("jpeg2000", "pss", "rsa"),
                                                ("jpeg", "ecdsa", "ec")])
def test_a_genuine_chip_gives_its_photo_and_document_number(photo, fmt, scheme, kind):
    csca = make_csca(kind=kind)
    dg1, dg2, sod = _document(photo, make_document_signer(csca, kind=kind), fmt, scheme)
    ref = ChipDocumentSource(dg1, dg2, sod, (csca.cert,), display_name="Nguyễn  Văn An").reference()
    assert ref.subject_id == "VNM-079203012" and ref.display_name == "Nguyễn Văn An"
    assert ref.source == "icao9303:VNM" and ref.image.shape == photo.shape
    assert any(v.startswith("ds_chain:") for v in ref.verified)
    if fmt == "jpeg":  # lossy, but the same face: decoded pixels close to the original
        assert np.abs(ref.image.astype(int) - photo.astype(int)).mean() < 6


def test_tampered_dg2_is_refused(photo, csca, signer):
    dg1, dg2, sod = _document(photo, signer)
    other = cv2.imread(str(require(LFW_IMAGES / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg")))
    ok, data = cv2.imencode(".jpg", other)
    swapped = build_dg2(data.tobytes(), "jpeg", other.shape[1], other.shape[0])
    with pytest.raises(IdentityError, match="DG2 hash does not match"):
        ChipDocumentSource(dg1, swapped, sod, (csca.cert,)).reference()
    flipped = bytearray(dg2)
    flipped[-100] ^= 1
    with pytest.raises(IdentityError, match="DG2 hash does not match"):
        ChipDocumentSource(dg1, bytes(flipped), sod, (csca.cert,)).reference()


def test_a_foreign_signer_is_refused(photo, csca):
    foreign = make_csca("CSCA Elsewhere")
    dg1, dg2, sod = _document(photo, make_document_signer(foreign))
    with pytest.raises(IdentityError, match="does not chain to any configured CSCA"):
        ChipDocumentSource(dg1, dg2, sod, (csca.cert,)).reference()
    # Same subject name as the trusted CSCA, different key: the name alone is not trust.
    impostor = make_csca("CSCA Viet Nam Test")
    dg1, dg2, sod = _document(photo, make_document_signer(impostor))
    with pytest.raises(IdentityError, match="does not chain"):
        ChipDocumentSource(dg1, dg2, sod, (csca.cert,)).reference()


def test_an_expired_document_signer_is_refused(photo, csca):
    now = dt.datetime.now(dt.timezone.utc)
    old = make_document_signer(csca, not_before=now - dt.timedelta(days=800), not_after=now - dt.timedelta(days=2))
    dg1, dg2, sod = _document(photo, old)
    with pytest.raises(IdentityError, match="expired or not yet valid"):
        ChipDocumentSource(dg1, dg2, sod, (csca.cert,)).reference()


def test_a_forged_signature_is_refused(photo, csca, signer):
    dg1, dg2, sod = _document(photo, signer)
    forged = bytearray(sod)
    at = sod.rfind(b"\x04\x82\x01\x00") + 10  # inside the 256-byte RSA signature octet string
    forged[at] ^= 0xFF
    with pytest.raises(IdentityError, match="signature does not verify"):
        ChipDocumentSource(dg1, dg2, bytes(forged), (csca.cert,)).reference()


@pytest.mark.parametrize("cut", [1, 10, 200, -1])
def test_truncated_and_garbage_input_is_refused_with_a_reason(photo, csca, signer, cut):
    dg1, dg2, sod = _document(photo, signer)
    with pytest.raises(DocumentError) as err:
        parse_dg2(dg2[:cut])
    assert "DG2" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DocumentError, match="^SOD"):
        passive_authentication(sod[:cut], {2: dg2}, [csca.cert])
    for garbage in (b"\x00" * 50, b"\x75\x84\xff\xff\xff\xff", bytes(range(256))):
        with pytest.raises(DocumentError):
            parse_dg2(garbage)
        with pytest.raises(DocumentError):
            passive_authentication(garbage, {2: dg2}, [csca.cert])


def test_oversized_image_dimensions_are_refused_before_decoding(photo):
    ok, data = cv2.imencode(".jpg", photo)
    with pytest.raises(DocumentError, match="facial record header gives 30000x250"):
        parse_dg2(build_dg2(data.tobytes(), "jpeg", 30000, 250))
    big = bytearray(data.tobytes())  # the JPEG's own frame header claims 40000 pixels wide
    sof = big.find(b"\xff\xc0")
    big[sof + 7:sof + 9] = (40000).to_bytes(2, "big")
    with pytest.raises(DocumentError, match="image header gives 40000x250"):
        parse_dg2(build_dg2(bytes(big), "jpeg", 250, 250))
    with pytest.raises(DocumentError, match="over the .*-byte limit"):
        parse_dg2(build_dg2(b"\xff\xd8" + bytes(600_000), "jpeg", 250, 250))
    with pytest.raises(DocumentError, match="facial record claims"):
        parse_dg2(tlv(0x75, tlv(0x7F61, tlv(0x7F60, tlv(0x5F2E, b"FAC\x00" + bytes(60))))))


def test_csca_list_from_a_folder_of_pem_and_der(tmp_path, csca):
    other = make_csca("Second CSCA")
    (tmp_path / "a.pem").write_bytes(csca.pem() + other.pem())
    (tmp_path / "b.der").write_bytes(other.cert.public_bytes(serialization.Encoding.DER))
    assert len(load_csca_list([tmp_path])) == 3
    (tmp_path / "c.pem").write_text("not a certificate")
    with pytest.raises(DocumentError, match="c.pem is not a readable"):
        load_csca_list([tmp_path])


def _handover(tmp_path, key, photo_bytes, **changes):
    statement = sign_statement(key, "vneid", "VNEID-7f3a91c2", "Trần Thị Bình", photo_bytes)
    statement.update(changes)
    (tmp_path / "photo.jpg").write_bytes(photo_bytes)
    (tmp_path / "statement.json").write_text(json.dumps(statement, ensure_ascii=False), encoding="utf-8")
    return tmp_path / "photo.jpg", tmp_path / "statement.json"


def test_provider_hand_over(tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "vneid.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    trusted = load_provider_key(pub)
    photo_bytes = require(PHOTO).read_bytes()
    ref = ProviderFileSource(*_handover(tmp_path, key, photo_bytes), trusted).reference()
    assert (ref.subject_id, ref.display_name, ref.source) == ("VNEID-7f3a91c2", "Trần Thị Bình", "provider:vneid")
    assert ref.image.shape == (250, 250, 3)
    with pytest.raises(IdentityError, match="signature does not verify"):
        ProviderFileSource(*_handover(tmp_path, key, photo_bytes, display_name="Someone Else"), trusted).reference()
    with pytest.raises(IdentityError, match="signature does not verify"):
        ProviderFileSource(*_handover(tmp_path, Ed25519PrivateKey.generate(), photo_bytes), trusted).reference()
    photo_path, statement = _handover(tmp_path, key, photo_bytes)
    photo_path.write_bytes(require(LFW_IMAGES / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg").read_bytes())
    with pytest.raises(IdentityError, match="sha256 differs"):
        ProviderFileSource(photo_path, statement, trusted).reference()
    statement.write_text("{not json")
    with pytest.raises(IdentityError, match="not JSON"):
        ProviderFileSource(photo_path, statement, trusted).reference()
