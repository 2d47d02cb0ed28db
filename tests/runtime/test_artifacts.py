"""Artifact store: layout, manifest, URIs, and atomic publication under injected crashes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubemaas.api.base import MODEL_NAME_PATTERN, VERSION_PATTERN
from kubemaas.runtime import artifacts
from kubemaas.runtime.artifacts import (
    LATEST,
    ArtifactStore,
    ArtifactStoreError,
    Manifest,
    TensorSpec,
    VersionExistsError,
    resolve_uri,
)
from kubemaas.runtime.crypto import Keyring, decrypt_file

KEY = bytes(range(32))
KEYRING = Keyring({"k1": KEY}, "k1")
INPUTS = [TensorSpec(name="pixels", datatype="FP32", dims=[64])]
OUTPUTS = [TensorSpec(name="logits", datatype="FP32", dims=[10])]
MODEL = "digits"


def _publish(store: ArtifactStore, plaintext: Path, version: str) -> artifacts.ModelVersion:
    return store.publish(
        plaintext,
        model=MODEL,
        version=version,
        key=KEY,
        key_id="k1",
        inputs=INPUTS,
        outputs=OUTPUTS,
        frameworks={"torch": "test"},
        metrics={"accuracy": 0.97},
        chunk_size=1024,
    )


def _plaintexts(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for version, size in (("v1", 5000), ("v2", 7000)):
        path = tmp_path / f"{version}.pt"
        path.write_bytes(os.urandom(size))
        out[version] = path
    return out


def _assert_complete(store: ArtifactStore, version: artifacts.ModelVersion, plain: Path, tmp: Path) -> None:
    out = tmp / f"check-{version.manifest.version}.pt"
    decrypt_file(version.artifact, out, keyring=KEYRING, model=MODEL, version=version.manifest.version)
    data = out.read_bytes()
    out.unlink()
    assert data == plain.read_bytes()
    assert version.manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert version.manifest.size == len(data)


def test_publish_and_resolve(tmp_path: Path) -> None:
    plain = _plaintexts(tmp_path)
    store = ArtifactStore(tmp_path / "store")
    published = _publish(store, plain["v1"], "v1")
    assert sorted(p.name for p in published.directory.iterdir()) == ["manifest.json", "model.kmenc"]
    assert (store.root / MODEL / "LATEST").read_text() == "v1\n"
    _assert_complete(store, store.resolve(MODEL), plain["v1"], tmp_path)

    _publish(store, plain["v2"], "v2")
    assert store.resolve(MODEL, LATEST).manifest.version == "v2"
    assert store.resolve(MODEL, "v1").manifest.version == "v1"  # pins keep working
    assert store.versions(MODEL) == ["v1", "v2"]
    with pytest.raises(VersionExistsError):
        _publish(store, plain["v2"], "v2")


def test_manifest_is_camel_case_json_with_signature(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    _publish(store, _plaintexts(tmp_path)["v1"], "v1")
    import json

    raw = json.loads((tmp_path / MODEL / "v1" / "manifest.json").read_text())
    assert raw["keyId"] == "k1" and raw["format"] == "TorchScript" and raw["quantization"] == "None"
    assert raw["inputs"] == [{"name": "pixels", "datatype": "FP32", "dims": [64]}]
    assert raw["outputs"] == [{"name": "logits", "datatype": "FP32", "dims": [10]}]
    assert raw["metrics"] == {"accuracy": 0.97} and raw["frameworks"] == {"torch": "test"}
    assert {"createdAt", "sha256", "size", "schemaVersion", "artifact"} <= raw.keys()
    # Readers tolerate fields a newer writer added.
    raw["somethingNew"] = 1
    assert Manifest.model_validate(raw).key_id == "k1"


def test_unknown_model_and_version(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactStoreError, match="no published version"):
        store.resolve(MODEL)
    _publish(store, _plaintexts(tmp_path)["v1"], "v1")
    with pytest.raises(ArtifactStoreError, match="no version 'v9'"):
        store.resolve(MODEL, "v9")
    for bad in ("../x", ".hidden", "a/b", "Latest", ""):
        with pytest.raises(ArtifactStoreError):
            store.version_dir(MODEL, bad)


@pytest.mark.parametrize("name", ["digits", "Digits", "a" * 63, "a" * 64, "-x", "x.", "Latest"])
def test_store_names_follow_the_apis_rules(tmp_path: Path, name: str) -> None:
    """One rule: a model name or version the API accepts is one the store accepts, and no other."""
    store = ArtifactStore(tmp_path)
    for what, pattern, path in [
        ("model name", MODEL_NAME_PATTERN, lambda: store.model_dir(name)),
        ("version", VERSION_PATTERN, lambda: store.version_dir(MODEL, name)),
    ]:
        api_accepts = re.fullmatch(pattern, name) is not None and name != LATEST
        if api_accepts:
            path()
        else:
            with pytest.raises(ArtifactStoreError, match=what):
                path()


def test_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_uri("pvc://models/store/a", mount_root=tmp_path) == tmp_path / "models/store/a"
    assert resolve_uri("pvc://models", mount_root=tmp_path) == tmp_path / "models"
    assert resolve_uri("pvc://models/", mount_root=tmp_path) == tmp_path / "models"
    assert resolve_uri("file:///var/models", mount_root=tmp_path) == Path("/var/models")
    # The mount root is what the caller passes (parsed once by kubemaas.contract), never the process env.
    monkeypatch.setenv("KUBEMAAS_MOUNT_ROOT", str(tmp_path / "m"))
    assert resolve_uri("pvc://c/p", mount_root=artifacts.DEFAULT_MOUNT_ROOT) == Path("/mnt/kubemaas/c/p")
    for bad in ("s3://bucket/x", "pvc://Bad_Claim/x", "pvc://c/../etc", "file://relative", "/abs"):
        with pytest.raises(ArtifactStoreError):
            resolve_uri(bad, mount_root=tmp_path)
    assert ArtifactStore.from_uri("pvc://c/p", mount_root=tmp_path).root == tmp_path / "c/p"


def test_advance_latest_refuses_incomplete_versions(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    (tmp_path / MODEL / "v3").mkdir(parents=True)
    with pytest.raises(ArtifactStoreError, match="incomplete"):
        store.advance_latest(MODEL, "v3")


def test_latest_only_moves_forward(tmp_path: Path) -> None:
    """A late restart of the job that published v1 re-points LATEST at v1: it must stay on v2."""
    store = ArtifactStore(tmp_path / "store")
    plain = _plaintexts(tmp_path)
    first = datetime(2030, 1, 1, tzinfo=UTC)
    for version, day in (("v1", 1), ("v2", 2)):
        store.publish(
            plain[version], model=MODEL, version=version, key=KEY, key_id="k1",
            inputs=INPUTS, outputs=OUTPUTS, now=first.replace(day=day),
        )  # fmt: skip
    assert store.advance_latest(MODEL, "v1") is False
    assert store.latest_version(MODEL) == "v2"
    assert store.advance_latest(MODEL, "v2") is True  # idempotent for the current one
    # An older version published late (its createdAt is older) does not take LATEST either.
    store.publish(
        plain["v1"], model=MODEL, version="v0", key=KEY, key_id="k1",
        inputs=INPUTS, outputs=OUTPUTS, now=first,
    )  # fmt: skip
    assert store.latest_version(MODEL) == "v2"
    # LATEST naming a version that was deleted is replaced by any complete one.
    shutil.rmtree(store.root / MODEL / "v2")
    assert store.advance_latest(MODEL, "v1") is True
    assert store.resolve(MODEL).manifest.version == "v1"


# ------------------------------------------------------------------ crash injection

_FS_OPS = ("open", "write", "fsync", "mkdir", "rename", "replace")


class _Crash(Exception):
    pass


def _inject(monkeypatch: pytest.MonkeyPatch, at: int, on_crash: Callable[[], Any]) -> list[str]:
    """Make the ``at``-th file system operation (1-based) crash; return the names of all ops seen."""
    seen: list[str] = []
    for name in _FS_OPS:
        real = getattr(os, name)

        def op(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            seen.append(_name)
            if len(seen) == at:
                on_crash()
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, op)
    return seen


def _store_with_v1(case: Path) -> tuple[ArtifactStore, dict[str, Path]]:
    """A fresh store under ``case`` with v1 published, and the plaintexts of v1 and v2."""
    case.mkdir()
    plain = _plaintexts(case)
    store = ArtifactStore(case / "store")
    _publish(store, plain["v1"], "v1")
    return store, plain


def _count_publish_ops(tmp_path: Path) -> list[str]:
    store, plain = _store_with_v1(tmp_path / "count")
    with pytest.MonkeyPatch.context() as mp:
        seen = _inject(mp, at=0, on_crash=lambda: None)
        _publish(store, plain["v2"], "v2")
    return seen


@pytest.fixture(scope="module")
def publish_ops(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    seen = _count_publish_ops(tmp_path_factory.mktemp("ops"))
    # Guard against a refactor that hides the steps from the injector (the test would then be vacuous).
    assert {"fsync", "rename", "replace", "mkdir"} <= set(seen), seen
    return seen


def _check_after_crash(tmp_path: Path, store: ArtifactStore, plain: dict[str, Path]) -> str:
    """Readers see v1 or v2, complete; then a retry (as the restarted trainer does) finishes v2."""
    current = store.resolve(MODEL)
    assert current.manifest.version in {"v1", "v2"}
    _assert_complete(store, current, plain[current.manifest.version], tmp_path)
    for version in store.versions(MODEL):
        _assert_complete(store, store.resolve(MODEL, version), plain[version], tmp_path)
    store.remove_leftovers(MODEL)
    if store.has_version(MODEL, "v2"):
        store.advance_latest(MODEL, "v2")
    else:
        _publish(store, plain["v2"], "v2")
    _assert_complete(store, store.resolve(MODEL), plain["v2"], tmp_path)
    assert [p.name for p in (store.root / MODEL).glob(".*")] == [artifacts.LATEST_LOCK]
    return current.manifest.version


def test_exception_at_every_publish_step_leaves_old_or_new(tmp_path: Path, publish_ops: list[str]) -> None:
    seen_versions = set()
    for at in range(1, len(publish_ops) + 1):
        case = tmp_path / f"at-{at}"
        store, plain = _store_with_v1(case)

        def crash(at: int = at) -> None:
            raise _Crash(f"injected at operation {at} ({publish_ops[at - 1]})")

        with pytest.MonkeyPatch.context() as mp:
            _inject(mp, at, crash)
            with pytest.raises(_Crash):
                _publish(store, plain["v2"], "v2")
        seen_versions.add(_check_after_crash(case, store, plain))
    # Early crashes keep v1, crashes after the LATEST rename show v2: both sides were exercised.
    assert seen_versions == {"v1", "v2"}


def test_hard_crash_at_every_publish_step_leaves_old_or_new(tmp_path: Path, publish_ops: list[str]) -> None:
    """The process dies at each operation in turn: no cleanup handler runs (os._exit in a fork)."""
    seen_versions = set()
    for at in range(1, len(publish_ops) + 1):
        case = tmp_path / f"at-{at}"
        store, plain = _store_with_v1(case)
        pid = os.fork()
        if pid == 0:  # child: publish v2 and die mid-way
            code = 1
            try:
                with pytest.MonkeyPatch.context() as mp:
                    _inject(mp, at, lambda: os._exit(86))
                    _publish(store, plain["v2"], "v2")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 86, f"no crash at operation {at}"
        seen_versions.add(_check_after_crash(case, store, plain))
    assert seen_versions == {"v1", "v2"}


def test_created_at_is_recorded(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    published = store.publish(
        _plaintexts(tmp_path)["v1"], model=MODEL, version="v1", key=KEY, key_id="k1",
        inputs=INPUTS, outputs=OUTPUTS, now=when,
    )  # fmt: skip
    assert store.resolve(MODEL).manifest.created_at == when == published.manifest.created_at
