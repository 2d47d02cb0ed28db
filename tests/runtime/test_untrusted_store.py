"""Reading the store beneath its root (kubemaas.runtime.beneath), as the trainer's side uses it, and core
dumps off in every runtime process that holds a key or plaintext.

The loader's cases (the review's reproductions): tests/serving/test_untrusted_store.py.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from kubemaas.contract.termination import ExitCode
from kubemaas.runtime.artifacts import (
    ArtifactStore,
    InvalidLatestError,
    InvalidManifestError,
    TensorSpec,
    UnsafeEntryError,
)
from kubemaas.runtime.beneath import Beneath, Kind, OversizedFileError
from kubemaas.runtime.checkpoint import DirectoryCheckpoints
from kubemaas.runtime.crypto import Keyring
from kubemaas.runtime.trainer import classify

KEY = bytes(range(32))
KEYRING = Keyring({"k1": KEY}, "k1")
SPEC = [TensorSpec(name="x", datatype="FP32", dims=[4])]


@pytest.fixture
def tree(tmp_path: Path) -> Beneath:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_bytes(b"0123456789")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"the token")
    return Beneath(root)


def test_regular_files_and_directories_read_as_usual(tree: Beneath) -> None:
    assert tree.read(tree.root / "a" / "b" / "file", cap=10) == b"0123456789"
    assert tree.read(Path("a/./b/file"), cap=10) == b"0123456789"
    assert tree.kind(tree.root / "a" / "b") is Kind.DIRECTORY
    assert tree.kind(tree.root / "a" / "missing") is None
    assert tree.entries(tree.root / "a") == {"b": Kind.DIRECTORY}
    assert tree.entries(tree.root / "nothing-here") == {}
    with pytest.raises(FileNotFoundError):
        tree.read(tree.root / "a" / "missing", cap=10)


def test_a_link_at_any_component_is_refused(tree: Beneath, tmp_path: Path) -> None:
    (tree.root / "link-dir").symlink_to(tmp_path / "outside")
    (tree.root / "a" / "link-file").symlink_to(tmp_path / "outside" / "secret")
    (tree.root / "a" / "inner").symlink_to("b")  # relative, and pointing inside: still a link
    for path, what in (
        (Path("link-dir/secret"), "link-dir under .* is a symbolic link, not a directory"),
        (Path("a/link-file"), "a/link-file under .* is a symbolic link, not a regular file"),
        (Path("a/inner/file"), "a/inner under .* is a symbolic link, not a directory"),
    ):
        with pytest.raises(UnsafeEntryError, match=what) as refused:
            tree.read(tree.root / path, cap=100)
        assert "the token" not in str(refused.value)
    assert tree.kind(tree.root / "a" / "link-file") is Kind.LINK  # looked at, not followed
    with pytest.raises(UnsafeEntryError):
        tree.kind(tree.root / "link-dir" / "secret")


def test_special_files_are_refused_without_blocking(tree: Beneath) -> None:
    os.mkfifo(tree.root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tree.root / "sock"))
    (tree.root / "dir").mkdir()
    outcome: list[BaseException] = []

    def read_all() -> None:
        for name in ("fifo", "sock", "dir"):
            try:
                tree.read(tree.root / name, cap=10)
            except UnsafeEntryError as refused:
                outcome.append(refused)

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=10)
    listener.close()
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert [str(e).split(" under ")[0] + " " + str(e).split(" is a ")[1] for e in outcome] == [
        "fifo FIFO, not a regular file",
        "sock socket, not a regular file",
        "dir directory, not a regular file",
    ]
    with pytest.raises(UnsafeEntryError, match=r"a/b/file under .* is a regular file, not a directory"):
        tree.read(tree.root / "a" / "b" / "file" / "x", cap=10)


def test_paths_outside_the_root_are_refused(tree: Beneath, tmp_path: Path) -> None:
    for path in (tmp_path / "outside" / "secret", Path("../outside/secret"), Path("a/../../outside/secret")):
        with pytest.raises(UnsafeEntryError):
            tree.read(path, cap=100)


def test_the_cap_is_checked_before_reading_and_bounds_the_read(tree: Beneath) -> None:
    with pytest.raises(OversizedFileError, match=r"a/b/file under .* has 10 bytes, more than the 9") as refused:
        tree.read(tree.root / "a" / "b" / "file", cap=9)
    assert refused.value.size == 10
    sparse = tree.root / "sparse"
    with sparse.open("wb") as file:
        file.truncate(3 * 1024**3)
    with pytest.raises(OversizedFileError):
        tree.read(sparse, cap=1024)


def _store(tmp_path: Path) -> ArtifactStore:
    store = ArtifactStore(tmp_path / "claim" / "store", anchor=tmp_path / "claim")
    plaintext = tmp_path / "model.pt"
    plaintext.write_bytes(os.urandom(3000))
    for version in ("v1", "v2"):
        store.publish(plaintext, model="m", version=version, key=KEY, key_id="k1", inputs=SPEC, outputs=SPEC)
    return store


def test_the_publisher_replaces_a_planted_latest_and_leaves_its_target_alone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    target = tmp_path / "outside"
    target.write_text("not the store's")
    latest = store.root / "m" / "LATEST"
    latest.unlink()
    latest.symlink_to(target)
    with pytest.raises(UnsafeEntryError):
        store.latest_version("m")
    assert store.advance_latest("m", "v1")
    assert not latest.is_symlink() and store.latest_version("m") == "v1"
    assert target.read_text() == "not the store's"
    latest.write_text("x" * 300)
    with pytest.raises(InvalidLatestError, match="has 300 bytes, more than the 256"):
        store.latest_version("m")
    assert store.advance_latest("m", "v2") and store.latest_version("m") == "v2"


def test_a_link_between_the_claim_and_the_store_root_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    moved = tmp_path / "moved"
    store.root.rename(moved)
    store.root.symlink_to(moved)
    with pytest.raises(UnsafeEntryError, match=r"store under .*claim is a symbolic link"):
        store.resolve("m", "v1")
    assert ArtifactStore(store.root).resolve("m", "v1").manifest.version == "v1"  # the root itself is trusted


def test_the_publisher_does_not_write_through_a_planted_link(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "claim" / "store", anchor=tmp_path / "claim")
    (tmp_path / "elsewhere").mkdir()
    store.root.mkdir(parents=True)
    (store.root / "m").symlink_to(tmp_path / "elsewhere")
    plaintext = tmp_path / "model.pt"
    plaintext.write_bytes(os.urandom(100))
    with pytest.raises(UnsafeEntryError, match=r"m under .* is a symbolic link"):
        store.publish(plaintext, model="m", version="v1", key=KEY, key_id="k1", inputs=SPEC, outputs=SPEC)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_trainer_fails_permanently_on_what_a_store_writer_planted() -> None:
    for error in (UnsafeEntryError("x"), InvalidLatestError("x"), InvalidManifestError("x")):
        assert classify(error) is ExitCode.ARTIFACT


def test_checkpoints_that_are_links_or_fifos_are_not_read(tmp_path: Path) -> None:
    claim = tmp_path / "claim"
    directory = claim / "store" / "m" / ".checkpoints" / "v1"
    store = DirectoryCheckpoints(directory, model="m", version="v1", keyring=KEYRING, root=claim)
    store.save(10, {"w": torch.tensor([10.0])})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.path_for(10).rename(elsewhere / store.path_for(20).name)
    store.path_for(20).symlink_to(elsewhere / store.path_for(20).name)  # an authentic step 20, by a link
    os.mkfifo(store.path_for(30))
    assert store.steps() == []
    assert store.load_latest() is None
    # A link in the directory chain, on the claim: refused, not followed.
    (claim / "store" / "m" / ".checkpoints").rename(tmp_path / "checkpoints")
    (claim / "store" / "m" / ".checkpoints").symlink_to(tmp_path / "checkpoints")
    with pytest.raises(UnsafeEntryError):
        store.steps()


@pytest.mark.parametrize(
    "program",
    [
        "from kubemaas.runtime import loader; loader.main(['--store-uri=file:///nowhere', '--model=m', "
        "'--key-dir=/nowhere', '--repository=/nowhere', '--termination-log=/dev/null'])",
        "from kubemaas.runtime import trainer; trainer.run(lambda h: None, {'KUBEMAAS_TERMINATION_LOG': '/dev/null'})",
        "from kubemaas.runtime import launch\nlaunch.main(['$(X)'], {'KUBEMAAS_TERMINATION_LOG': '/dev/null'})",
    ],
    ids=["loader", "trainer", "launcher"],
)
def test_runtime_processes_that_hold_keys_or_plaintext_never_dump_core(program: str) -> None:
    """The entry point lowers RLIMIT_CORE to 0, hard limit included (so torchrun's workers inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if hard == 0:
        pytest.skip("this environment already forbids core dumps: nothing left for the entry point to lower")
    probe = f"{program}\nimport resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))"
    before = f"import resource; resource.setrlimit(resource.RLIMIT_CORE, ({hard}, {hard}))\n"
    done = subprocess.run(
        [sys.executable, "-c", before + probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "(0, 0)"
