"""The artifact store in a bucket (kubemaas.runtime.object_store) against the local cluster's real S3 server.

Each test has a bucket of its own on the server every other S3 test uses (e2e/cluster/object_store.py): what
a publisher writes, a reader resolves, decrypts and refuses there exactly as on a claim.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from e2e.cluster.object_store import ObjectStore
from kubemaas.contract.store import (
    S3_ACCESS_KEY_FILE,
    S3_CREDENTIALS_DIR,
    S3_ENDPOINT,
    S3_PATH_STYLE,
    S3_REGION,
    S3_SECRET_KEY_FILE,
    S3Settings,
)
from kubemaas.runtime.artifacts import ArtifactStoreError, InvalidLatestError, TensorSpec, VersionExistsError
from kubemaas.runtime.crypto import Keyring
from kubemaas.runtime.errors import (
    ManifestTamperedError,
    NoSuchBucketError,
    ObjectAccessDeniedError,
    ObjectChangedError,
    TamperedChunkError,
)
from kubemaas.runtime.keyring import write_keyring_dir
from kubemaas.runtime.object_client import client_for
from kubemaas.runtime.object_store import ObjectArtifactStore, ObjectModelVersion

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEY = bytes(range(32))
KEYRING = Keyring({"k1": KEY}, "k1")
SPEC = [TensorSpec(name="pixels", datatype="FP32", dims=[64])]
MODEL = "digits"
CHUNK = 64 * 1024


def settings_for(server: ObjectStore, directory: Path, *, secret: str | None = None) -> S3Settings:
    """What a pod gets: the endpoint, and the keys as the files of a mounted Secret."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / S3_ACCESS_KEY_FILE).write_text(server.access_key_id)
    (directory / S3_SECRET_KEY_FILE).write_text(secret if secret is not None else server.secret_access_key)
    return S3Settings(
        endpoint_url=server.endpoint_url, region=server.region, path_style=True, credentials_dir=directory
    )


@pytest.fixture
def settings(s3_server: ObjectStore, tmp_path: Path) -> S3Settings:
    return settings_for(s3_server, tmp_path / "credentials")


@pytest.fixture
def client(settings: S3Settings) -> S3Client:
    return client_for(settings)


@pytest.fixture
def bucket(client: S3Client) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


def plaintext(tmp_path: Path, size: int, name: str = "model.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def publish(store: ObjectArtifactStore, source: Path, version: str, now: datetime | None = None) -> ObjectModelVersion:
    return store.publish(
        source, model=MODEL, version=version, key=KEY, key_id="k1", inputs=SPEC, outputs=SPEC, chunk_size=CHUNK, now=now
    )


def keys(client: S3Client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", ()))


def decrypted(store: ObjectArtifactStore, resolved: ObjectModelVersion, out: Path) -> bytes:
    with store.open_authenticated(resolved, KEYRING) as artifact:
        artifact.decrypt_to(out)
    return out.read_bytes()


def test_a_published_version_is_only_ciphertext_in_the_bucket_and_decrypts_to_the_model(
    client: S3Client, bucket: str, tmp_path: Path
) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}/teams/vision", client)
    model = plaintext(tmp_path, 3 * CHUNK + 17)
    published = publish(store, model, "v1")
    assert store.latest_version(MODEL) == "v1"
    artifact = f"teams/vision/digits/v1/{published.manifest.artifact}"
    assert keys(client, bucket) == sorted(
        ["teams/vision/digits/LATEST", "teams/vision/digits/v1/manifest.json", artifact]
    )
    stored = client.get_object(Bucket=bucket, Key=artifact)["Body"].read()
    assert model.read_bytes()[:4096] not in stored, "plaintext in the bucket"
    resolved = store.resolve(MODEL)
    assert resolved.manifest.sha256 == published.manifest.sha256
    assert decrypted(store, resolved, tmp_path / "out.pt") == model.read_bytes()
    with pytest.raises(VersionExistsError):
        publish(store, model, "v1")


def test_racing_publishers_of_one_version_leave_one_whole_version(
    client: S3Client, bucket: str, tmp_path: Path
) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}", client)
    models = [plaintext(tmp_path, 2 * CHUNK + i, f"m{i}.pt") for i in range(4)]
    outcomes: list[str] = []
    start = threading.Barrier(len(models))

    def one(source: Path) -> None:
        # Past the existence check at once, so the manifest's conditional write is what decides.
        start.wait()
        try:
            publish(store, source, "v1")
            outcomes.append(source.name)
        except VersionExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=one, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o != "refused"]
    assert len(winners) == 1, outcomes
    resolved = store.resolve(MODEL, "v1")
    assert decrypted(store, resolved, tmp_path / "out.pt") == (tmp_path / winners[0]).read_bytes()
    # The losers deleted their artifacts: one artifact, one manifest, LATEST.
    assert len(keys(client, bucket)) == 3, keys(client, bucket)


def test_latest_only_moves_forward_under_racing_publishers(client: S3Client, bucket: str, tmp_path: Path) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}/p", client)
    source = plaintext(tmp_path, CHUNK)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    versions = [f"v{i}" for i in range(1, 7)]
    for i, version in enumerate(versions):
        publish(store, source, version, now=created + timedelta(minutes=i))
    errors: list[BaseException] = []

    def advance(version: str) -> None:
        try:
            for _ in range(5):
                store.advance_latest(MODEL, version)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=advance, args=(v,)) for v in reversed(versions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert store.latest_version(MODEL) == "v6"
    assert store.advance_latest(MODEL, "v2") is False and store.latest_version(MODEL) == "v6"


def test_a_publisher_killed_during_its_upload_leaves_no_version(
    settings: S3Settings, client: S3Client, bucket: str, tmp_path: Path
) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}", client)
    publish(store, plaintext(tmp_path, CHUNK, "old.pt"), "v1")
    big = plaintext(tmp_path, 96 * 1024 * 1024, "big.pt")  # 12 parts of 8 MiB
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from kubemaas.contract.store import S3Settings\n"
        "from kubemaas.runtime.object_store import ObjectArtifactStore\n"
        "from kubemaas.runtime.artifacts import TensorSpec\n"
        "spec = [TensorSpec(name='pixels', datatype='FP32', dims=[64])]\n"
        f"settings = S3Settings(endpoint_url={settings.endpoint_url!r}, region={settings.region!r}, "
        f"path_style=True, credentials_dir=Path({str(settings.credentials_dir)!r}))\n"
        f"store = ObjectArtifactStore.from_uri('s3://{bucket}', settings)\n"
        f"store.publish(Path({str(big)!r}), model='{MODEL}', version='v2', key=bytes(range(32)), key_id='k1', "
        "inputs=spec, outputs=spec)\n"
    )
    publisher = subprocess.Popen([sys.executable, "-c", script])
    try:
        uploading = wait_until(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"), 120)
        assert uploading, "the publisher never started its multipart upload"
        publisher.send_signal(signal.SIGKILL)
    finally:
        publisher.wait()
    assert publisher.returncode == -signal.SIGKILL
    assert not store.has_version(MODEL, "v2")
    with pytest.raises(ArtifactStoreError, match="no version 'v2'"):
        store.resolve(MODEL, "v2")
    assert store.latest_version(MODEL) == "v1"
    assert not any(key.endswith("manifest.json") and "/v2/" in key for key in keys(client, bucket))


def wait_until(check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)  # polls the S3 server: it has no watch
    return None


def test_a_changed_byte_or_manifest_or_a_replaced_object_is_refused(
    client: S3Client, bucket: str, tmp_path: Path
) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}", client)
    publish(store, plaintext(tmp_path, 5 * CHUNK), "v1")
    resolved = store.resolve(MODEL)
    original = client.get_object(Bucket=bucket, Key=resolved.artifact_key)["Body"].read()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=resolved.artifact_key, Body=bytes(changed))
    with pytest.raises(TamperedChunkError):
        decrypted(store, store.resolve(MODEL), tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()

    client.put_object(Bucket=bucket, Key=resolved.artifact_key, Body=original)
    manifest_key = f"{resolved.prefix}/manifest.json"
    manifest = client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    edited = {**json.loads(manifest), "metrics": {"heldOutAccuracy": 0.99}}  # the MAC kept, a field changed
    client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(edited).encode())
    with pytest.raises(ManifestTamperedError):
        decrypted(store, store.resolve(MODEL), tmp_path / "b.pt")

    # Replaced between the header's check and the chunks: every ranged GET is pinned to the ETag first seen.
    client.put_object(Bucket=bucket, Key=manifest_key, Body=manifest)
    with store.open_authenticated(store.resolve(MODEL), KEYRING) as artifact:
        client.put_object(Bucket=bucket, Key=resolved.artifact_key, Body=original + b"")  # same bytes, new write
        client.put_object(Bucket=bucket, Key=resolved.artifact_key, Body=bytes(changed))
        with pytest.raises(ObjectChangedError):
            artifact.decrypt_to(tmp_path / "c.pt")


def test_an_oversized_latest_is_refused_without_reading_it(client: S3Client, bucket: str) -> None:
    store = ObjectArtifactStore(f"s3://{bucket}", client)
    client.put_object(Bucket=bucket, Key="digits/LATEST", Body=b"v" * 100_000)
    with pytest.raises(InvalidLatestError, match="100000 bytes"):
        store.latest_version(MODEL)
    client.put_object(Bucket=bucket, Key="digits/LATEST", Body=b"")
    assert store.latest_version(MODEL) is None


def test_wrong_credentials_and_a_missing_bucket_name_the_bucket_never_the_keys(
    s3_server: ObjectStore, bucket: str, tmp_path: Path
) -> None:
    wrong = settings_for(s3_server, tmp_path / "wrong", secret="not-the-secret-" + uuid.uuid4().hex)
    with pytest.raises(ObjectAccessDeniedError) as denied:
        ObjectArtifactStore(f"s3://{bucket}/p", client_for(wrong)).latest_version(MODEL)
    message = str(denied.value)
    assert f"s3://{bucket}/p/digits/LATEST" in message and "access denied" in message
    for secret in (s3_server.access_key_id, s3_server.secret_access_key, "not-the-secret-"):
        assert secret not in message
    right = settings_for(s3_server, tmp_path / "right")
    with pytest.raises(NoSuchBucketError, match="bucket 'no-such-bucket-here' does not exist"):
        ObjectArtifactStore("s3://no-such-bucket-here/p", client_for(right)).resolve(MODEL)


def load_model(
    settings: S3Settings, uri: str, tmp_path: Path, name: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    """`kubemaas load-model` as the serving pod's init container runs it, its bucket reached through the
    KUBEMAAS_S3_* environment the operator renders."""
    keys = tmp_path / "keys"
    if not keys.exists():
        write_keyring_dir(keys, {"k1": KEY}, "k1")
    termination = tmp_path / f"{name}.termination"
    environ = {
        **os.environ,
        S3_ENDPOINT: str(settings.endpoint_url),
        S3_REGION: str(settings.region),
        S3_PATH_STYLE: "true",
        S3_CREDENTIALS_DIR: str(settings.credentials_dir),
    }
    args = [f"--store-uri={uri}", f"--model={MODEL}", f"--key-dir={keys}", f"--repository={tmp_path / name}"]
    done = subprocess.run(
        [sys.executable, "-m", "kubemaas.cli", "load-model", *args, "--backend=python", "--instance-kind=CPU",
         f"--termination-log={termination}"],
        capture_output=True, text=True, env=environ, timeout=120, check=False,
    )  # fmt: skip
    return done, json.loads(termination.read_text())


def test_the_loader_streams_a_version_from_the_bucket_and_refuses_denied_or_tampered_ones(
    s3_server: ObjectStore, client: S3Client, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/models"
    store = ObjectArtifactStore(uri, client)
    model = plaintext(tmp_path, 6 * CHUNK + 5)
    published = publish(store, model, "v1")
    settings = settings_for(s3_server, tmp_path / "credentials")

    done, report = load_model(settings, uri, tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / MODEL / "1" / "model.pt").read_bytes() == model.read_bytes()
    assert report["version"] == "v1" and report["sha256"] == published.manifest.sha256

    wrong = settings_for(s3_server, tmp_path / "wrong", secret="not-the-secret-" + uuid.uuid4().hex)
    done, report = load_model(wrong, uri, tmp_path, "denied")
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith(f"kubemaas load-model: access denied: read {uri}/digits/LATEST"), done.stderr
    assert report["reason"] == "AccessDenied"
    for secret in (s3_server.access_key_id, s3_server.secret_access_key, "not-the-secret-"):
        assert secret not in done.stderr + json.dumps(report)
    assert not (tmp_path / "denied").exists() or not any((tmp_path / "denied").iterdir())

    artifact = client.get_object(Bucket=bucket, Key=published.artifact_key)["Body"].read()
    changed = bytearray(artifact)
    changed[-100] ^= 0x01
    client.put_object(Bucket=bucket, Key=published.artifact_key, Body=bytes(changed))
    done, report = load_model(settings, uri, tmp_path, "tampered")
    assert done.returncode == 79, done.stderr
    assert report["reason"] == "TamperedArtifact", report
    assert not (tmp_path / "tampered" / MODEL).exists()


class _IdentityBroker(threading.Thread):
    """An STS endpoint on loopback that answers AssumeRoleWithWebIdentity for one role and one token with the S3
    server's keys: what a cloud's STS does for a pod's projected ServiceAccount token (IRSA), reduced to the one
    call the SDK's web-identity provider makes. It records what it was asked. The keys it issues carry no
    session token: the local S3 server, with one account and no STS of its own, refuses a token it did not
    issue (InvalidToken), as S3 would."""

    def __init__(self, role: str, token: str, server: ObjectStore) -> None:
        super().__init__(daemon=True)
        broker = self
        self.asked: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the SDK posts the form; some versions use GET: same parameters
                length = int(self.headers.get("Content-Length", "0"))
                self._answer(dict(urllib.parse.parse_qsl(self.rfile.read(length).decode())))

            def do_GET(self) -> None:
                self._answer(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)))

            def _answer(self, form: dict[str, str]) -> None:
                broker.asked.append(form)
                good = form.get("Action") == "AssumeRoleWithWebIdentity" and form.get("RoleArn") == role
                good = good and form.get("WebIdentityToken") == token
                body = (_STS_ANSWER if good else _STS_REFUSAL).format(
                    key=server.access_key_id, secret=server.secret_access_key
                )
                self.send_response(200 if good else 403)
                self.send_header("Content-Type", "text/xml")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def run(self) -> None:
        self.httpd.serve_forever()


_STS_ANSWER = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{key}</AccessKeyId>
<SecretAccessKey>{secret}</SecretAccessKey><SessionToken></SessionToken>
<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<SubjectFromWebIdentityToken>system:serviceaccount:team-a:digits</SubjectFromWebIdentityToken>
<AssumedRoleUser><Arn>arn:aws:sts::000000000000:assumed-role/models/digits</Arn>
<AssumedRoleId>AROA:digits</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult>
<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>"""
_STS_REFUSAL = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>
<Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>
<RequestId>2</RequestId></ErrorResponse>"""


def test_without_a_credentials_secret_the_web_identity_of_the_pod_is_used(
    s3_server: ObjectStore, client: S3Client, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `credentialsSecretRef`: the pod has no key at all, only the token its ServiceAccount projects and the
    role it may assume (what an IRSA-style webhook sets); the SDK's default chain trades the token for keys."""
    store = ObjectArtifactStore(f"s3://{bucket}/p", client)
    publish(store, plaintext(tmp_path, CHUNK), "v1")
    token = tmp_path / "token"
    token.write_text("eyJ.projected.token")
    role = "arn:aws:iam::000000000000:role/models"
    broker = _IdentityBroker(role, "eyJ.projected.token", s3_server)
    broker.start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ROLE_ARN", role)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", broker.url)
    pod = S3Settings(endpoint_url=s3_server.endpoint_url, region=s3_server.region, path_style=True)
    try:
        assert ObjectArtifactStore(f"s3://{bucket}/p", client_for(pod)).latest_version(MODEL) == "v1"
        assert [a.get("WebIdentityToken") for a in broker.asked] == ["eyJ.projected.token"]
        token.write_text("a token the broker does not accept")  # a ServiceAccount the role does not trust
        with pytest.raises(ObjectAccessDeniedError) as refused:
            ObjectArtifactStore(f"s3://{bucket}/p", client_for(pod)).latest_version(MODEL)
        assert s3_server.secret_access_key not in str(refused.value)
    finally:
        broker.httpd.shutdown()
