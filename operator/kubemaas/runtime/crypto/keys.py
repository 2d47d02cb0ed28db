"""Key derivation: every key an artifact uses, derived from the master key and the file's salt.

One HKDF-SHA256 expansion of the master key with the per-file salt gives the chunk key, the header
MAC key and the key commitment, so each file has its own data key and GCM nonces can never repeat
across files. The manifest MAC key is a separate HKDF-SHA256 output (same key and salt, its own
info); the manifest MAC is HMAC-SHA256 over ``"KMAASENC/manifest/v1" || checksum || document``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_HKDF_INFO = b"KMAASENC/v1 enc-key mac-key commitment"
_HKDF_MANIFEST_INFO = b"KMAASENC/v1 manifest-mac"
_MANIFEST_MAC_LABEL = b"KMAASENC/manifest/v1"


@dataclass(frozen=True)
class FileKeys:
    enc: AESGCM
    mac_key: bytes
    commitment: bytes


def derive_file_keys(key: bytes, salt: bytes) -> FileKeys:
    material = HKDF(algorithm=hashes.SHA256(), length=96, salt=salt, info=_HKDF_INFO).derive(key)
    return FileKeys(enc=AESGCM(material[:32]), mac_key=material[32:64], commitment=material[64:])


def hmac_sha256(mac_key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(mac_key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def derive_manifest_key(key: bytes, salt: bytes) -> bytes:
    # Its own HKDF label: never equal to the chunk, header-MAC or commitment keys of any file.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_MANIFEST_INFO).derive(key)


def manifest_mac_of(manifest_key: bytes, checksum: bytes, document: bytes) -> bytes:
    """The manifest MAC over ``document``, bound to the artifact whose header checksum is ``checksum``."""
    # Label and header checksum have fixed lengths, so the input splits one way only.
    return hmac_sha256(manifest_key, _MANIFEST_MAC_LABEL + checksum + document)
