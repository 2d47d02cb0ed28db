"""Streaming AES-256-GCM artifacts: round trips, and one distinct error per kind of damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubemaas.runtime import crypto
from kubemaas.runtime.crypto import (
    BadHeaderError,
    BindingMismatchError,
    ChunkOrderError,
    ExtendedArtifactError,
    HeaderTamperedError,
    Keyring,
    KeyringError,
    PlaintextDigest,
    PlaintextMismatchError,
    TamperedChunkError,
    TruncatedArtifactError,
    UnknownKeyError,
    UnsupportedFormatError,
    WrongKeyError,
    access,
    decrypt_file,
    encrypt_file,
    pipeline,
    read_header,
    stream,
    verify_file,
)
from kubemaas.runtime.keyring import generate_key, write_keyring_dir

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CHUNK = 64
MODEL, VERSION = "digits", "v1"
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({"k1": KEY}, "k1")


def _encrypt(tmp: Path, plaintext: bytes, chunk_size: int = CHUNK) -> Path:
    src, dst = tmp / "plain.bin", tmp / "model.kmenc"
    src.write_bytes(plaintext)
    encrypt_file(src, dst, key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=chunk_size)
    return dst


def _decrypt(tmp: Path, artifact: Path, keyring: Keyring) -> bytes:
    out = tmp / "out.bin"
    decrypt_file(artifact, out, keyring=keyring, model=MODEL, version=VERSION)
    return out.read_bytes()


def _refuse(tmp: Path, artifact: Path, keyring: Keyring) -> crypto.ArtifactIntegrityError:
    """Decryption must raise and must leave neither output nor temp files behind."""
    before = set(tmp.iterdir())
    with pytest.raises(crypto.ArtifactIntegrityError) as info:
        _decrypt(tmp, artifact, keyring)
    assert set(tmp.iterdir()) == before, "a refused artifact left files behind"
    return info.value


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 7])
def test_round_trip_sizes(tmp_path: Path, keyring: Keyring, size: int) -> None:
    plaintext = os.urandom(size)
    artifact = _encrypt(tmp_path, plaintext)
    assert _decrypt(tmp_path, artifact, keyring) == plaintext
    header = read_header(artifact)
    assert (header.model, header.version, header.key_id) == (MODEL, VERSION, "k1")
    assert header.plaintext_size == size
    assert artifact.stat().st_size == header.encrypted_size
    assert size < 16 or plaintext[:16] not in artifact.read_bytes()


def test_digest_matches_plaintext(tmp_path: Path, keyring: Keyring) -> None:
    import hashlib

    plaintext = os.urandom(1000)
    src = tmp_path / "p"
    src.write_bytes(plaintext)
    enc = encrypt_file(src, tmp_path / "e", key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=99)
    verified = verify_file(tmp_path / "e", keyring=keyring, model=MODEL, version=VERSION)
    assert verified == read_header(tmp_path / "e") and verified.plaintext_size == 1000
    assert enc.sha256 == hashlib.sha256(plaintext).hexdigest() and enc.size == 1000


def test_files_are_written_in_pieces_no_larger_than_write_piece(
    tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large page-cache writes are ten times slower on VMs that hand free memory back to their host
    # (kubemaas.runtime.crypto.pipeline.WRITE_PIECE): encryption and decryption both write in small pieces.
    plaintext = os.urandom(3 * pipeline.WRITE_PIECE + 5)
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def recording_pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", recording_pwrite)
    artifact = _encrypt(tmp_path, plaintext, chunk_size=2 * pipeline.WRITE_PIECE)
    assert _decrypt(tmp_path, artifact, keyring) == plaintext
    assert sum(sizes) == artifact.stat().st_size + len(plaintext), "every byte of both files went through pwrite"
    assert max(sizes) == pipeline.WRITE_PIECE


def test_same_plaintext_encrypts_differently(tmp_path: Path) -> None:
    a = _encrypt(tmp_path, b"x" * 200).read_bytes()
    b = _encrypt(tmp_path, b"x" * 200).read_bytes()
    assert a != b  # fresh salt and nonce prefix per file


def test_unknown_key_id(tmp_path: Path) -> None:
    artifact = _encrypt(tmp_path, b"a" * 300)
    err = _refuse(tmp_path, artifact, Keyring({"k2": KEY}, "k2"))
    assert isinstance(err, UnknownKeyError) and "'k1'" in str(err)


def test_wrong_key_fails_at_header(tmp_path: Path) -> None:
    artifact = _encrypt(tmp_path, b"a" * 300)
    err = _refuse(tmp_path, artifact, Keyring({"k1": OTHER_KEY}, "k1"))
    assert type(err) is WrongKeyError


def test_binding_to_model_and_version(tmp_path: Path, keyring: Keyring) -> None:
    artifact = _encrypt(tmp_path, b"a" * 300)
    for model, version in [("other", VERSION), (MODEL, "v2")]:
        with pytest.raises(BindingMismatchError, match="belongs to model 'digits' version 'v1'"):
            decrypt_file(artifact, tmp_path / "o", keyring=keyring, model=model, version=version)
        assert not (tmp_path / "o").exists()


def test_not_an_artifact(tmp_path: Path, keyring: Keyring) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not an artifact" * 10)
    assert type(_refuse(tmp_path, junk, keyring)) is BadHeaderError


def test_unsupported_format_version(tmp_path: Path, keyring: Keyring) -> None:
    artifact = _encrypt(tmp_path, b"a" * 10)
    data = bytearray(artifact.read_bytes())
    data[8:10] = (2).to_bytes(2, "big")
    artifact.write_bytes(bytes(data))
    assert type(_refuse(tmp_path, artifact, keyring)) is UnsupportedFormatError


def test_header_altered_with_recomputed_checksum(tmp_path: Path, keyring: Keyring) -> None:
    """An attacker who fixes the unkeyed checksum still fails the keyed header MAC."""
    import hashlib

    artifact = _encrypt(tmp_path, b"a" * 1000)
    header = read_header(artifact)
    data = bytearray(artifact.read_bytes())
    size_at = header.header_len - 3 * 32 - 16 - 8 - 8  # plaintext_size field
    assert int.from_bytes(data[size_at : size_at + 8], "big") == 1000
    data[size_at : size_at + 8] = (999).to_bytes(8, "big")
    data[header.header_len - 32 : header.header_len] = hashlib.sha256(data[: header.header_len - 32]).digest()
    artifact.write_bytes(bytes(data))
    assert type(_refuse(tmp_path, artifact, keyring)) is HeaderTamperedError


def test_existing_output_is_kept_on_failure(tmp_path: Path, keyring: Keyring) -> None:
    artifact = _encrypt(tmp_path, b"a" * 1000)
    data = bytearray(artifact.read_bytes())
    data[-1] ^= 1
    artifact.write_bytes(bytes(data))
    out = tmp_path / "out.bin"
    out.write_bytes(b"previous model")
    with pytest.raises(TamperedChunkError):
        decrypt_file(artifact, out, keyring=keyring, model=MODEL, version=VERSION)
    assert out.read_bytes() == b"previous model"


def test_encrypt_validates_arguments(tmp_path: Path) -> None:
    src = tmp_path / "p"
    src.write_bytes(b"x")
    with pytest.raises(ValueError):
        encrypt_file(src, tmp_path / "e", key=b"short", key_id="k1", model=MODEL, version=VERSION)
    with pytest.raises(KeyringError):
        encrypt_file(src, tmp_path / "e", key=KEY, key_id="bad id", model=MODEL, version=VERSION)
    with pytest.raises(ValueError):
        encrypt_file(src, tmp_path / "e", key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=1)


# ----------------------------------------------------------------- property-based damage


@st.composite
def _artifact_case(draw: st.DrawFn) -> tuple[bytes, int]:
    chunk_size = draw(st.sampled_from([16, 48, 64]))
    size = draw(st.integers(min_value=1, max_value=8 * chunk_size))
    return draw(st.binary(min_size=size, max_size=size)), chunk_size


@HYPOTHESIS
@given(case=_artifact_case(), data=st.data())
def test_any_flipped_byte_is_refused_with_its_location(
    tmp_path: Path, keyring: Keyring, case: tuple[bytes, int], data: st.DataObject
) -> None:
    plaintext, chunk_size = case
    artifact = _encrypt(tmp_path, plaintext, chunk_size)
    header = read_header(artifact)
    raw = bytearray(artifact.read_bytes())
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="position")
    raw[position] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    artifact.write_bytes(bytes(raw))
    err = _refuse(tmp_path, artifact, keyring)
    if position < header.header_len:
        assert isinstance(err, BadHeaderError)
    else:
        assert type(err) is TamperedChunkError
        assert err.index == (position - header.header_len) // (chunk_size + 16)
        assert f"chunk {err.index} " in str(err)


@HYPOTHESIS
@given(case=_artifact_case(), data=st.data())
def test_any_truncation_is_refused(
    tmp_path: Path, keyring: Keyring, case: tuple[bytes, int], data: st.DataObject
) -> None:
    plaintext, chunk_size = case
    artifact = _encrypt(tmp_path, plaintext, chunk_size)
    header = read_header(artifact)
    raw = artifact.read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="new length")
    artifact.write_bytes(raw[:cut])
    err = _refuse(tmp_path, artifact, keyring)
    if cut < header.header_len:
        assert type(err) is BadHeaderError
    else:
        assert type(err) is TruncatedArtifactError
        assert "truncated" in str(err)


@HYPOTHESIS
@given(case=_artifact_case(), extra=st.binary(min_size=1, max_size=200))
def test_any_appended_data_is_refused(tmp_path: Path, keyring: Keyring, case: tuple[bytes, int], extra: bytes) -> None:
    plaintext, chunk_size = case
    artifact = _encrypt(tmp_path, plaintext, chunk_size)
    artifact.write_bytes(artifact.read_bytes() + extra)
    err = _refuse(tmp_path, artifact, keyring)
    assert type(err) is ExtendedArtifactError and f"{len(extra)} unexpected bytes" in str(err)


@HYPOTHESIS
@given(chunk_size=st.sampled_from([16, 64]), chunks=st.integers(min_value=2, max_value=8), data=st.data())
def test_any_two_swapped_chunks_are_refused(
    tmp_path: Path, keyring: Keyring, chunk_size: int, chunks: int, data: st.DataObject
) -> None:
    # Full final chunk so every chunk has the same length and any two can trade places.
    artifact = _encrypt(tmp_path, os.urandom(chunks * chunk_size), chunk_size)
    header = read_header(artifact)
    i = data.draw(st.integers(min_value=0, max_value=chunks - 2), label="i")
    j = data.draw(st.integers(min_value=i + 1, max_value=chunks - 1), label="j")
    raw = bytearray(artifact.read_bytes())
    sealed = chunk_size + 16

    def span(k: int) -> slice:
        return slice(header.header_len + k * sealed, header.header_len + (k + 1) * sealed)

    raw[span(i)], raw[span(j)] = raw[span(j)], raw[span(i)]
    artifact.write_bytes(bytes(raw))
    err = _refuse(tmp_path, artifact, keyring)
    assert type(err) is ChunkOrderError
    assert (err.index, err.found) == (i, j)
    assert f"chunk {i} holds the authentic data of chunk {j}" in str(err)


@HYPOTHESIS
@given(case=_artifact_case(), wrong=st.binary(min_size=32, max_size=32))
def test_any_wrong_key_is_refused_before_any_chunk(
    tmp_path: Path, keyring: Keyring, case: tuple[bytes, int], wrong: bytes
) -> None:
    if wrong == KEY:
        return
    plaintext, chunk_size = case
    artifact = _encrypt(tmp_path, plaintext, chunk_size)
    assert type(_refuse(tmp_path, artifact, Keyring({"k1": wrong}, "k1"))) is WrongKeyError


def test_errors_never_carry_key_bytes(tmp_path: Path) -> None:
    artifact = _encrypt(tmp_path, b"z" * 100)
    ring = Keyring({"k1": OTHER_KEY}, "k1")
    err = _refuse(tmp_path, artifact, ring)
    for text in (str(err), repr(err), repr(ring)):
        assert OTHER_KEY.hex() not in text and repr(OTHER_KEY) not in text and "\\x" not in text


# ----------------------------------------------------------------- keyring directory


def test_keyring_from_mounted_secret_layout(tmp_path: Path) -> None:
    a, b = generate_key(), generate_key()
    # Mimic the kubelet: files are symlinks into a timestamped ..data directory.
    data = tmp_path / "..2024_01_01_00_00_00.1"
    write_keyring_dir(data, {"a": a, "b": b}, "b")
    (tmp_path / "..data").symlink_to(data.name)
    for name in ("key-a", "key-b", "active"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    ring = Keyring.from_dir(tmp_path)
    assert ring.active_id == "b" and ring.ids == ["a", "b"]
    assert ring.key("a") == a and ring.active_key() == b
    with pytest.raises(UnknownKeyError):
        ring.key("c")


def test_keyring_single_key_needs_no_active_file(tmp_path: Path) -> None:
    (tmp_path / "key-only").write_bytes(KEY)
    assert Keyring.from_dir(tmp_path).active_id == "only"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "holds no key-<id> files"),
        ({"key-a": KEY, "key-b": KEY}, "no active file"),
        ({"key-a": KEY, "active": b"b"}, "active key id 'b'"),
        ({"key-a": b"x" * 16}, "has 16 bytes"),
        ({"key-a": b"A" * 44}, "looks base64-encoded"),
    ],
)
def test_keyring_rejects_bad_directories(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(KeyringError, match=message) as info:
        Keyring.from_dir(tmp_path)
    assert "AAAA" not in str(info.value)


def test_keyring_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.from_dir(tmp_path / "nope")


# ----------------------------------------------------------------- parallel chunk pipeline


def _crypto_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith("kmcrypt")]


@pytest.mark.parametrize("chunk_size", [4096, 5000, 65536 + 3])
def test_many_chunks_round_trip_across_page_offsets(tmp_path: Path, keyring: Keyring, chunk_size: int) -> None:
    # Far more chunks than the pipeline keeps in flight, at sizes whose file offsets fall on every
    # page offset, so buffer placement and out-of-order positional writes are all exercised.
    import hashlib

    plaintext = os.urandom(37 * chunk_size + 1234)
    src, artifact = tmp_path / "plain.bin", tmp_path / "model.kmenc"
    src.write_bytes(plaintext)
    digest = encrypt_file(src, artifact, key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=chunk_size)
    assert digest.sha256 == hashlib.sha256(plaintext).hexdigest()
    assert _decrypt(tmp_path, artifact, keyring) == plaintext
    assert verify_file(artifact, keyring=keyring, model=MODEL, version=VERSION).chunk_count == 38
    assert _crypto_threads() == []


def test_first_bad_chunk_is_reported_and_no_worker_outlives_the_error(tmp_path: Path, keyring: Keyring) -> None:
    artifact = _encrypt(tmp_path, os.urandom(40 * CHUNK), CHUNK)
    header = read_header(artifact)
    raw = bytearray(artifact.read_bytes())
    for index in (33, 21):  # both fail; the lower index must win whatever order the workers finish in
        raw[header.header_len + index * (CHUNK + 16) + 5] ^= 0x40
    artifact.write_bytes(bytes(raw))
    err = _refuse(tmp_path, artifact, keyring)
    assert type(err) is TamperedChunkError and err.index == 21
    with pytest.raises(TamperedChunkError):
        verify_file(artifact, keyring=keyring, model=MODEL, version=VERSION)
    assert _crypto_threads() == []


def test_io_error_in_a_worker_surfaces_and_leaves_nothing(
    tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, artifact = tmp_path / "plain.bin", tmp_path / "model.kmenc"
    src.write_bytes(os.urandom(30 * CHUNK))
    real_read, calls = pipeline.pread_into, []

    def failing_read(fd: int, view: memoryview, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 7:
            raise OSError(5, "injected read error")
        return real_read(fd, view, offset)

    monkeypatch.setattr(stream, "pread_into", failing_read)
    with pytest.raises(OSError, match="injected read error"):
        encrypt_file(src, artifact, key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=CHUNK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin"], "encrypt left a partial file"
    assert _crypto_threads() == []
    monkeypatch.setattr(stream, "pread_into", real_read)
    artifact = _encrypt(tmp_path, os.urandom(30 * CHUNK))
    calls.clear()
    monkeypatch.setattr(access, "pread_into", failing_read)  # decryption reads through FileAccess
    before = set(tmp_path.iterdir())
    with pytest.raises(OSError, match="injected read error"):
        _decrypt(tmp_path, artifact, keyring)
    assert set(tmp_path.iterdir()) == before
    assert _crypto_threads() == []


@pytest.mark.parametrize("chunk_size", [CHUNK, 4096 + 3])
def test_expected_digest_is_checked_while_decrypting(tmp_path: Path, keyring: Keyring, chunk_size: int) -> None:
    # Many more chunks than the pipeline holds, so hashing in order behind out-of-order workers is exercised.
    import hashlib

    plaintext = os.urandom(29 * chunk_size + 11)
    artifact = _encrypt(tmp_path, plaintext, chunk_size)
    right = PlaintextDigest(sha256=hashlib.sha256(plaintext).hexdigest(), size=len(plaintext))
    out = tmp_path / "out.bin"
    decrypt_file(artifact, out, keyring=keyring, model=MODEL, version=VERSION, expect=right)
    assert out.read_bytes() == plaintext
    assert verify_file(artifact, keyring=keyring, model=MODEL, version=VERSION, expect=right).chunk_count == 30
    out.unlink()

    other = PlaintextDigest(sha256=hashlib.sha256(b"another model").hexdigest(), size=len(plaintext))
    before = set(tmp_path.iterdir())
    with pytest.raises(PlaintextMismatchError, match=r"decrypted model has sha256 \w+, the manifest says") as info:
        decrypt_file(artifact, out, keyring=keyring, model=MODEL, version=VERSION, expect=other)
    assert info.value.actual == right.sha256
    assert set(tmp_path.iterdir()) == before, "a plaintext that does not match the manifest was left behind"

    shorter = PlaintextDigest(sha256=right.sha256, size=len(plaintext) - 1)
    with pytest.raises(PlaintextMismatchError, match=f"{len(plaintext)} bytes of plaintext, the manifest says") as info:
        verify_file(artifact, keyring=keyring, model=MODEL, version=VERSION, expect=shorter)
    assert info.value.actual is None
    assert _crypto_threads() == []


def test_tampered_chunk_wins_over_digest_mismatch(tmp_path: Path, keyring: Keyring) -> None:
    # Authentication comes first: a changed chunk is reported as such, not as a wrong checksum.
    artifact = _encrypt(tmp_path, os.urandom(12 * CHUNK), CHUNK)
    header = read_header(artifact)
    raw = bytearray(artifact.read_bytes())
    raw[header.header_len + 4 * (CHUNK + 16) + 1] ^= 0x01
    artifact.write_bytes(bytes(raw))
    wrong = PlaintextDigest(sha256="0" * 64, size=12 * CHUNK)
    with pytest.raises(TamperedChunkError) as info:
        verify_file(artifact, keyring=keyring, model=MODEL, version=VERSION, expect=wrong)
    assert info.value.index == 4
    assert _crypto_threads() == []


def test_manifest_mac_binds_a_document_to_one_artifact_file(tmp_path: Path, keyring: Keyring) -> None:
    plaintext = os.urandom(5 * CHUNK + 3)
    artifact = _encrypt(tmp_path, plaintext)
    twin = tmp_path / "twin.kmenc"  # the same plaintext, model, version and key: another file
    encrypt_file(tmp_path / "plain.bin", twin, key=KEY, key_id="k1", model=MODEL, version=VERSION, chunk_size=CHUNK)
    document = b'{"sha256":"x"}'
    mac = crypto.manifest_mac(artifact, document, key=KEY)
    assert len(mac) == 32 and mac != crypto.manifest_mac(twin, document, key=KEY)
    with crypto.open_artifact(artifact, keyring=keyring, model=MODEL, version=VERSION) as opened:
        opened.verify_manifest(document, mac)
        for other_document, other_mac in ((b'{"sha256":"y"}', mac), (document, mac[:-1] + bytes([mac[-1] ^ 1]))):
            with pytest.raises(crypto.ManifestTamperedError, match="manifest authentication failed"):
                opened.verify_manifest(other_document, other_mac)
        fd = os.open(tmp_path / "direct.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            assert opened.decrypt_into(fd).plaintext_size == len(plaintext)
        finally:
            os.close(fd)
    assert (tmp_path / "direct.bin").read_bytes() == plaintext
    with (
        crypto.open_artifact(twin, keyring=keyring, model=MODEL, version=VERSION) as opened,
        pytest.raises(crypto.ManifestTamperedError),
    ):
        opened.verify_manifest(document, mac)
    with pytest.raises(WrongKeyError):
        crypto.manifest_mac(artifact, document, key=OTHER_KEY)
    # Checked when opening, before any MAC or chunk.
    with (
        pytest.raises(BindingMismatchError),
        crypto.open_artifact(artifact, keyring=keyring, model=MODEL, version="v2"),
    ):
        pass
