"""Specimen chip documents: a test CSCA, a document signer and DG1/DG2/EF.SOD built from a photo.

Real CCCD chips cannot be read on this machine, so tests and the demo issue their own
documents the way a state would, with `cryptography` keys and asn1crypto structures, and the
station verifies them through exactly the code a real chip's data goes through. Nothing here
is used to verify anything.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from kiosk.icao9303 import _HASHES, LDS_SECURITY_OBJECT_OID, LDSSecurityObject, _check_digit


def tlv(tag: int, value: bytes) -> bytes:
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return tag_bytes + length + value


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issuer:
    key: PrivateKey
    cert: x509.Certificate

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _name(common: str, country: str = "VN") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key(kind: str) -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def make_csca(common: str = "CSCA Specimen", kind: str = "rsa", days: int = 3650) -> Issuer:
    key = _key(kind)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert)


def make_document_signer(csca: Issuer, common: str = "DS Specimen", kind: str = "rsa",
                         not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Issuer:
    key = _key(kind)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(csca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(csca.key, hashes.SHA256()))
    return Issuer(key, cert)


def build_dg2(image: bytes, image_format: str, width: int, height: int) -> bytes:
    """DG2 holding one ISO/IEC 19794-5 facial record (no feature points)."""
    image_info = bytes([1, 0 if image_format == "jpeg" else 1]) + width.to_bytes(2, "big") + \
        height.to_bytes(2, "big") + bytes([1, 2]) + b"\x00\x00" + b"\x00\x00"
    block = (20 + 12 + len(image)).to_bytes(4, "big") + b"\x00\x00" + bytes(14) + image_info + image
    record = b"FAC\x00" + b"010\x00" + (14 + len(block)).to_bytes(4, "big") + b"\x00\x01" + block
    header = tlv(0xA1, tlv(0x80, b"\x01\x01") + tlv(0x81, b"\x02") + tlv(0x87, b"\x01\x01") + tlv(0x88, b"\x00\x08"))
    template = tlv(0x7F60, header + tlv(0x5F2E, record))
    return tlv(0x75, tlv(0x7F61, tlv(0x02, b"\x01") + template))


def td1_mrz(document_number: str, surname: str, given: str, state: str = "VNM") -> str:
    number = document_number.ljust(9, "<")[:9]
    line1 = ("ID" + state + number + str(_check_digit(number))).ljust(30, "<")
    line2 = "9001015M3012315" + state + "<" * 11 + "0"
    line3 = (surname.replace(" ", "<") + "<<" + given.replace(" ", "<")).ljust(30, "<")[:30]
    return line1 + line2 + line3


def build_dg1(mrz: str) -> bytes:
    return tlv(0x61, tlv(0x5F1F, mrz.encode("ascii")))


def build_sod(data_groups: dict[int, bytes], signer: Issuer, hash_name: str = "sha256", scheme: str = "pkcs1") -> bytes:
    """EF.SOD: an LDS security object over the data groups, CMS-signed by `signer`."""
    lds = LDSSecurityObject({
        "version": 0, "hash_algorithm": {"algorithm": hash_name},
        "data_group_hash_values": [{"data_group_number": n, "data_group_hash_value": hashlib.new(hash_name, d).digest()}
                                   for n, d in sorted(data_groups.items())]})
    econtent = lds.dump()
    attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": [LDS_SECURITY_OBJECT_OID]}),
        cms.CMSAttribute({"type": "message_digest", "values": [hashlib.new(hash_name, econtent).digest()]}),
    ])
    h = _HASHES[hash_name]()
    to_sign = attrs.dump()
    key = signer.key
    if isinstance(key, ec.EllipticCurvePrivateKey) != (scheme == "ecdsa"):
        raise ValueError(f"scheme {scheme!r} does not fit a {type(key).__name__}")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(to_sign, ec.ECDSA(h))
        sig_alg: dict = {"algorithm": f"{hash_name}_ecdsa"}
    elif scheme == "pss":
        sig = key.sign(to_sign, padding.PSS(padding.MGF1(h), h.digest_size), h)
        sig_alg = {"algorithm": "rsassa_pss", "parameters": {
            "hash_algorithm": {"algorithm": hash_name},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": hash_name}},
            "salt_length": h.digest_size, "trailer_field": "trailer_field_bc"}}
    else:
        sig = key.sign(to_sign, padding.PKCS1v15(), h)
        sig_alg = {"algorithm": f"{hash_name}_rsa"}
    cert = asn1_x509.Certificate.load(signer.cert.public_bytes(serialization.Encoding.DER))
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": {"issuer": cert.issuer,
                                                                  "serial_number": cert.serial_number}}),
        "digest_algorithm": {"algorithm": hash_name}, "signed_attrs": attrs, "signature_algorithm": sig_alg,
        "signature": sig})
    signed = cms.SignedData({
        "version": "v3", "digest_algorithms": [{"algorithm": hash_name}],
        "encap_content_info": {"content_type": LDS_SECURITY_OBJECT_OID, "content": econtent},
        "certificates": [cert], "signer_infos": [signer_info]})
    return tlv(0x77, cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


def specimen_bcbp(surname: str, given: str, pnr: str, from_airport: str, to_airport: str, carrier: str,
                  flight_number: str, flight_date: dt.date, seat: str, sequence: int) -> str:
    """A one-leg BCBP (Resolution 792, format 'M') as a check-in system prints it, with no
    conditional block; devices.bcbp.parse_bcbp reads it back field by field."""
    name = f"{surname}/{given}".upper()[:20]
    return ("M1" + name.ljust(20) + "E" + pnr.ljust(7) + from_airport + to_airport + carrier.ljust(3)
            + flight_number.rjust(4, "0").ljust(5) + f"{flight_date.timetuple().tm_yday:03d}" + "Y"
            + seat.rjust(4, "0") + f"{sequence:04d} " + "1" + "00")


def write_chip_handover(inbox: Path, signer: Issuer, photo_jpeg: bytes, width: int, height: int,
                        document_number: str, surname: str, given: str, display_name: str) -> Path:
    """What a chip reader leaves in the station's inbox after reading a card (kiosk.inbox):
    DG1, DG2 and an EF.SOD signed by `signer`, the holder's name, and READY written last."""
    dg1 = build_dg1(td1_mrz(document_number, surname.upper(), given.upper()))
    dg2 = build_dg2(photo_jpeg, "jpeg", width, height)
    folder = Path(inbox) / document_number
    folder.mkdir(parents=True)
    for name, data in (("dg1.bin", dg1), ("dg2.bin", dg2), ("sod.bin", build_sod({1: dg1, 2: dg2}, signer))):
        (folder / name).write_bytes(data)
    (folder / "name.txt").write_text(display_name, encoding="utf-8")
    (folder / "READY").touch()
    return folder
