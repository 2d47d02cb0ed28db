"""`kubemaas load-model` against real encrypted artifacts: the repository it builds, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kubemaas.runtime.keyring import generate_key, write_keyring_dir
from kubemaas.runtime.termination import SuccessMessage, parse_termination

from .conftest import IN_FEATURES, KEY_ID, MODEL, PublishedModels, run_loader

PYTHON_MODEL_SOURCE = Path(__file__).parents[2] / "operator/kubemaas/runtime/triton_python_model.py"


def loader_args(store_uri: str, key_dir: Path, repository: Path, *extra: str) -> list[str]:
    return [
        f"--store-uri={store_uri}",
        f"--model={MODEL}",
        f"--key-dir={key_dir}",
        f"--repository={repository}",
        "--backend=python",
        "--instance-kind=CPU",
        *extra,
    ]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


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
    scripted = torch.jit.load(str(repository / MODEL / "1" / "model.pt"))
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


def copy_store(published: PublishedModels, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(published.root, root)
    return root


def flip_byte_in_a_chunk(root: Path) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01  # inside the last chunk's ciphertext, past the header
    artifact.write_bytes(bytes(data))


def truncate(root: Path) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    artifact.write_bytes(artifact.read_bytes()[:-7])


def swap_manifest_checksum(root: Path) -> None:
    # The ciphertext is authentic, but the manifest (the trainer's record) describes another file.
    path = root / MODEL / "v2" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["sha256"] = hashlib.sha256(b"another model").hexdigest()
    path.write_text(json.dumps(manifest))


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
        (swap_manifest_checksum, "right", [], "bad checksum: decrypted model has sha256", "BadChecksum", 79),
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
        "bad-checksum",
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
