"""Real objects the tests share: tiny detector checkpoints, a tiny ensemble, photographs with texture, free ports."""

from __future__ import annotations

import datetime
import io
import socket
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from deepfake_platform.checkpoints import DetectorCheckpoint, file_sha256, write_checkpoint
from deepfake_platform.config import ExperimentConfig, with_changes
from deepfake_platform.ensemble import (
    Combiner,
    EnsembleSpec,
    MemberSpec,
    save_ensemble,
    save_frequency_member,
)
from models import FrequencyDetector, create_detector, parameter_table


def tiny_record(*, epoch: int = 2, val_auc: float = 0.75, val_threshold: float = 0.5, seed: int = 0,
                detector: str = "hybrid_tiny", **fields) -> DetectorCheckpoint:
    """A real detector checkpoint record of a tiny detector with random weights."""
    torch.manual_seed(seed)
    model = create_detector(detector, pretrained_policy="off")
    config = with_changes(ExperimentConfig(), model={"name": detector, "pretrained": "off"}, data={"image_size": 0})
    return DetectorCheckpoint(
        detector=detector, detector_kwargs=dict(model.detector_kwargs), model_state_dict=model.state_dict(),
        epoch=epoch, val_auc=val_auc, val_threshold=val_threshold, config=config.to_dict(),
        parameters=parameter_table(model), **fields,
    )


def tiny_checkpoint(path: Path, val_threshold: float = 0.5, **fields) -> Path:
    """A tiny detector checkpoint written to `path`."""
    return write_checkpoint(tiny_record(val_threshold=val_threshold, **fields), path)


def frequency_member(path: Path, seed: int = 0) -> Path:
    """A frequency detector written to `path`, fitted on eight photographs: the odd ones sharp (fake), the even
    ones blurred (real)."""
    images = [photo(seed + i, 64) for i in range(8)]
    detector = FrequencyDetector().fit(
        [image if i % 2 else image.resize((16, 16)).resize((64, 64)) for i, image in enumerate(images)],
        [i % 2 for i in range(8)])
    return save_frequency_member(detector, path, val_threshold=0.5, val_auc=0.8)


def tiny_ensemble(path: Path, checkpoint: Path, combiner: Combiner, *, name: str, threshold: float,
                  seed: int = 0) -> Path:
    """An ensemble spec written to `path`: the tiny `checkpoint` ("hybrid") and a `frequency_member` beside
    it ("frequency"), combined by `combiner`."""
    frequency = frequency_member(path.parent / "frequency.pth", seed)
    spec = EnsembleSpec(name, [MemberSpec("hybrid", str(checkpoint), file_sha256(checkpoint)),
                               MemberSpec("frequency", str(frequency), file_sha256(frequency))],
                        combiner, threshold=threshold, val_auc=0.8)
    return save_ensemble(spec, path)


def encoded(image: Image.Image, fmt: str) -> bytes:
    """`image` encoded as `fmt` (JPEG, PNG, ...)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(seed: int, size: int = 96) -> Image.Image:
    """A textured RGB picture: a gradient with noise."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size)[None, :, None] * np.ones((size, 1, 3))
    return Image.fromarray(np.clip(gradient + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def c2pa_certificate_chain() -> tuple[bytes, bytes]:
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


def c2pa_jpegs() -> dict[str, bytes]:
    """A JPEG plain, signed with a C2PA manifest declaring a generative-AI source (a CA and leaf made here, no
    time-stamp authority, no network), and the signed one tampered with inside the hashed image data."""
    import c2pa

    plain = encoded(Image.fromarray(skimage.data.astronaut()).resize((256, 256)), "JPEG")
    chain, key = c2pa_certificate_chain()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=b"es256", sign_cert=chain, private_key=key, ta_url=None))
    manifest = {"claim_generator_info": [{"name": "test-generator", "version": "1.0"}], "title": "generated.jpg",
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [
                    {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA}]}}]}
    signed = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, "image/jpeg", io.BytesIO(plain), signed)
    tampered = bytearray(signed.getvalue())
    for i in range(len(tampered) - 600, len(tampered) - 590):  # inside the image data the manifest hashes
        tampered[i] ^= 0xFF
    return {"plain": plain, "signed": signed.getvalue(), "tampered": bytes(tampered)}
