"""A ModelService serving a model from a bucket of the local cluster's S3 server, on the real node.

The model-loader image's `kubemaas load-model` runs as the serving pod's init container: it reaches the S3 server
through its Service (kubemaas-system/kubemaas-s3), signs with the keys of a mounted Secret, streams the version
from the bucket with ranged GETs and decrypts it into Triton's repository (docs/runtime-contract.md §4b).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.object_store import ObjectStore
from e2e.conftest import REPO, SERIAL_NODE_SERVING, SERIAL_NODE_TRAINING, E2ECluster, OperatorProcess, RealNode
from e2e.kube import GROUP, VERSION
from e2e.test_modelservice import condition, crds, wait_ms  # noqa: F401 (crds: a fixture)
from e2e.test_object_store import settings_for
from e2e.test_real_node import (  # noqa: F401 (node_store: a fixture)
    answers,
    create_training_job,
    key_secret,
    node_store,
    serve_on_node,
    start_traffic,
    trainer_job,
    triton_model_service,
    wait_serving,
    wait_trained,
)
from e2e.typed_client import as_json, body_as, meta, pod_status, present
from kubemaas.contract.store import S3_ACCESS_KEY_FILE, S3_SECRET_KEY_FILE
from kubemaas.manifests.trainingjob import COMPLETION_INDEX_ANNOTATION
from kubemaas.runtime.crypto import MAGIC
from kubemaas.runtime.dataset import encrypt_dataset
from kubemaas.runtime.keyring import generate_key
from kubemaas.runtime.object_client import client_for
from kubemaas.runtime.object_store import ObjectArtifactStore
from tests.serving.conftest import MODEL, publish

EXAMPLE = REPO / "examples" / "training" / "digits_mlp.py"


def credentials_secret(name: str, access_key_id: str, secret_access_key: str) -> client.V1Secret:
    data = {S3_ACCESS_KEY_FILE: access_key_id, S3_SECRET_KEY_FILE: secret_access_key}
    return body_as(
        client.V1Secret,
        {"metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}},
    )


def degraded_with(cluster: E2ECluster, namespace: str, reason: str) -> dict[str, Any]:
    return wait_ms(
        cluster,
        namespace,
        "digits",
        lambda o: condition(o, "Degraded").get("reason") == reason,
        f"ModelService digits Degraded={reason}",
        timeout=240,
    )


@SERIAL_NODE_SERVING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds")
def test_a_model_service_serves_from_a_bucket_and_a_changed_byte_or_wrong_keys_leave_the_old_version_serving(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    operator: OperatorProcess,
    s3_server: ObjectStore,
    tmp_path: Path,
) -> None:
    # The models, published to the bucket from this machine as the trainer publishes them; v2 then loses a bit.
    bucket = f"ms-{uuid.uuid4().hex[:12]}"
    s3 = client_for(settings_for(s3_server, tmp_path / "credentials"))
    s3.create_bucket(Bucket=bucket)
    store = ObjectArtifactStore(f"s3://{bucket}/store", s3)
    key = generate_key()
    for version, seed in (("v1", 1), ("v2", 2), ("v3", 3)):
        publish(store, tmp_path, model=MODEL, version=version, seed=seed, key=key)
    tampered = store.resolve(MODEL, "v2").artifact_key
    data = bytearray(s3.get_object(Bucket=bucket, Key=tampered)["Body"].read())
    data[-100] ^= 0x01
    s3.put_object(Bucket=bucket, Key=tampered, Body=bytes(data))

    core, custom = client.CoreV1Api(cluster.api), client.CustomObjectsApi(cluster.api)
    core.create_namespaced_secret(namespace, body_as(client.V1Secret, key_secret(key)))
    core.create_namespaced_secret(
        namespace, credentials_secret("digits-s3", s3_server.access_key_id, s3_server.secret_access_key)
    )
    source = {
        "uri": f"s3://{bucket}/store/digits",
        "version": "v1",
        "encryption": {"keySecretRef": {"name": "digits-key"}},
        "storage": {
            "s3": {
                "endpoint": s3_server.in_cluster_url,
                "region": s3_server.region,
                "pathStyle": True,
                "credentialsSecretRef": {"name": "digits-s3"},
            }
        },
    }
    placement = real_node.placement()
    ms = triton_model_service(placement, source, resources={"cpu": "250m", "memory": "2Gi"})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", ms)
    wait_serving(cluster, namespace, "v1")
    start_traffic(cluster, namespace, placement, pause=0.05)

    def set_version(version: str) -> None:
        patch = {"spec": {"model": {"version": version}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "modelservices", "digits", patch)

    # A byte changed in the bucket: the loader refuses v2 exactly as a changed file on a claim.
    set_version("v2")
    refused = degraded_with(cluster, namespace, "TamperedArtifact")
    assert refused["status"]["servedVersion"] == "v1", refused["status"]

    # Keys the store does not accept: v3 is refused with a reason naming the bucket, and no credential anywhere.
    wrong = "wrong-" + uuid.uuid4().hex
    core.replace_namespaced_secret(
        "digits-s3", namespace, credentials_secret("digits-s3", s3_server.access_key_id, wrong)
    )
    set_version("v3")
    denied = degraded_with(cluster, namespace, "AccessDenied")
    message = condition(denied, "Degraded")["message"]
    assert f"s3://{bucket}/store/digits" in message and "access denied" in message, message
    assert denied["status"]["servedVersion"] == "v1", denied["status"]
    events = as_json(cluster.api, core.list_namespaced_event(namespace))
    for secret in (s3_server.secret_access_key, wrong, s3_server.access_key_id):
        for text, where in ((json.dumps(denied), "status"), (json.dumps(events), "events"), (operator.text(), "log")):
            assert secret not in text, f"a credential in the {where}"

    # v1 answered all along.
    after = time.time() + 3
    cluster.wait_for("answers after the refusals", lambda: answers(cluster, namespace)[-1]["t"] > after, timeout=60)
    seen = answers(cluster, namespace)
    failed = [a for a in seen if "error" in a]
    assert not failed, f"{len(failed)} of {len(seen)} requests failed: {failed[:5]}"
    assert all(a["out"] == seen[0]["out"] for a in seen), "an answer came from something other than v1"


def requests_by_address(log: Path, since: int, bucket: str) -> dict[str, set[str]]:
    """The keys of ``bucket`` each client address GET, from the server's request log past byte ``since`` (lines
    ``time | vgw | status | latency | ip | method | path | error | query``)."""
    seen: dict[str, set[str]] = {}
    with log.open("rb") as lines:
        lines.seek(since)
        for raw in lines:
            fields = [f.strip() for f in raw.decode(errors="replace").split("|")]
            if len(fields) >= 7 and fields[1] == "vgw" and fields[5] == "GET" and fields[6].startswith(f"/{bucket}/"):
                seen.setdefault(fields[4], set()).add(fields[6].removeprefix(f"/{bucket}/"))
    return seen


@SERIAL_NODE_TRAINING
@pytest.mark.real_node
@pytest.mark.usefixtures("crds", "node_store")
def test_digits_trains_from_a_bucket_each_rank_fetching_its_own_objects_and_is_served_from_it(
    cluster: E2ECluster,
    namespace: str,
    real_node: RealNode,
    node_images: None,
    operator: OperatorProcess,
    s3_server: ObjectStore,
    tmp_path: Path,
) -> None:
    """The digits example with `data.uri` and `output.uri` in a bucket: two gloo ranks on the node, each fetching
    only its train-*.npz objects (the server's request log, by pod address), rank 0 checkpointing and publishing
    there; a ModelService of the job serves the version from the bucket."""
    assert s3_server.request_log is not None
    bucket = f"tj-{uuid.uuid4().hex[:12]}"
    s3 = client_for(settings_for(s3_server, tmp_path / "credentials"))
    s3.create_bucket(Bucket=bucket)
    plain = tmp_path / "digits"
    subprocess.run([sys.executable, str(EXAMPLE), "--write-dataset", str(plain)], check=True, timeout=120)
    data_key = generate_key()
    encrypt_dataset(plain, tmp_path / "sealed", key=data_key, key_id="d1")
    objects = sorted(p.name for p in (tmp_path / "sealed").iterdir())
    for name in objects:
        s3.upload_file(str(tmp_path / "sealed" / name), bucket, f"datasets/digits/{name}")
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_secret(
        namespace, credentials_secret("digits-s3", s3_server.access_key_id, s3_server.secret_access_key)
    )
    data_secret = {"metadata": {"name": "digits-data-key"}, "data": {"key-d1": base64.b64encode(data_key).decode()}}
    core.create_namespaced_secret(namespace, body_as(client.V1Secret, data_secret))

    storage = {
        "s3": {
            "endpoint": s3_server.in_cluster_url,
            "region": s3_server.region,
            "pathStyle": True,
            "credentialsSecretRef": {"name": "digits-s3"},
        }
    }
    job = trainer_job("digits", "Job", real_node.placement())
    job["spec"]["data"] = {
        "uri": f"s3://{bucket}/datasets/digits",
        "encryption": {"keySecretRef": {"name": "digits-data-key"}},
        "storage": storage,
    }
    job["spec"]["output"] = {"uri": f"s3://{bucket}/store", "modelName": MODEL, "storage": storage}
    # Each pod's address and rank, recorded at every write of the job while its ranks run: a pod that has
    # finished may no longer show its IP (two loaded runs saw rank 1's requests under an address no pod had).
    rank_of: dict[str, int] = {}

    def record_addresses(tj: dict[str, Any]) -> None:
        for pod in core.list_namespaced_pod(namespace, label_selector="kubemaas.io/trainingjob=digits").items:
            if address := pod_status(pod).pod_ip:
                rank_of[address] = int(present(meta(pod).annotations, "annotations")[COMPLETION_INDEX_ANNOTATION])

    since = s3_server.request_log.stat().st_size
    create_training_job(cluster, namespace, job)
    model = wait_trained(cluster, namespace, observe=record_addresses)
    record_addresses({})
    assert float(model["metrics"]["heldOutAccuracy"]) >= 0.85, model
    assert model["uri"] == f"s3://{bucket}/store/{MODEL}/{model['version']}", model

    # Each rank fetched its own share of the training objects, and only rank 0 the held-out one.
    fetched = requests_by_address(s3_server.request_log, since, bucket)
    by_rank = {rank_of[ip]: keys for ip, keys in fetched.items() if ip in rank_of}
    train = {f"datasets/digits/{n}" for n in objects if n.startswith("train-")}
    shares = {rank: {k for k in keys if k in train} for rank, keys in by_rank.items()}
    print(f"\nobjects fetched by rank: { {r: sorted(k) for r, k in sorted(by_rank.items())} }")
    assert set(shares) == {0, 1} and all(shares.values()), by_rank
    assert not shares[0] & shares[1] and shares[0] | shares[1] == train, shares
    held_out = "datasets/digits/heldout.npz"
    assert held_out in by_rank[0] and held_out not in by_rank[1], by_rank

    # Checkpoints and the version are ciphertext in the bucket.
    stored = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="store/").get("Contents", [])]
    assert any(f"/.checkpoints/{model['version']}/step-" in k for k in stored), stored
    store = ObjectArtifactStore(f"s3://{bucket}/store", s3)
    artifact = store.resolve(MODEL, model["version"]).artifact_key
    assert s3.get_object(Bucket=bucket, Key=artifact)["Body"].read(8) == MAGIC

    ready = serve_on_node(cluster, namespace, "digits", "digits", real_node)
    assert ready["status"]["servedVersion"] == model["version"], ready["status"]
