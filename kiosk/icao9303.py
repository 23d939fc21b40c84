"""ICAO Doc 9303 chip data (what the Vietnamese chip ID card, CCCD, follows): the face in DG2,
the MRZ in DG1, and passive authentication of both against EF.SOD.

Passive authentication is what makes a chip photo a reference worth verifying a traveller
against: the issuing state's document signer (DS) signed the hashes of every data group, and
the DS certificate is signed by that state's CSCA. So a photo that was swapped (hash
mismatch), a SOD signed by anyone else (no chain to a configured CSCA) or a DS certificate
outside its validity is refused before a single pixel is decoded.

CMS and X.509 are parsed by asn1crypto and signatures checked by `cryptography` (RSA
PKCS#1 v1.5, RSA-PSS, ECDSA); only the ISO 7816 BER-TLV wrapping of DG1/DG2, which no library
here covers, is walked by hand, bounded by the buffer. Not done: active/chip authentication
(needs the card), CSCA master lists (CMS-wrapped lists: load the certificates out of them),
CRLs, ECDSA "plain" signatures (BSI TR-03111).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vision.image_io import ImageError, decode_image

LDS_SECURITY_OBJECT_OID = "2.23.136.1.1.1"
# An ICAO portrait is ~15-30 KB at ~480x640; the bounds refuse a decompression bomb or a
# runaway length long before the decoder sees it.
MAX_IMAGE_BYTES = 512 * 1024
MAX_IMAGE_SIDE = 2000
MAX_DG_BYTES = 1 << 20
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512}


class DocumentError(ValueError):
    """A data group or SOD that is malformed or fails passive authentication; names what."""


# ----- LDS security object (ICAO 9303 part 10), which asn1crypto does not define -----------

class DataGroupHash(core.Sequence):
    _fields = [("data_group_number", core.Integer), ("data_group_hash_value", core.OctetString)]


class DataGroupHashValues(core.SequenceOf):
    _child_spec = DataGroupHash


class LDSVersionInfo(core.Sequence):
    _fields = [("lds_version", core.PrintableString), ("unicode_version", core.PrintableString)]


class LDSSecurityObject(core.Sequence):
    _fields = [("version", core.Integer), ("hash_algorithm", algos.DigestAlgorithm),
               ("data_group_hash_values", DataGroupHashValues),
               ("lds_version_info", LDSVersionInfo, {"optional": True})]


# ----- ISO 7816 BER-TLV, only as far as DG1/DG2 need -------------------------------------

def _tlv(buf: bytes, pos: int, end: int, where: str) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at `pos`, never reading past `end`."""
    if pos >= end:
        raise DocumentError(f"{where}: data ends where a tag was expected")
    start = pos
    tag = buf[pos]
    pos += 1
    if tag & 0x1F == 0x1F:
        while True:
            if pos >= end or pos - start >= 3:
                raise DocumentError(f"{where}: tag at byte {start} is cut off or longer than 3 bytes")
            tag = (tag << 8) | buf[pos]
            pos += 1
            if not buf[pos - 1] & 0x80:
                break
    if pos >= end:
        raise DocumentError(f"{where}: tag {tag:X} has no length")
    first = buf[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif 0x81 <= first <= 0x84:
        n = first - 0x80
        if pos + n > end:
            raise DocumentError(f"{where}: length of tag {tag:X} is cut off")
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    else:
        raise DocumentError(f"{where}: tag {tag:X} has an invalid length byte {first:#04x}")
    if pos + length > end:
        raise DocumentError(f"{where}: tag {tag:X} claims {length} bytes, only {end - pos} remain (truncated)")
    return tag, pos, pos + length


def _children(buf: bytes, start: int, end: int, where: str) -> dict[int, tuple[int, int]]:
    """First occurrence of each child tag inside a constructed value."""
    out: dict[int, tuple[int, int]] = {}
    pos = start
    while pos < end:
        tag, vs, ve = _tlv(buf, pos, end, where)
        out.setdefault(tag, (vs, ve))
        pos = ve
    return out


def _outer(data: bytes, tag: int, name: str) -> tuple[int, int]:
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DocumentError(f"{name}: empty")
    if len(data) > MAX_DG_BYTES:
        raise DocumentError(f"{name}: {len(data)} bytes is over the {MAX_DG_BYTES}-byte limit")
    got, vs, ve = _tlv(data, 0, len(data), name)
    if got != tag:
        raise DocumentError(f"{name}: starts with tag {got:X}, expected {tag:X}")
    return vs, ve


# ----- DG2: the face -----------------------------------------------------------------------

@dataclass(frozen=True)
class FaceImage:
    image_format: str  # "jpeg" | "jpeg2000"
    width: int
    height: int
    data: bytes  # the encoded image, as stored on the chip

    def decode(self) -> np.ndarray:
        try:
            img = decode_image(self.data, f"DG2 {self.image_format} image")
        except ImageError as exc:
            raise DocumentError(str(exc)) from exc
        if img.shape[:2] != (self.height, self.width):
            raise DocumentError(f"DG2: image decodes to {img.shape[1]}x{img.shape[0]}, its header says "
                                f"{self.width}x{self.height}")
        return img


def _image_header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from the image's own header, read without decoding it."""
    if fmt == "jpeg":
        if data[:2] != b"\xff\xd8":
            raise DocumentError("DG2: image data is not a JPEG (no SOI marker)")
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                raise DocumentError(f"DG2: JPEG marker expected at byte {pos}")
            marker = data[pos + 1]
            seg = int.from_bytes(data[pos + 2:pos + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                if pos + 9 > len(data):
                    break
                return int.from_bytes(data[pos + 7:pos + 9], "big"), int.from_bytes(data[pos + 5:pos + 7], "big")
            pos += 2 + seg
        raise DocumentError("DG2: JPEG has no frame header (truncated)")
    if data[:4] == b"\xff\x4f\xff\x51":  # raw JPEG 2000 codestream: SIZ follows SOC
        if len(data) < 24:
            raise DocumentError("DG2: JPEG 2000 codestream is truncated")
        xs, ys, xo, yo = (int.from_bytes(data[8 + 4 * i:12 + 4 * i], "big") for i in range(4))
        return xs - xo, ys - yo
    pos = 0
    while pos + 8 <= len(data):  # JP2 boxes: the image header box is inside the jp2h superbox
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"jp2h":
            pos += 8
            continue
        if kind == b"ihdr":
            if pos + 16 > len(data):
                break
            return int.from_bytes(data[pos + 12:pos + 16], "big"), int.from_bytes(data[pos + 8:pos + 12], "big")
        if size < 8:
            break
        pos += size
    raise DocumentError("DG2: JPEG 2000 image has no image header (truncated or not JPEG 2000)")


def parse_facial_record(bdb: bytes) -> FaceImage:
    """ISO/IEC 19794-5 facial record ('FAC\\0'): the first face's image, bounds checked."""
    if len(bdb) < 14 or bdb[:4] != b"FAC\x00":
        raise DocumentError("DG2: biometric data block is not an ISO/IEC 19794-5 facial record ('FAC\\0')")
    record_len = int.from_bytes(bdb[8:12], "big")
    faces = int.from_bytes(bdb[12:14], "big")
    if record_len > len(bdb) or faces < 1:
        raise DocumentError(f"DG2: facial record claims {record_len} bytes and {faces} face(s); "
                            f"it holds {len(bdb)} bytes")
    pos = 14
    if pos + 20 > record_len:
        raise DocumentError("DG2: facial information block is truncated")
    block_len = int.from_bytes(bdb[pos:pos + 4], "big")
    points = int.from_bytes(bdb[pos + 4:pos + 6], "big")
    img_info = pos + 20 + 8 * points
    end = pos + block_len
    if end > record_len or img_info + 12 > end:
        raise DocumentError(f"DG2: facial block of {block_len} bytes with {points} feature points does not fit")
    data_type = bdb[img_info + 1]
    width = int.from_bytes(bdb[img_info + 2:img_info + 4], "big")
    height = int.from_bytes(bdb[img_info + 4:img_info + 6], "big")
    fmt = {0: "jpeg", 1: "jpeg2000"}.get(data_type)
    if fmt is None:
        raise DocumentError(f"DG2: image data type {data_type} is neither JPEG (0) nor JPEG 2000 (1)")
    data = bytes(bdb[img_info + 12:end])
    if not data:
        raise DocumentError("DG2: the facial record holds no image data")
    if len(data) > MAX_IMAGE_BYTES:
        raise DocumentError(f"DG2: image of {len(data)} bytes is over the {MAX_IMAGE_BYTES}-byte limit")
    for w, h, what in ((width, height, "facial record header"), (*_image_header_size(data, fmt), "image header")):
        if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
            raise DocumentError(f"DG2: {what} gives {w}x{h} pixels, outside 1..{MAX_IMAGE_SIDE} per side")
    return FaceImage(fmt, width, height, data)


def parse_dg2(dg2: bytes) -> FaceImage:
    """DG2 (tag 75) -> biometric information group template (7F61) -> first template (7F60)
    -> biometric data block (5F2E, or 7F2E) -> facial record -> image."""
    vs, ve = _outer(dg2, 0x75, "DG2")
    group = _children(dg2, vs, ve, "DG2").get(0x7F61)
    if group is None:
        raise DocumentError("DG2: no biometric information group template (7F61)")
    template = _children(dg2, *group, "DG2 7F61").get(0x7F60)
    if template is None:
        raise DocumentError("DG2: no biometric information template (7F60)")
    inner = _children(dg2, *template, "DG2 7F60")
    bdb = inner.get(0x5F2E) or inner.get(0x7F2E)
    if bdb is None:
        raise DocumentError("DG2: no biometric data block (5F2E/7F2E)")
    return parse_facial_record(dg2[bdb[0]:bdb[1]])


# ----- DG1: the MRZ ------------------------------------------------------------------------

@dataclass(frozen=True)
class MrzData:
    document_code: str
    issuing_state: str
    document_number: str
    name: str  # transliterated MRZ name, "NGUYEN VAN AN" (diacritics are not in an MRZ)


def _check_digit(text: str) -> int:
    values = [int(c) if c.isdigit() else (ord(c) - 55 if c.isalpha() else 0) for c in text]
    return sum(v * (7, 3, 1)[i % 3] for i, v in enumerate(values)) % 10


def parse_dg1(dg1: bytes) -> MrzData:
    vs, ve = _outer(dg1, 0x61, "DG1")
    mrz = _children(dg1, vs, ve, "DG1").get(0x5F1F)
    if mrz is None:
        raise DocumentError("DG1: no MRZ (5F1F)")
    text = dg1[mrz[0]:mrz[1]].decode("ascii", "replace")
    if len(text) == 90:  # TD1, the ID-card format (CCCD)
        number, check, name = text[5:14], text[14], text[60:90]
    elif len(text) in (72, 88):  # TD2, TD3 (passport)
        half = len(text) // 2
        number, check, name = text[half:half + 9], text[half + 9], text[5:half]
    else:
        raise DocumentError(f"DG1: MRZ of {len(text)} characters is not TD1 (90), TD2 (72) or TD3 (88)")
    if not check.isdigit() or _check_digit(number) != int(check):
        raise DocumentError(f"DG1: document number {number!r} fails its check digit {check!r}")
    surname, _, given = name.rstrip("<").partition("<<")
    return MrzData(document_code=text[0:2].rstrip("<"), issuing_state=text[2:5].rstrip("<"),
                   document_number=number.rstrip("<"),
                   name=" ".join(p for p in (surname.replace("<", " "), given.replace("<", " ")) if p).strip())


# ----- passive authentication --------------------------------------------------------------

def load_csca_list(paths: Iterable[Path]) -> list[x509.Certificate]:
    """CSCA certificates from files and folders of PEM (one or several per file) or DER."""
    certs: list[x509.Certificate] = []
    for path in (Path(p) for p in paths):
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                data = f.read_bytes()
                certs += (x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                          else [x509.load_der_x509_certificate(data)])
            except (OSError, ValueError) as exc:
                raise DocumentError(f"CSCA list: {f} is not a readable PEM or DER certificate: {exc}") from exc
    if not certs:
        raise DocumentError("CSCA list: no certificate found in " + ", ".join(str(p) for p in paths))
    return certs


@dataclass(frozen=True)
class PassiveAuthentication:
    hash_algorithm: str
    data_groups: tuple[int, ...]  # the data groups whose hashes were checked
    signature_algorithm: str
    document_signer: str  # DS subject, RFC 4514
    csca: str  # the CSCA subject it chains to


def _signed_attrs_der(signer: cms.SignerInfo) -> bytes:
    # The signature covers the attributes' DER with the universal SET tag, not the [0] tag
    # they are stored under (RFC 5652 section 5.4).
    der = signer["signed_attrs"].dump()
    return b"\x31" + der[1:]


def _verify_signature(cert: x509.Certificate, signer: cms.SignerInfo, message: bytes) -> str:
    sig_alg = signer["signature_algorithm"]
    algo = sig_alg.signature_algo
    signature = signer["signature"].native
    key = cert.public_key()
    digest_name = signer["digest_algorithm"]["algorithm"].native
    try:
        if algo == "rsassa_pss":
            params = sig_alg["parameters"]
            h = _HASHES[params["hash_algorithm"]["algorithm"].native]()
            mgf_h = _HASHES[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
            if not isinstance(key, rsa.RSAPublicKey):
                raise DocumentError("SOD: RSA-PSS signature but the document signer key is not RSA")
            key.verify(signature, message, padding.PSS(padding.MGF1(mgf_h), params["salt_length"].native), h)
        elif algo == "rsassa_pkcs1v15":
            if not isinstance(key, rsa.RSAPublicKey):
                raise DocumentError("SOD: RSA signature but the document signer key is not RSA")
            key.verify(signature, message, padding.PKCS1v15(), _HASHES[_sig_hash(sig_alg, digest_name)]())
        elif algo == "ecdsa":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise DocumentError("SOD: ECDSA signature but the document signer key is not EC")
            key.verify(signature, message, ec.ECDSA(_HASHES[_sig_hash(sig_alg, digest_name)]()))
        else:
            raise DocumentError(f"SOD: signature algorithm {algo!r} is not supported")
    except KeyError as exc:
        raise DocumentError(f"SOD: hash algorithm {exc.args[0]!r} is not supported") from exc
    except InvalidSignature as exc:
        raise DocumentError("SOD: the signature does not verify with the document signer certificate") from exc
    return algo


def _sig_hash(sig_alg: algos.SignedDigestAlgorithm, digest_name: str) -> str:
    try:
        return sig_alg.hash_algo
    except ValueError:  # plain rsaEncryption / ecPublicKey: the digest algorithm says
        return digest_name


def _signer_certificate(signed: cms.SignedData, signer: cms.SignerInfo) -> x509.Certificate:
    sid = signer["sid"]
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            if (cert.issuer == sid.chosen["issuer"]
                    and cert.serial_number == sid.chosen["serial_number"].native):
                return x509.load_der_x509_certificate(cert.dump())
        elif cert.key_identifier == sid.chosen.native:
            return x509.load_der_x509_certificate(cert.dump())
    raise DocumentError("SOD: the document signer certificate is not in the SOD")


def _chain(ds: x509.Certificate, cscas: list[x509.Certificate], now: dt.datetime) -> x509.Certificate:
    if not ds.not_valid_before_utc <= now <= ds.not_valid_after_utc:
        raise DocumentError(f"SOD: document signer certificate valid {ds.not_valid_before_utc:%Y-%m-%d} to "
                            f"{ds.not_valid_after_utc:%Y-%m-%d}, not on {now:%Y-%m-%d} (expired or not yet valid)")
    for csca in cscas:
        if csca.subject != ds.issuer:
            continue
        try:
            ds.verify_directly_issued_by(csca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not csca.not_valid_before_utc <= now <= csca.not_valid_after_utc:
            raise DocumentError(f"SOD: CSCA {csca.subject.rfc4514_string()} is outside its validity on {now:%Y-%m-%d}")
        try:
            if not csca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                continue
        except x509.ExtensionNotFound:
            continue
        return csca
    raise DocumentError(f"SOD: document signer {ds.subject.rfc4514_string()} does not chain to any configured "
                        f"CSCA (issuer {ds.issuer.rfc4514_string()})")


def passive_authentication(sod: bytes, data_groups: dict[int, bytes], cscas: list[x509.Certificate],
                           now: dt.datetime | None = None) -> PassiveAuthentication:
    """Check EF.SOD: every presented data group's hash, the signature over the hashes, and
    the document signer's chain to a CSCA. Raises DocumentError naming the first failure."""
    now = now or dt.datetime.now(dt.timezone.utc)
    vs, ve = _outer(sod, 0x77, "SOD")
    try:
        info = cms.ContentInfo.load(bytes(sod[vs:ve]), strict=True)
        if info["content_type"].native != "signed_data":
            raise DocumentError(f"SOD: content type {info['content_type'].native!r} is not signed data")
        signed: cms.SignedData = info["content"]
        eci = signed["encap_content_info"]
        if eci["content_type"].dotted != LDS_SECURITY_OBJECT_OID:
            raise DocumentError(f"SOD: encapsulated content {eci['content_type'].dotted} is not an "
                                f"LDS security object")
        econtent = eci["content"].contents
        lds = LDSSecurityObject.load(econtent, strict=True)
        hash_name = lds["hash_algorithm"]["algorithm"].native
        expected = {int(h["data_group_number"].native): h["data_group_hash_value"].native
                    for h in lds["data_group_hash_values"]}
        signers = signed["signer_infos"]
        if len(signers) != 1:
            raise DocumentError(f"SOD: {len(signers)} signer infos, expected exactly one")
        signer = signers[0]
        attrs = {a["type"].native: a["values"] for a in signer["signed_attrs"]} if signer["signed_attrs"] else {}
        digest_name = signer["digest_algorithm"]["algorithm"].native
    except DocumentError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise DocumentError(f"SOD: not a valid CMS SignedData / LDS security object: {exc}") from exc
    if hash_name not in _HASHES or digest_name not in _HASHES:
        raise DocumentError(f"SOD: hash algorithm {hash_name!r}/{digest_name!r} is not supported")
    for number, data in sorted(data_groups.items()):
        if number not in expected:
            raise DocumentError(f"SOD: DG{number} is not listed in the security object")
        if hashlib.new(hash_name, bytes(data)).digest() != expected[number]:
            raise DocumentError(f"SOD: DG{number} hash does not match the security object (data group altered)")
    if "message_digest" not in attrs or "content_type" not in attrs:
        raise DocumentError("SOD: signed attributes lack the content type or message digest")
    if attrs["content_type"][0].dotted != LDS_SECURITY_OBJECT_OID:
        raise DocumentError("SOD: signed content-type attribute is not the LDS security object")
    if attrs["message_digest"][0].native != hashlib.new(digest_name, econtent).digest():
        raise DocumentError("SOD: message digest does not match the security object (SOD altered)")
    ds = _signer_certificate(signed, signer)
    sig_algo = _verify_signature(ds, signer, _signed_attrs_der(signer))
    csca = _chain(ds, cscas, now)
    return PassiveAuthentication(hash_algorithm=hash_name, data_groups=tuple(sorted(data_groups)),
                                 signature_algorithm=sig_algo, document_signer=ds.subject.rfc4514_string(),
                                 csca=csca.subject.rfc4514_string())
