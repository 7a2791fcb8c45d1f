"""Content credentials: a JPEG signed here (a local CA and leaf made here, ES256, no time-stamp authority, no
network) with an action declaring a generative-AI source is read back, through the function and through
predict.py run as a user runs it; a file without a manifest, a tampered one and a corrupt one are reported,
never raised."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from deepfake_platform.credentials import describe_credentials, read_credentials, read_credentials_path
from tests.factories import encoded, tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def certificate_chain() -> tuple[bytes, bytes]:
    """A leaf certificate and its CA (PEM, leaf first) and the leaf's private key, with the extensions c2pa-rs
    requires of a signer: CA:FALSE, digitalSignature, emailProtection, the issuer's key id, an O= name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Deepfake platform tests")])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    def build(subject: str, issuer: x509.Name, public_key, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(usage(sign=not ca, ca=ca), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
        if not ca:
            builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("Test CA", name("Test CA"), ca_key.public_key(), ca_key, ca=True)
    leaf = build("Test signer", ca.subject, leaf_key.public_key(), ca_key, ca=False)
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return chain, key


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    import c2pa

    plain = encoded(Image.fromarray(skimage.data.astronaut()).resize((256, 256)), "JPEG")
    chain, key = certificate_chain()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=b"es256", sign_cert=chain, private_key=key, ta_url=None))
    manifest = {"claim_generator_info": [{"name": "test-generator", "version": "1.0"}], "title": "generated.jpg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": TRAINED}]}}]}
    signed = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, "image/jpeg", io.BytesIO(plain), signed)
    tampered = bytearray(signed.getvalue())
    for i in range(len(tampered) - 600, len(tampered) - 590):  # inside the image data the manifest hashes
        tampered[i] ^= 0xFF
    return {"plain": plain, "signed": signed.getvalue(), "tampered": bytes(tampered)}


def test_a_signed_image_declaring_generative_ai_reads_back(jpegs, tmp_path):
    credentials = read_credentials(jpegs["signed"], "image/jpeg")
    assert credentials["present"] is True and credentials["valid"] is True
    assert credentials["validation_state"] == "Valid"  # no trust anchors configured: valid, not trusted
    assert credentials["claim_generator"] == "test-generator 1.0"
    assert credentials["generative_ai"] is True and credentials["digital_source_types"] == ["trainedAlgorithmicMedia"]
    (tmp_path / "signed.jpg").write_bytes(jpegs["signed"])
    assert read_credentials_path(tmp_path / "signed.jpg") == credentials
    assert describe_credentials(credentials).startswith("content credentials by test-generator 1.0: valid")


def test_no_manifest_a_tampered_one_and_a_corrupt_file_are_answers_not_errors(jpegs):
    plain = read_credentials(jpegs["plain"], "image/jpeg")
    assert plain["present"] is False and plain["valid"] is None and plain["note"] is None
    tampered = read_credentials(jpegs["tampered"], "image/jpeg")
    assert tampered["present"] is True and tampered["valid"] is False and tampered["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in tampered["validation_failures"]
    assert "INVALID" in describe_credentials(tampered)
    corrupt = read_credentials(b"not a jpeg at all", "image/jpeg")
    assert corrupt["present"] is False and "could not be read" in corrupt["note"]
    unsupported = read_credentials(jpegs["signed"], "application/x-unknown")
    assert unsupported["present"] is False and "not a format" in unsupported["note"]


def test_predict_py_reports_the_credentials_beside_the_verdict(jpegs, tmp_path):
    (tmp_path / "signed.jpg").write_bytes(jpegs["signed"])
    checkpoint = tiny_checkpoint(tmp_path / "whole.pth", 0.5)
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "predict.py"), str(tmp_path / "signed.jpg"), "--checkpoint",
         str(checkpoint), "--json", str(tmp_path / "v.json")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "content credentials by test-generator 1.0: valid (Valid), declares a generative-AI source" in result.stdout
    (answer,) = json.loads((tmp_path / "v.json").read_text())
    assert answer["verdict"] in ("fake", "real")  # the model's own verdict, beside the credentials
    assert answer["credentials"]["generative_ai"] is True and answer["credentials"]["valid"] is True
