"""Streaming AES-256-GCM encryption of model artifacts (format ``KMAASENC`` v1).

Public API (stable; the model loader codes against it)::

    Keyring.from_dir(path) -> Keyring            # mounted Secret: key-<id> files + `active`
    keyring.active_id -> str
    keyring.key(key_id) -> bytes                 # UnknownKeyError if absent
    encrypt_file(src, dst, *, key, key_id, model, version, chunk_size=DEFAULT_CHUNK_SIZE)
    decrypt_file(src, dst, *, keyring, model, version, expect=None)  # key id comes from the header
    verify_file(src, *, keyring, model, version, expect=None)        # decrypt_file without output
    read_header(path) -> ArtifactHeader                  # structural parse + checksum, no key
    manifest_mac(artifact, document, *, key) -> bytes    # binds a manifest to the artifact
    with open_artifact(src, *, keyring, model, version) as artifact:   # header checked, file kept open
        artifact.verify_manifest(document, mac)          # ManifestTamperedError
        artifact.decrypt_to(dst)                         # or .decrypt_into(fd), .verify()

``encrypt_file`` returns a :class:`PlaintextDigest` (sha256 and size of the plaintext, for the
manifest); ``decrypt_file`` and ``verify_file`` return the verified :class:`ArtifactHeader`.
Callers may ignore both. Given ``expect`` (a manifest's :class:`PlaintextDigest`), decryption also
hashes the plaintext as it streams by and refuses a mismatch with ``PlaintextMismatchError``. The
model loader does not need that hash: it checks the manifest's MAC instead (``manifest_mac``:
HMAC-SHA256 under a key derived from the artifact's key and salt, over the header checksum and the
manifest's bytes), which proves every manifest field, sha256 included, is the publisher's record of
this very file, and the chunks' GCM tags prove the plaintext is the one encrypted (docs/runtime-contract.md).

Both write ``dst`` atomically: output goes to a temporary file in ``dst``'s directory, is
fsynced, and is renamed onto ``dst`` only after the whole stream was processed and, for
decryption, every chunk verified. A refused artifact leaves no output file. Chunks are sealed
and opened on up to four worker threads at once; memory stays a small constant number of chunks
whatever the file size (at most three per worker: 24 MiB with the default chunk size on two
cores, 48 MiB from four cores up).

The package, one idea a module: ``format`` (the file layout: header and chunk framing), ``keys``
(key derivation, header and manifest MACs), ``stream`` (sealing and opening the chunks), ``pipeline``
(parallel chunk I/O), ``files`` (the file-level functions above).

Error classes (all :class:`ArtifactIntegrityError`): ``BadHeaderError`` (not an artifact,
corrupted header, ``UnsupportedFormatError``, ``HeaderTamperedError``), ``UnknownKeyError``,
``WrongKeyError``, ``BindingMismatchError``, ``TruncatedArtifactError``,
``ExtendedArtifactError``, ``TamperedChunkError`` (``.index``), ``ChunkOrderError``
(``.index``, ``.found``), ``ManifestTamperedError`` and ``PlaintextMismatchError`` (``.actual``).
"""

from kubemaas.runtime.crypto.files import (
    OpenedArtifact,
    decrypt_file,
    encrypt_file,
    manifest_mac,
    open_artifact,
    verify_file,
)
from kubemaas.runtime.crypto.format import DEFAULT_CHUNK_SIZE, MAGIC, ArtifactHeader, read_header
from kubemaas.runtime.crypto.stream import PlaintextDigest
from kubemaas.runtime.errors import (
    ArtifactIntegrityError,
    BadHeaderError,
    BindingMismatchError,
    ChunkOrderError,
    ExtendedArtifactError,
    HeaderTamperedError,
    KeyringError,
    ManifestTamperedError,
    PlaintextMismatchError,
    TamperedChunkError,
    TruncatedArtifactError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
)
from kubemaas.runtime.keyring import Keyring

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAGIC",
    "ArtifactHeader",
    "ArtifactIntegrityError",
    "BadHeaderError",
    "BindingMismatchError",
    "ChunkOrderError",
    "ExtendedArtifactError",
    "HeaderTamperedError",
    "Keyring",
    "KeyringError",
    "ManifestTamperedError",
    "OpenedArtifact",
    "PlaintextDigest",
    "PlaintextMismatchError",
    "TamperedChunkError",
    "TruncatedArtifactError",
    "UnknownKeyError",
    "UnsupportedFormatError",
    "WrongKeyError",
    "decrypt_file",
    "encrypt_file",
    "manifest_mac",
    "open_artifact",
    "read_header",
    "verify_file",
]
