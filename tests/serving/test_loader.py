"""`kubemaas load-model` against real encrypted artifacts: the repository it builds, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kubemaas.contract.termination import SuccessMessage, parse_termination
from kubemaas.runtime import loader
from kubemaas.runtime.artifacts import ArtifactStore, canonical_manifest
from kubemaas.runtime.crypto import manifest_mac, read_header
from kubemaas.runtime.keyring import generate_key, write_keyring_dir

from .conftest import (
    IN_FEATURES,
    INPUTS,
    KEY_ID,
    MODEL,
    OUTPUTS,
    PublishedModels,
    copy_store,
    loader_args,
    make_mlp,
    publish,
    run_loader,
    save_torchscript,
    tree,
)

MANIFEST_TAMPERED = (
    "tampered artifact: manifest authentication failed: the manifest was altered, or belongs to another artifact"
)
PYTHON_MODEL_SOURCE = Path(__file__).parents[2] / "operator/kubemaas/runtime/triton_python_model.py"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_latest_builds_a_complete_python_backend_repository(published: PublishedModels, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    termination_log = tmp_path / "termination-log"
    done = run_loader(
        loader_args(
            published.uri, published.key_dir, repository, "--max-batch-size=8", f"--termination-log={termination_log}"
        )
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert f"loaded {MODEL} version v2" in done.stdout
    assert tree(repository) == [
        MODEL,
        f"{MODEL}/1",
        f"{MODEL}/1/model.pt",
        f"{MODEL}/1/model.py",
        f"{MODEL}/config.pbtxt",
    ]
    manifest = json.loads((published.root / MODEL / "v2" / "manifest.json").read_text())
    plaintext = (repository / MODEL / "1" / "model.pt").read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == manifest["sha256"]
    assert (repository / MODEL / "1" / "model.py").read_text() == PYTHON_MODEL_SOURCE.read_text()
    config = (repository / MODEL / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert 'value: { string_value: "v2" }' in config
    assert 'name: "pixels"' in config
    # The version Latest resolved to, and its checksum, for the operator (a standalone loader's report).
    result = parse_termination(termination_log.read_bytes())
    assert isinstance(result, SuccessMessage)
    assert (result.model, result.version, result.sha256) == (MODEL, "v2", manifest["sha256"])
    assert result.uri == f"{published.uri}/{MODEL}/v2"
    # The decrypted file is the v2 model: same outputs as its eager module.
    scripted = torch.jit.load(str(repository / MODEL / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    x = torch.randn(3, IN_FEATURES)
    torch.testing.assert_close(scripted(x), published.eager["v2"](x))


def test_pinned_version_and_a_restart_replace_the_previous_repository(
    published: PublishedModels, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    assert run_loader(loader_args(published.uri, published.key_dir, repository)).returncode == 0
    (repository / ".kubemaas-staging-left-by-a-killed-loader").mkdir()
    done = run_loader(
        loader_args(published.uri, published.key_dir, repository, "--version=v1", "--backend=pytorch_libtorch")
    )
    assert done.returncode == 0, done.stderr
    assert tree(repository) == [MODEL, f"{MODEL}/1", f"{MODEL}/1/model.pt", f"{MODEL}/config.pbtxt"]
    config = (repository / MODEL / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in config
    assert 'value: { string_value: "v1" }' in config


def flip_byte_in_a_chunk(root: Path) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01  # inside the last chunk's ciphertext, past the header
    artifact.write_bytes(bytes(data))


def truncate(root: Path) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    artifact.write_bytes(artifact.read_bytes()[:-7])


def edit_manifest(root: Path, change: Callable[[dict[str, Any]], None], version: str = "v2") -> None:
    path = root / MODEL / version / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def swap_manifest_checksum(root: Path) -> None:
    # The ciphertext is authentic, but the manifest (the trainer's record) describes another file.
    edit_manifest(root, lambda m: m.update(sha256=hashlib.sha256(b"another model").hexdigest()))


def widen_an_input(root: Path) -> None:
    edit_manifest(root, lambda m: m["inputs"][0].update(dims=[128]))


def backdate(root: Path) -> None:
    edit_manifest(root, lambda m: m.update(createdAt="2020-01-01T00:00:00Z"))


def claim_onnx(root: Path) -> None:
    # Unauthenticated, this would have been a configuration error (78) naming the backend.
    edit_manifest(root, lambda m: m.update(format="ONNX"))


def add_an_unknown_field(root: Path) -> None:
    edit_manifest(root, lambda m: m.update(servedBy="attacker"))


def strip_the_mac(root: Path) -> None:
    # What every manifest written before manifests were authenticated looks like.
    edit_manifest(root, lambda m: m.pop("mac"))


def malformed_mac(root: Path) -> None:
    edit_manifest(root, lambda m: m.update(mac="00" * 31))


def duplicate_a_key(root: Path) -> None:
    # Two parsers may keep different copies of a duplicated key: refused before anything reads it.
    path = root / MODEL / "v2" / "manifest.json"
    text = path.read_text()
    path.write_text(text.replace('"sha256":', f'"sha256": "{"0" * 64}", "sha256":', 1))


def v1_manifest_renamed_v2(root: Path) -> None:
    # v1's authentic manifest, edited to name v2, beside v2's artifact: bound to v1's artifact header.
    shutil.copy(root / MODEL / "v1" / "manifest.json", root / MODEL / "v2" / "manifest.json")
    edit_manifest(root, lambda m: m.update(version="v2"))


def v1_manifest_moved_into_v2(root: Path) -> None:
    shutil.copy(root / MODEL / "v1" / "manifest.json", root / MODEL / "v2" / "manifest.json")


def corrupt_manifest(root: Path) -> None:
    path = root / MODEL / "v2" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["sha256"]
    path.write_text(json.dumps(manifest))


def move_v1_artifact_into_v2(root: Path) -> None:
    shutil.copy(root / MODEL / "v1" / "model.kmenc", root / MODEL / "v2" / "model.kmenc")


def keep(_: Path) -> None:
    pass


def delete_the_latest_version(root: Path) -> None:
    shutil.rmtree(root / MODEL / "v2")  # LATEST still names it


@pytest.mark.parametrize(
    ("tamper", "key_choice", "extra", "expected_line", "reason", "exit_code"),
    [
        (keep, "right", ["--version=v9"], "missing version: model 'digits' has no version 'v9'", "MissingVersion", 79),
        (
            delete_the_latest_version,
            "right",
            [],
            "missing version: model 'digits' has no version 'v2' (named by LATEST)",
            "MissingVersion",
            79,
        ),
        (
            flip_byte_in_a_chunk,
            "right",
            [],
            "tampered artifact: chunk 0 of 1 failed authentication",
            "TamperedArtifact",
            79,
        ),
        (truncate, "right", [], "tampered artifact: artifact is truncated", "TamperedArtifact", 79),
        (
            move_v1_artifact_into_v2,
            "right",
            [],
            "tampered artifact: artifact belongs to model 'digits' version 'v1'",
            "TamperedArtifact",
            79,
        ),
        (swap_manifest_checksum, "right", [], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (widen_an_input, "right", [], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (backdate, "right", [], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (claim_onnx, "right", ["--backend=onnxruntime"], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (add_an_unknown_field, "right", [], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (v1_manifest_renamed_v2, "right", [], MANIFEST_TAMPERED, "TamperedArtifact", 79),
        (
            v1_manifest_moved_into_v2,
            "right",
            [],
            "tampered artifact: manifest describes 'digits' 'v1', not 'digits' 'v2'",
            "TamperedArtifact",
            79,
        ),
        (
            strip_the_mac,
            "right",
            [],
            "tampered artifact: manifest of 'digits' 'v2' has no 'mac': it was written before manifests were "
            "authenticated, or its MAC was removed; republish the version",
            "TamperedArtifact",
            79,
        ),
        (malformed_mac, "right", [], "bad manifest: manifest.json: 'mac' must be 64 lower-case hex", "BadManifest", 79),
        (duplicate_a_key, "right", [], "bad manifest: manifest.json: duplicate keys ['sha256']", "BadManifest", 79),
        (corrupt_manifest, "right", [], "bad manifest: sha256: Field required", "BadManifest", 79),
        (keep, "other-key-same-id", [], "wrong key: the keyring's key 'k1' is not the key", "WrongKey", 78),
        (keep, "other-id", [], "wrong key: artifact was encrypted with key id 'k1'", "WrongKey", 78),
        (
            keep,
            "right",
            ["--backend=onnxruntime"],
            "unsupported format: artifact format 'TorchScript'",
            "UnsupportedFormat",
            78,
        ),
        (keep, "missing-dir", [], "key directory: key directory", "KeyDirectoryError", 78),
        (
            keep,
            "right",
            ["--max-batch-size=4", "--preferred-batch-size=8"],
            "invalid settings:",
            "InvalidSettings",
            78,
        ),
    ],
    ids=[
        "missing-version",
        "latest-names-a-deleted-version",
        "tampered-chunk",
        "truncated",
        "artifact-of-another-version",
        "manifest-sha256-edited",
        "manifest-input-dims-edited",
        "manifest-created-at-edited",
        "manifest-format-edited",
        "manifest-unknown-field-added",
        "manifest-of-v1-renamed-v2",
        "manifest-of-v1-moved-into-v2",
        "manifest-without-mac",
        "manifest-mac-malformed",
        "manifest-duplicate-key",
        "bad-manifest",
        "wrong-key",
        "unknown-key-id",
        "unsupported-format",
        "no-key-dir",
        "invalid-settings",
    ],
)
def test_refusals_exit_nonzero_with_one_clear_line_and_leave_no_repository(
    published: PublishedModels,
    tmp_path: Path,
    tamper: Callable[[Path], None],
    key_choice: str,
    extra: list[str],
    expected_line: str,
    reason: str,
    exit_code: int,
) -> None:
    root = copy_store(published, tmp_path)
    tamper(root)
    other_key = generate_key()
    key_dirs = {
        "right": published.key_dir,
        "other-key-same-id": write_keyring_dir(tmp_path / "k-same", {KEY_ID: other_key}, KEY_ID),
        "other-id": write_keyring_dir(tmp_path / "k-other", {"k2": other_key}, "k2"),
        "missing-dir": tmp_path / "no-such-dir",
    }
    repository = tmp_path / "models"
    termination_log = tmp_path / "termination-log"

    done = run_loader(
        loader_args(f"file://{root}", key_dirs[key_choice], repository, f"--termination-log={termination_log}", *extra)
    )

    assert done.returncode == exit_code
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"kubemaas load-model: {expected_line}"), lines[0]
    # What the kubelet shows in the pod status, and the operator turns into a condition.
    assert json.loads(termination_log.read_text()) == {
        "exitCode": exit_code,
        "message": lines[0],
        "reason": reason,
    }
    assert "Traceback" not in done.stderr
    for key in (published.key, other_key):
        for encoding in (key.hex(), base64.b64encode(key).decode(), repr(key)):
            assert encoding not in done.stderr
    # Nothing Triton could load: no model directory, no partial files, no staging left behind.
    assert not repository.exists() or tree(repository) == []


def test_an_unwritable_repository_is_an_io_error_worth_a_retry(published: PublishedModels, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    done = run_loader(loader_args(published.uri, published.key_dir, not_a_directory / "models"))
    assert done.returncode == 138
    assert done.stderr.startswith("kubemaas load-model: i/o error: Not a directory:")
    assert len(done.stderr.splitlines()) == 1


def test_a_reformatted_manifest_and_a_newer_publishers_fields_still_load(
    published: PublishedModels, tmp_path: Path
) -> None:
    """The MAC covers the JSON object, not its layout, and every field, known to this reader or not."""
    root = copy_store(published, tmp_path)
    path = root / MODEL / "v2" / "manifest.json"
    document = json.loads(path.read_text())
    document.pop("mac")
    document["servedBy"] = {"publisher": "a newer trainer", "flags": [1, 2.5, None, True]}
    artifact = root / MODEL / "v2" / "model.kmenc"
    mac = manifest_mac(artifact, canonical_manifest(document), key=published.key)
    # Keys in reverse order, no indentation: what another JSON writer might produce.
    path.write_text(json.dumps(dict(reversed(list({**document, "mac": mac.hex()}.items())))))
    repository = tmp_path / "models"
    done = run_loader(loader_args(f"file://{root}", published.key_dir, repository))
    assert done.returncode == 0, done.stderr
    plaintext = (repository / MODEL / "1" / "model.pt").read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == document["sha256"]


def test_a_manifest_of_another_publication_of_the_same_version_is_refused(
    published: PublishedModels, tmp_path: Path
) -> None:
    """Same model, version and key, published twice (another store): each manifest fits only its own artifact."""
    root = copy_store(published, tmp_path)
    other = ArtifactStore(tmp_path / "other-store")
    publish(other, tmp_path, model=MODEL, version="v2", seed=2, key=published.key)
    shutil.copy(other.root / MODEL / "v2" / "manifest.json", root / MODEL / "v2" / "manifest.json")
    done = run_loader(loader_args(f"file://{root}", published.key_dir, tmp_path / "models"))
    assert done.returncode == 79
    assert done.stderr == f"kubemaas load-model: {MANIFEST_TAMPERED}\n"


CHUNK = 1024  # the digits MLP's TorchScript file (about 10 KiB) spans several chunks


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> PublishedModels:
    """``digits`` v1 encrypted in 1 KiB chunks, so chunks can be dropped, cut and reordered."""
    workdir = tmp_path_factory.mktemp("chunked")
    key = generate_key()
    store = ArtifactStore(workdir / "store")
    eager = make_mlp(1)
    plaintext = save_torchscript(eager, workdir / "v1.pt")
    store.publish(
        plaintext, model=MODEL, version="v1", key=key, key_id=KEY_ID, inputs=INPUTS, outputs=OUTPUTS, chunk_size=CHUNK
    )
    assert read_header(store.root / MODEL / "v1" / "model.kmenc").chunk_count >= 4
    return PublishedModels(
        root=store.root,
        key_dir=write_keyring_dir(workdir / "keys", {KEY_ID: key}, KEY_ID),
        key=key,
        eager={"v1": eager},
    )


def _chunks(artifact: Path) -> tuple[bytes, list[bytes]]:
    header = read_header(artifact)
    data = artifact.read_bytes()
    body = data[header.header_len :]
    sealed = CHUNK + 16
    return data[: header.header_len], [body[i : i + sealed] for i in range(0, len(body), sealed)]


def drop_the_final_chunk(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join(chunks[:-1])


def drop_the_final_chunk_and_fix_the_header(header: bytes, chunks: list[bytes]) -> bytes:
    # Rewrite plaintext_size so the remaining chunks fill the file, and recompute the unkeyed checksum.
    size_at = header.index(CHUNK.to_bytes(4, "big")) + 4
    plaintext_size = CHUNK * (len(chunks) - 1)
    fixed = header[:size_at] + plaintext_size.to_bytes(8, "big") + header[size_at + 8 : -32]
    return fixed + hashlib.sha256(fixed).digest() + b"".join(chunks[:-1])


def drop_a_middle_chunk(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join(chunks[:1] + chunks[2:])


def cut_inside_the_last_chunk(header: bytes, chunks: list[bytes]) -> bytes:
    return (header + b"".join(chunks))[:-5]


def swap_two_chunks(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join([chunks[1], chunks[0], *chunks[2:]])


def append_a_copy_of_a_chunk(header: bytes, chunks: list[bytes]) -> bytes:
    return header + b"".join([*chunks, chunks[0]])


@pytest.mark.parametrize(
    ("tamper", "expected_line"),
    [
        (drop_the_final_chunk, "tampered artifact: artifact is truncated"),
        (drop_the_final_chunk_and_fix_the_header, "tampered artifact: header authentication failed"),
        (drop_a_middle_chunk, "tampered artifact: artifact is truncated"),
        (cut_inside_the_last_chunk, "tampered artifact: artifact is truncated"),
        (swap_two_chunks, "tampered artifact: chunk 0 holds the authentic data of chunk 1: chunks were reordered"),
        (append_a_copy_of_a_chunk, f"tampered artifact: artifact has {CHUNK + 16} unexpected bytes after its final"),
    ],
    ids=[
        "dropped-final-chunk",
        "dropped-final-chunk-header-fixed",
        "dropped-middle-chunk",
        "cut",
        "reordered",
        "appended-chunk",
    ],
)
def test_chunk_tampering_is_refused_without_hashing_the_plaintext(
    chunked: PublishedModels,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Callable[[bytes, list[bytes]], bytes],
    expected_line: str,
) -> None:
    """Every chunk is authenticated at its position with a final flag under a header the manifest's MAC
    covers: no whole-file hash is needed to see a dropped, cut or moved chunk."""
    root = copy_store(chunked, tmp_path)
    artifact = root / MODEL / "v1" / "model.kmenc"
    artifact.write_bytes(tamper(*_chunks(artifact)))
    hashed = _count_hashed_bytes(monkeypatch)
    termination_log = tmp_path / "termination-log"
    repository = tmp_path / "models"
    args = loader_args(f"file://{root}", chunked.key_dir, repository, f"--termination-log={termination_log}")
    code = loader.run(loader.build_parser().parse_args(args))
    assert code == 79
    message = json.loads(termination_log.read_text())
    assert message["reason"] == "TamperedArtifact"
    assert message["message"].startswith(f"kubemaas load-model: {expected_line}"), message["message"]
    assert not repository.exists() or tree(repository) == []
    assert sum(hashed) < 1024  # header checksums only


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_loader_writes_the_published_bytes_in_one_pass_without_hashing_them(
    chunked: PublishedModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = _count_hashed_bytes(monkeypatch)
    repository = tmp_path / "models"
    args = loader_args(chunked.uri, chunked.key_dir, repository, f"--termination-log={tmp_path / 'log'}")
    assert loader.run(loader.build_parser().parse_args(args)) == 0
    monkeypatch.undo()
    plaintext = (repository / MODEL / "1" / "model.pt").read_bytes()
    manifest = json.loads((chunked.root / MODEL / "v1" / "manifest.json").read_text())
    assert (hashlib.sha256(plaintext).hexdigest(), len(plaintext)) == (manifest["sha256"], manifest["size"])
    assert len(plaintext) > 4 * CHUNK
    assert sum(hashed) < 1024  # the header checksum, not the model
    scripted = torch.jit.load(str(repository / MODEL / "1" / "model.pt"))  # type: ignore[no-untyped-call]
    x = torch.randn(2, IN_FEATURES)
    torch.testing.assert_close(scripted(x), chunked.eager["v1"](x))


def _count_hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many bytes are fed to SHA-256 (hashlib) from now on."""
    counts: list[int] = []
    real = hashlib.sha256

    class Counting:
        def __init__(self, data: bytes = b"") -> None:
            self._hash = real()
            self.update(data)

        def update(self, data: bytes) -> None:
            counts.append(len(data))
            self._hash.update(data)

        def digest(self) -> bytes:
            return self._hash.digest()

        def hexdigest(self) -> str:
            return self._hash.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    return counts
