"""The local cluster's S3 server (e2e/cluster/object_store.py, versitygw v1.8.0) as the runtime uses it, through
boto3 from this machine: buckets, whole and ranged reads, multipart uploads, the conditional writes that
publication relies on (`LATEST` moves forward only), refused credentials, keys that never leak; and a pod on
the real node reaching it through its Service.

Every test works in a bucket of its own: the server is shared by the whole suite.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from kubernetes import client

from e2e.cluster import object_store
from e2e.cluster.object_store import ObjectStore
from e2e.conftest import SERIAL_NODE_SERVING, E2ECluster, RealNode

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedMultipartUploadTypeDef, CompletedPartTypeDef

PART = 5 * 1024 * 1024  # S3's smallest part but the last


def s3_client(store: ObjectStore, *, access_key_id: str | None = None, secret: str | None = None) -> S3Client:
    """boto3 for the server as the runtime configures it: path-style, the server's region, no retries (a refusal
    is the answer under test, not a fault to retry)."""
    return boto3.client(
        "s3",
        endpoint_url=store.endpoint_url,
        region_name=store.region,
        aws_access_key_id=access_key_id or store.access_key_id,
        aws_secret_access_key=secret or store.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def s3(s3_server: ObjectStore) -> S3Client:
    return s3_client(s3_server)


@pytest.fixture
def bucket(s3: S3Client) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def refusal(call: Callable[[], Any]) -> tuple[int, str]:
    """The HTTP status and S3 error code of a request that must fail."""
    with pytest.raises(ClientError) as raised:
        call()
    response = raised.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def test_put_get_ranged_get_and_list(s3: S3Client, bucket: str) -> None:
    body = bytes(range(256)) * 64
    put = s3.put_object(Bucket=bucket, Key="model/v1/model.kmenc", Body=body, ContentType="application/octet-stream")
    got = s3.get_object(Bucket=bucket, Key="model/v1/model.kmenc")
    assert got["Body"].read() == body
    assert got["ETag"] == put["ETag"] and got["ContentLength"] == len(body)

    ranged = s3.get_object(Bucket=bucket, Key="model/v1/model.kmenc", Range="bytes=1000-1999")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(body)}"
    assert ranged["Body"].read() == body[1000:2000]

    listed = s3.list_objects_v2(Bucket=bucket, Prefix="model/")
    assert [item["Key"] for item in listed.get("Contents", [])] == ["model/v1/model.kmenc"]
    assert refusal(lambda: s3.get_object(Bucket=bucket, Key="model/v2/model.kmenc")) == (404, "NoSuchKey")


def test_multipart_upload_of_three_parts(s3: S3Client, bucket: str) -> None:
    parts = [bytes([n]) * PART for n in (1, 2)] + [b"tail"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="model.kmenc")["UploadId"]
    done: list[CompletedPartTypeDef] = [
        {"PartNumber": number, "ETag": s3.upload_part(
            Bucket=bucket, Key="model.kmenc", UploadId=upload, PartNumber=number, Body=part
        )["ETag"]}
        for number, part in enumerate(parts, start=1)
    ]  # fmt: skip
    # Nothing is visible until the upload completes: an interrupted publication leaves no object.
    assert refusal(lambda: s3.head_object(Bucket=bucket, Key="model.kmenc"))[0] == 404
    completed = s3.complete_multipart_upload(
        Bucket=bucket, Key="model.kmenc", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert completed["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: <md5 of the part md5s>-<parts>
    assert s3.get_object(Bucket=bucket, Key="model.kmenc")["Body"].read() == b"".join(parts)
    ranged = s3.get_object(Bucket=bucket, Key="model.kmenc", Range=f"bytes={PART - 2}-{PART + 1}")
    assert ranged["Body"].read() == b"\x01\x01\x02\x02"  # across the first two parts


def test_conditional_puts_let_latest_move_only_from_what_the_writer_read(s3: S3Client, bucket: str) -> None:
    """If-None-Match: * creates only; If-Match: <etag> replaces only the version read. A writer that lost the
    race gets 412 PreconditionFailed and the object keeps the winner's bytes."""
    first = s3.put_object(Bucket=bucket, Key="LATEST", Body=b"v1", IfNoneMatch="*")["ETag"]
    assert refusal(lambda: s3.put_object(Bucket=bucket, Key="LATEST", Body=b"v0", IfNoneMatch="*")) == (
        412,
        "PreconditionFailed",
    )
    second = s3.put_object(Bucket=bucket, Key="LATEST", Body=b"v2", IfMatch=first)["ETag"]
    assert second != first
    # A second publisher that read v1 too: its replacement is refused.
    assert refusal(lambda: s3.put_object(Bucket=bucket, Key="LATEST", Body=b"v3", IfMatch=first)) == (
        412,
        "PreconditionFailed",
    )
    assert s3.get_object(Bucket=bucket, Key="LATEST")["Body"].read() == b"v2"
    # As on AWS: If-Match on a key that does not exist is 404, not a write.
    assert refusal(lambda: s3.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch=second)) == (
        404,
        "NoSuchKey",
    )
    # Completing a multipart upload is conditional the same way.
    upload = s3.create_multipart_upload(Bucket=bucket, Key="LATEST")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="LATEST", UploadId=upload, PartNumber=1, Body=b"v4")["ETag"]
    complete: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    assert refusal(
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="LATEST", UploadId=upload, MultipartUpload=complete, IfNoneMatch="*"
        )
    ) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bucket, Key="LATEST")["Body"].read() == b"v2"


def test_wrong_credentials_are_refused(s3_server: ObjectStore, bucket: str) -> None:
    wrong_secret = s3_client(s3_server, secret="not-the-secret-" + uuid.uuid4().hex)
    assert refusal(lambda: wrong_secret.get_object(Bucket=bucket, Key="any")) == (403, "SignatureDoesNotMatch")
    unknown_key = s3_client(s3_server, access_key_id="AKIAUNKNOWN000000000")
    assert refusal(lambda: unknown_key.list_objects_v2(Bucket=bucket)) == (403, "InvalidAccessKeyId")


def test_the_keys_are_in_a_private_file_and_nowhere_else(cluster: E2ECluster, s3_server: ObjectStore) -> None:
    """Only the 0600 credentials file holds the keys: not versitygw's argv or environment, the state file, or any
    component's log."""
    assert cluster.local is not None
    root = cluster.local.root
    credentials = root / object_store.CREDENTIALS_FILE
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text())["secretAccessKey"] == s3_server.secret_access_key
    assert s3_server.secret_access_key not in repr(s3_server)
    running = cluster.local.component(object_store.NAME)
    process_files = [Path(f"/proc/{running.pid}/cmdline"), Path(f"/proc/{running.pid}/environ")]
    for path in [*process_files, root / "state.json", *sorted((root / "logs").glob("*.log"))]:
        text = path.read_bytes()
        for key in (s3_server.access_key_id, s3_server.secret_access_key):
            assert key.encode() not in text, f"an S3 key appears in {path}"
    assert os.stat(root / object_store.DATA_DIR).st_mode & 0o077 == 0  # the buckets: this user's alone


def test_pods_reach_the_server_through_its_service(cluster: E2ECluster) -> None:
    """The Service pods use: port 80 named s3, with the server's node address as its endpoint when there is a
    real node (none otherwise: the API server refuses a loopback endpoint, and no pod would run)."""
    assert cluster.local is not None
    core = client.CoreV1Api(cluster.api)
    service = core.read_namespaced_service(object_store.SERVICE, object_store.NAMESPACE)
    assert service.spec is not None and service.spec.ports is not None
    assert [(p.name, p.port) for p in service.spec.ports] == [("s3", object_store.SERVICE_PORT)]
    slices = client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        object_store.NAMESPACE, label_selector=f"kubernetes.io/service-name={object_store.SERVICE}"
    )
    endpoints = [
        (address, port.port)
        for endpoint_slice in slices.items
        for endpoint in endpoint_slice.endpoints or []
        for address in endpoint.addresses
        for port in endpoint_slice.ports or []
    ]
    port = cluster.local.component(object_store.NAME).ports[0]
    assert endpoints == ([(cluster.local.node_ip, port)] if cluster.local.node_ip else [])


# Runs in a pod: the server's health path and an anonymous request through the Service's DNS name. The
# anonymous one must be refused by S3 itself (AccessDenied in an S3 error document), which shows that the
# Service leads to the S3 server and that it requires signatures.
SERVICE_PROBE = """
import json, sys, urllib.error, urllib.request
url = sys.argv[1]
found = {"health": urllib.request.urlopen(url + "/health", timeout=10).status}
try:
    urllib.request.urlopen(url + "/", timeout=10)
except urllib.error.HTTPError as error:
    found["anonymous"] = [error.code, error.read().decode()]
print(json.dumps(found))
"""


@SERIAL_NODE_SERVING
@pytest.mark.real_node
def test_a_pod_on_the_real_node_reaches_the_server_through_the_service(
    cluster: E2ECluster, namespace: str, real_node: RealNode, base_image: None
) -> None:
    found, log = cluster.run_python_pod(
        namespace, "s3-probe", real_node.placement(), SERVICE_PROBE, object_store.IN_CLUSTER_URL
    )
    assert found["health"] == 200, log
    status, body = found["anonymous"]
    assert status == 403 and "<Code>AccessDenied</Code>" in body, log
