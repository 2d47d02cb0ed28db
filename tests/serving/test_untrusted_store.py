"""The store is untrusted input: the real `kubemaas load-model` against a store its writers tampered with.

Each case is one the security review reproduced against the loader (issue 24): a store writer holds no
key, but may plant links, FIFOs, huge or sparse files. The loader must refuse each, quickly, in bounded
memory, with one line that quotes no byte of what it was pointed at.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubemaas.runtime.artifacts import LATEST_MAX_BYTES, MANIFEST_MAX_BYTES

from .conftest import MODEL, PublishedModels, copy_store, loader_args, tree

# What a pod's service-account token looks like; the review saw it whole in `status.lastFailure`.
TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6InNlY3JldC1rZXktaWQifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl"
SECONDS = 20.0  # a refusal takes well under a second past the interpreter's start; a hang or a GB read does not
# The loader's own data segment is tens of MB; /dev/zero took 1.5 GB in 5 s and a sparse 3 GB manifest ended in
# MemoryError. Under this limit reading either ends in MemoryError at once instead of in the node's memory.
DATA_LIMIT_BYTES = 512 * 1024 * 1024
# `kubemaas load-model` as the container runs it, with RLIMIT_DATA set first (not preexec_fn: pytest has threads).
LIMITED_LOADER = f"""
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_DATA, ({DATA_LIMIT_BYTES}, {DATA_LIMIT_BYTES}))
sys.argv = ["kubemaas", *sys.argv[1:]]
runpy.run_module("kubemaas.cli", run_name="__main__")
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stderr: str
    seconds: float
    termination: dict[str, object]


def run_guarded(args: list[str], termination_log: Path) -> Run:
    """The real loader in a child process with bounded memory, killed (and the test failed) after SECONDS."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", LIMITED_LOADER, "load-model", *args, f"--termination-log={termination_log}"],
            capture_output=True,
            text=True,
            timeout=SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the loader was still running after {SECONDS}s: it hangs or reads without bound")
    return Run(
        returncode=done.returncode,
        stderr=done.stderr,
        seconds=time.monotonic() - started,
        termination=json.loads(termination_log.read_text()),
    )


def secret_file(tmp_path: Path) -> Path:
    """A projected service-account token, outside the store, readable by the loader's user."""
    path = tmp_path / "serviceaccount" / "token"
    path.parent.mkdir()
    path.write_text(TOKEN)
    return path


def link_latest_to_token(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    latest = root / MODEL / "LATEST"
    latest.unlink()
    latest.symlink_to(secret_file(tmp_path))


def link_latest_to_key(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    latest = root / MODEL / "LATEST"
    latest.unlink()
    latest.symlink_to(next(published.key_dir.glob("key-*")))


def link_manifest_to_key(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    manifest = root / MODEL / "v2" / "manifest.json"
    manifest.unlink()
    manifest.symlink_to(next(published.key_dir.glob("key-*")))


def link_artifact_to_key(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    artifact.unlink()
    artifact.symlink_to(next(published.key_dir.glob("key-*")))


def link_latest_to_dev_zero(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    latest = root / MODEL / "LATEST"
    latest.unlink()
    latest.symlink_to("/dev/zero")


def latest_as_fifo(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    latest = root / MODEL / "LATEST"
    latest.unlink()
    os.mkfifo(latest)


def artifact_as_fifo(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    artifact = root / MODEL / "v2" / "model.kmenc"
    artifact.unlink()
    os.mkfifo(artifact)


def link_the_version_directory(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    # A complete, authentic v2 elsewhere: only the link is wrong, and it is enough to refuse.
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / MODEL / "v2", elsewhere)
    (root / MODEL / "v2").symlink_to(elsewhere)


def link_the_model_directory(root: Path, tmp_path: Path, published: PublishedModels) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / MODEL, elsewhere)
    (root / MODEL).symlink_to(elsewhere)


@pytest.mark.parametrize(
    ("plant", "expected_line"),
    [
        (link_latest_to_token, "unsafe store entry: digits/LATEST under "),
        (link_latest_to_key, "unsafe store entry: digits/LATEST under "),
        (link_manifest_to_key, "unsafe store entry: digits/v2/manifest.json under "),
        (link_artifact_to_key, "unsafe store entry: digits/v2/model.kmenc under "),
        (link_latest_to_dev_zero, "unsafe store entry: digits/LATEST under "),
        (latest_as_fifo, "unsafe store entry: digits/LATEST under "),
        (artifact_as_fifo, "unsafe store entry: digits/v2/model.kmenc under "),
        (link_the_version_directory, "unsafe store entry: digits/v2 under "),
        (link_the_model_directory, "unsafe store entry: digits under "),
    ],
    ids=[
        "latest-links-to-a-token",
        "latest-links-to-the-key",
        "manifest-links-to-the-key",
        "artifact-links-to-the-key",
        "latest-links-to-dev-zero",
        "latest-is-a-fifo",
        "artifact-is-a-fifo",
        "version-directory-is-a-link",
        "model-directory-is-a-link",
    ],
)
def test_links_and_special_files_in_the_store_are_refused_without_reading_them(
    published: PublishedModels,
    tmp_path: Path,
    plant: Callable[[Path, Path, PublishedModels], None],
    expected_line: str,
) -> None:
    root = copy_store(published, tmp_path)
    plant(root, tmp_path, published)
    repository = tmp_path / "models"

    done = run_guarded(loader_args(f"file://{root}", published.key_dir, repository), tmp_path / "termination-log")

    assert done.returncode == 79, done.stderr
    assert done.stderr.startswith(f"kubemaas load-model: {expected_line}"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.termination == {"exitCode": 79, "message": done.stderr.strip(), "reason": "UnsafeStoreEntry"}
    assert_nothing_revealed(done, published.key)
    assert not repository.exists() or tree(repository) == []


def test_a_link_in_the_path_from_the_claim_to_the_store_root_is_refused(
    published: PublishedModels, tmp_path: Path
) -> None:
    """For pvc:// the claim's mount is trusted; `<claim>/store` is on the claim, which its writers control."""
    mounts = tmp_path / "mnt"
    (mounts / "models").mkdir(parents=True)
    (mounts / "models" / "store").symlink_to(copy_store(published, tmp_path))
    args = loader_args("pvc://models/store", published.key_dir, tmp_path / "models", f"--mount-root={mounts}")

    done = run_guarded(args, tmp_path / "termination-log")

    assert done.returncode == 79, done.stderr
    assert done.stderr.startswith("kubemaas load-model: unsafe store entry: store under "), done.stderr
    assert done.termination["reason"] == "UnsafeStoreEntry"


def test_the_same_store_under_a_real_claim_path_loads(published: PublishedModels, tmp_path: Path) -> None:
    """The refusals above are about links, not about pvc:// roots: a plain copy under the claim loads."""
    mounts = tmp_path / "mnt"
    (mounts / "models").mkdir(parents=True)
    shutil.copytree(published.root, mounts / "models" / "store")
    args = loader_args("pvc://models/store", published.key_dir, tmp_path / "models", f"--mount-root={mounts}")
    done = run_guarded(args, tmp_path / "termination-log")
    assert done.returncode == 0, done.stderr


def sparse(path: Path, size: int) -> None:
    path.unlink()
    with path.open("wb") as file:
        file.truncate(size)


def sparse_3gb_manifest(root: Path, tmp_path: Path) -> None:
    sparse(root / MODEL / "v2" / "manifest.json", 3 * 1024**3)


def sparse_3gb_latest(root: Path, tmp_path: Path) -> None:
    sparse(root / MODEL / "LATEST", 3 * 1024**3)


def latest_holds_a_token(root: Path, tmp_path: Path) -> None:
    # A writer's own text (not a link): still never quoted, since it lands in status and Events.
    (root / MODEL / "LATEST").write_text(TOKEN)


def latest_is_not_utf8(root: Path, tmp_path: Path) -> None:
    (root / MODEL / "LATEST").write_bytes(b"\xa7v2\n")


def manifest_is_not_utf8(root: Path, tmp_path: Path) -> None:
    (root / MODEL / "v2" / "manifest.json").write_bytes(b'{"model": "\xa7' + TOKEN.encode() + b'"}')


def manifest_is_not_json(root: Path, tmp_path: Path) -> None:
    (root / MODEL / "v2" / "manifest.json").write_text(TOKEN)


def manifest_nests_too_deeply(root: Path, tmp_path: Path) -> None:
    (root / MODEL / "v2" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)


def manifest_with_secret_metric_names(root: Path, tmp_path: Path) -> None:
    # Keys of the manifest's own maps are content: a schema error names their place, not them.
    path = root / MODEL / "v2" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"] = {TOKEN: "not a number"}
    manifest["model"] = TOKEN
    path.write_text(json.dumps(manifest))


def manifest_duplicates_a_secret_key(root: Path, tmp_path: Path) -> None:
    path = root / MODEL / "v2" / "manifest.json"
    path.write_text(path.read_text().replace("{", f'{{"{TOKEN}": 1, "{TOKEN}": 2, ', 1))


@pytest.mark.parametrize(
    ("plant", "expected_line", "reason"),
    [
        (
            sparse_3gb_manifest,
            f"bad manifest: manifest.json: {3 * 1024**3} bytes, more than the {MANIFEST_MAX_BYTES}",
            "BadManifest",
        ),
        (
            sparse_3gb_latest,
            f"bad LATEST: LATEST of 'digits' has {3 * 1024**3} bytes, more than the {LATEST_MAX_BYTES}",
            "BadLatest",
        ),
        (
            latest_holds_a_token,
            f"bad LATEST: LATEST of 'digits' is not a valid version ({len(TOKEN)} bytes, sha256 ",
            "BadLatest",
        ),
        (latest_is_not_utf8, "bad LATEST: LATEST of 'digits' is not a valid version (4 bytes, sha256 ", "BadLatest"),
        (manifest_is_not_utf8, "bad manifest: manifest.json: not UTF-8 (byte 11 of ", "BadManifest"),
        (manifest_is_not_json, "bad manifest: manifest.json: not valid JSON (Expecting value at line 1", "BadManifest"),
        (manifest_nests_too_deeply, "bad manifest: manifest.json: nested too deeply", "BadManifest"),
        (
            manifest_with_secret_metric_names,
            "bad manifest: model: String should have at most 63 characters; metrics.<key>: Input should be a valid",
            "BadManifest",
        ),
        (manifest_duplicates_a_secret_key, "bad manifest: manifest.json: duplicate keys ['<key>']", "BadManifest"),
    ],
    ids=[
        "sparse-3gb-manifest",
        "sparse-3gb-latest",
        "latest-holds-a-token",
        "latest-not-utf8",
        "manifest-not-utf8",
        "manifest-not-json",
        "manifest-nested-too-deeply",
        "manifest-secret-names-in-schema-errors",
        "manifest-secret-duplicate-key",
    ],
)
def test_oversized_and_malformed_files_are_refused_by_size_and_digest_never_by_content(
    published: PublishedModels,
    tmp_path: Path,
    plant: Callable[[Path, Path], None],
    expected_line: str,
    reason: str,
) -> None:
    root = copy_store(published, tmp_path)
    plant(root, tmp_path)

    done = run_guarded(
        loader_args(f"file://{root}", published.key_dir, tmp_path / "models"), tmp_path / "termination-log"
    )

    assert done.returncode == 79, done.stderr
    assert done.stderr.startswith(f"kubemaas load-model: {expected_line}"), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.termination["reason"] == reason
    assert_nothing_revealed(done, published.key)


def assert_nothing_revealed(done: Run, key: bytes) -> None:
    """Neither the token (or any 16 characters of it) nor any rendering of the key or its bytes."""
    message = str(done.termination["message"])
    for text in (done.stderr, message):
        assert all(TOKEN[i : i + 16] not in text for i in range(len(TOKEN) - 16)), text
        for encoding in (key.hex(), base64.b64encode(key).decode(), repr(key)):
            assert encoding not in text, text
        # How Python quotes a byte it cannot decode: "can't decode byte 0x8f in position 0", "b'\x8f...".
        assert f"0x{key[0]:02x}" not in text, text
        assert f"\\x{key[0]:02x}" not in text, text
        assert "can't decode" not in text, text
    assert "Traceback" not in done.stderr
    assert done.seconds < SECONDS
