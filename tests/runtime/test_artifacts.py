"""Artifact store: layout, manifest, URIs, and atomic publication under injected crashes."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubemaas.api.base import LATEST, MODEL_NAME_PATTERN, VERSION_PATTERN
from kubemaas.runtime import artifacts
from kubemaas.runtime.artifacts import (
    ArtifactStore,
    ArtifactStoreError,
    Manifest,
    TensorSpec,
    VersionExistsError,
    resolve_uri,
)
from kubemaas.runtime.crypto import Keyring, decrypt_file, manifest_mac
from kubemaas.runtime.errors import ManifestTamperedError, UnauthenticatedManifestError, WrongKeyError

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
    raw = json.loads((tmp_path / MODEL / "v1" / "manifest.json").read_text())
    assert raw["keyId"] == "k1" and raw["format"] == "TorchScript" and raw["quantization"] == "None"
    assert raw["inputs"] == [{"name": "pixels", "datatype": "FP32", "dims": [64]}]
    assert raw["outputs"] == [{"name": "logits", "datatype": "FP32", "dims": [10]}]
    assert raw["metrics"] == {"accuracy": 0.97} and raw["frameworks"] == {"torch": "test"}
    assert {"createdAt", "sha256", "size", "schemaVersion", "artifact"} <= raw.keys()
    # Readers tolerate fields a newer writer added.
    raw["somethingNew"] = 1
    assert Manifest.model_validate(raw).key_id == "k1"


def _authenticate(store: ArtifactStore, version: str = "v1", keyring: Keyring = KEYRING) -> int:
    with artifacts.open_authenticated(store.resolve(MODEL, version), keyring) as artifact:
        return artifact.header.plaintext_size


def _rewrite(path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def test_published_manifest_is_authenticated_and_decrypts_through_the_same_open_file(tmp_path: Path) -> None:
    plain = _plaintexts(tmp_path)
    store = ArtifactStore(tmp_path / "store")
    published = _publish(store, plain["v1"], "v1")
    raw = json.loads((published.directory / "manifest.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{64}", raw["mac"])
    assert raw["sha256"] == hashlib.sha256(plain["v1"].read_bytes()).hexdigest()  # kept for provenance
    resolved = store.resolve(MODEL, "v1")
    assert resolved == published
    with artifacts.open_authenticated(resolved, KEYRING) as artifact:
        # The path is replaced after the check: the open file is what gets decrypted.
        os.replace(_publish(store, plain["v2"], "v2").artifact, published.artifact)
        artifact.decrypt_to(tmp_path / "out.pt")
    assert (tmp_path / "out.pt").read_bytes() == plain["v1"].read_bytes()


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(sha256="0" * 64),
        lambda m: m.update(size=m["size"] + 1),
        lambda m: m["inputs"][0].update(dims=[65]),
        lambda m: m["outputs"].append({"name": "extra", "datatype": "FP32", "dims": [1]}),
        lambda m: m.update(createdAt="2020-01-01T00:00:00Z"),
        lambda m: m["metrics"].update(accuracy=0.99),
        lambda m: m.update(keyId="k2"),
        lambda m: m.update(quantization="DynamicInt8"),
        lambda m: m.update(format="ONNX"),
        lambda m: m.update(schemaVersion=0),
        lambda m: m.update(somethingNew=1),
        lambda m: m.pop("frameworks"),
        lambda m: m.update(mac=m["mac"][:-1] + ("0" if m["mac"][-1] != "0" else "1")),
    ],
    ids=[
        "sha256", "size", "input-dims", "extra-output", "created-at", "metrics", "key-id", "quantization", "format",
        "schema-version", "added-field", "removed-field", "mac",
    ],
)  # fmt: skip
def test_any_change_to_the_manifest_is_detected(tmp_path: Path, change: Callable[[dict[str, Any]], object]) -> None:
    store = ArtifactStore(tmp_path / "store")
    _publish(store, _plaintexts(tmp_path)["v1"], "v1")
    assert _authenticate(store) == 5000
    _rewrite(tmp_path / "store" / MODEL / "v1" / "manifest.json", change)
    with pytest.raises(ManifestTamperedError, match="manifest authentication failed"):
        _authenticate(store)


def test_manifests_cannot_be_swapped_between_versions_models_or_publications(tmp_path: Path) -> None:
    plain = _plaintexts(tmp_path)
    store, twin = ArtifactStore(tmp_path / "store"), ArtifactStore(tmp_path / "twin")
    v1, v2 = _publish(store, plain["v1"], "v1"), _publish(store, plain["v2"], "v2")
    other_model = store.publish(
        plain["v1"], model="other", version="v1", key=KEY, key_id="k1", inputs=INPUTS, outputs=OUTPUTS
    )
    twin_v1 = _publish(twin, plain["v1"], "v1")  # same model, version, key and plaintext; another file
    for source in (v2, twin_v1):
        shutil.copy(source.directory / "manifest.json", v1.directory / "manifest.json")
        if source is v2:  # the directory check would refuse it as is: rename it to v1 as an attacker would
            _rewrite(v1.directory / "manifest.json", lambda m: m.update(version="v1"))
        with pytest.raises(ManifestTamperedError):
            _authenticate(store)
    shutil.copy(other_model.directory / "manifest.json", v1.directory / "manifest.json")
    with pytest.raises(artifacts.MisplacedManifestError, match="manifest describes 'other' 'v1', not 'digits' 'v1'"):
        store.resolve(MODEL, "v1")
    _rewrite(v1.directory / "manifest.json", lambda m: m.update(model=MODEL))
    with pytest.raises(ManifestTamperedError):
        _authenticate(store)


def test_a_manifest_without_mac_is_refused(tmp_path: Path) -> None:
    """A manifest as published before manifests were authenticated (or with its MAC removed)."""
    store = ArtifactStore(tmp_path / "store")
    published = _publish(store, _plaintexts(tmp_path)["v1"], "v1")
    old = published.manifest.model_dump_json(by_alias=True, indent=2)  # exactly what the old writer wrote
    (published.directory / "manifest.json").write_text(old + "\n")
    assert store.resolve(MODEL, "v1").manifest == published.manifest  # key-less readers still read it
    with pytest.raises(UnauthenticatedManifestError, match="has no 'mac': it was written before manifests were"):
        _authenticate(store)


def test_the_mac_needs_the_key_and_refuses_a_wrong_one_as_such(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    published = _publish(store, _plaintexts(tmp_path)["v1"], "v1")
    with pytest.raises(WrongKeyError):
        _authenticate(store, keyring=Keyring({"k1": bytes(32)}, "k1"))
    with pytest.raises(WrongKeyError):
        manifest_mac(published.artifact, b"{}", key=bytes(32))
    # Forging needs the key: a MAC made with another key over the same document does not verify.
    document = dict(published.document)
    forged = hmac.new(bytes(32), artifacts.canonical_manifest(document), hashlib.sha256).hexdigest()
    _rewrite(published.directory / "manifest.json", lambda m: m.update(mac=forged))
    with pytest.raises(ManifestTamperedError) as info:
        _authenticate(store)
    assert KEY.hex() not in str(info.value) and repr(KEY) not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "not a JSON object"),
        ("{", "not valid JSON"),
        ('{"sha256": "a", "sha256": "b"}', "duplicate keys \\['sha256'\\]"),
        ('{"size": NaN}', "NaN is not a JSON number"),
        ('{"mac": "ABC"}', "'mac' must be 64 lower-case hex digits"),
    ],
)
def test_manifests_two_parsers_could_read_differently_are_refused(text: str, message: str) -> None:
    with pytest.raises(artifacts.InvalidManifestError, match=message):
        artifacts.parse_manifest(text.encode())


def test_canonical_bytes_ignore_layout_and_key_order_but_not_values() -> None:
    document: dict[str, object] = {"b": [1, 2.5, None], "a": {"y": "é", "x": True}, "mac": "ignored"}
    reordered = json.loads(json.dumps(dict(reversed(list(document.items()))), indent=4))
    assert artifacts.canonical_manifest(reordered) == artifacts.canonical_manifest(document)
    assert artifacts.canonical_manifest(document) == b'{"a":{"x":true,"y":"\\u00e9"},"b":[1,2.5,null]}'
    assert artifacts.canonical_manifest({**document, "b": [1, 2.5000001, None]}) != artifacts.canonical_manifest(
        document
    )


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
    checks: list[tuple[str, str, Callable[[], Path]]] = [
        ("model name", MODEL_NAME_PATTERN, lambda: store.model_dir(name)),
        ("version", VERSION_PATTERN, lambda: store.version_dir(MODEL, name)),
    ]
    for what, pattern, path in checks:
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
