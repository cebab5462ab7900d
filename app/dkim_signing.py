"""DKIM signatures on outgoing mail (RFC 6376; Ed25519 per RFC 8463).

RFC 8058 section 4: a receiver honours one-click unsubscribe only when a valid
DKIM signature covers ``List-Unsubscribe`` and ``List-Unsubscribe-Post``. With
``DKIM_DOMAIN``, ``DKIM_SELECTOR`` and ``DKIM_PRIVATE_KEY`` (a PEM file) set,
every mail is signed here, relaxed/relaxed, over the headers below. Without
them mail goes out unsigned and the relay must sign those two headers.

Headers that a forger would add to change what the reader sees (a second From,
Subject or unsubscribe URL) are listed once more than they appear ("over-signed"):
the signature then breaks if one is added on the way.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Language",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
OVERSIGNED = ("From", "Subject", "List-Unsubscribe", "List-Unsubscribe-Post")
MIN_RSA_BITS = 2048


class DkimKeyError(ValueError):
    """The private key file cannot be used for signing."""


class DkimSigner:
    def __init__(self, domain: str, selector: str, key_path: str) -> None:
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        try:
            pem = Path(key_path).read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise DkimKeyError(f"DKIM_PRIVATE_KEY {key_path!r} is not a readable, unencrypted PEM key") from exc
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise DkimKeyError(f"DKIM_PRIVATE_KEY is RSA-{key.key_size}; use at least {MIN_RSA_BITS} bits")
            self.algorithm = b"rsa-sha256"
            # dkimpy reads an RSA key as PKCS#1 PEM.
            self.key = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            self.algorithm = b"ed25519-sha256"
            # dkimpy reads an Ed25519 key as the base64 of its 32-byte seed.
            raw = key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            self.key = base64.b64encode(raw)
        else:
            raise DkimKeyError("DKIM_PRIVATE_KEY must be an RSA or an Ed25519 key")
        self.headers = [h.lower().encode("ascii") for h in (*SIGNED_HEADERS, *OVERSIGNED)]

    def sign(self, message: bytes) -> bytes:
        """The message with its ``DKIM-Signature`` header first."""
        signature = dkim.sign(
            message,
            self.selector,
            self.domain,
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=self.algorithm,
            include_headers=self.headers,
        )
        return signature + message


def generate_key(kind: str = "rsa") -> tuple[bytes, str]:
    """A new private key (PEM, PKCS#8) and the ``p=`` and ``k=`` of its DNS record."""
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        tags = f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode('ascii')}"
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tags = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode('ascii')}"
    else:
        raise ValueError(f"unknown key type {kind!r}")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, tags


def txt_record(selector: str, domain: str, tags: str) -> str:
    """The zone-file line to publish; strings over 255 characters are split, as DNS requires."""
    chunks = [tags[i : i + 255] for i in range(0, len(tags), 255)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"


def write_private_key(path: Path, pem: bytes) -> None:
    """Create the key file readable by its owner only; never overwrite an existing key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new folder: for the service only
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
