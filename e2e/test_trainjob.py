"""The TrainJob backend and Kueue end to end: the operator (scoped to the test's namespace, as the chart's identity)
against the real API server with Kubeflow Trainer v2, JobSet and Kueue running (e2e/cluster/batch.py); kwok plays
the kubelet on its GPU nodes.

What a user observes is asserted: Auto's choice where Trainer is served, the TrainJob and its TrainingRuntime, the
ranks' pods and their environment, the TrainingJob's conditions, status.model and Events; under a LocalQueue,
Kueue's admission within a ClusterQueue's GPU quota, the Queued condition with Kueue's own reason while a job waits,
Admitted when it runs, and a LocalQueue that does not exist. Auto without Trainer's CRD (PyTorchJob, then Job) is
e2e/test_trainingjob.py's bare cluster and tests/controllers/test_trainingjob_trainjob.py: removing CRDs from the
shared cluster would break the tests beside these.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.nodes import GPU_NODES
from e2e.conftest import E2ECluster, OperatorProcess
from e2e.kube import (
    TRAININGJOB_API,
    apply_crd,
    bound_claim,
    load_crds,
    skip_unless_served,
    training_job,
)
from e2e.kueue import gpu_cluster_queue, local_queue
from e2e.test_trainingjob import SHA, Jobs, condition_of, env_of
from e2e.typed_client import json_object

GROUP, VERSION, PLURAL = TRAININGJOB_API
TRAINER = ("trainer.kubeflow.org", "v1alpha1")
EXIT_CODE_ANNOTATION = "kwok.kubemaas.io/exit-code"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# e2e/cluster/nodes.py: one kwok node with 8 of them. Not the A100 node, whose 4 GPUs e2e/test_batch_stack.py's
# queue takes whole: a quota here needs GPUs that exist while both run.
H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture(scope="module", autouse=True)
def trainer_served(cluster: E2ECluster) -> None:
    """The generated CRDs of this checkout, and Trainer's TrainJob CRD, which the shared cluster serves."""
    skip_unless_served(cluster.api, "trainjobs.trainer.kubeflow.org", "Kubeflow Trainer v2")
    for crd in load_crds():
        apply_crd(cluster.api, crd)


@pytest.fixture
def claims(cluster: E2ECluster, namespace: str) -> Iterator[None]:
    """The claims the default TrainingJob mounts, bound to PersistentVolumes deleted after the test."""
    volumes = [
        bound_claim(cluster.api, namespace, name, {"hostPath": {"path": f"/tmp/kubemaas-e2e/{name}"}})
        for name in ("datasets", "models")
    ]
    yield
    for volume in volumes:
        with contextlib.suppress(ApiException):
            client.CoreV1Api(cluster.api).delete_persistent_volume(volume)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = condition_of(obj, type_)
    assert found is not None, f"no condition {type_} in {obj.get('status')}"
    return found


@pytest.fixture
def jobs(cluster: E2ECluster, namespace: str) -> Jobs:
    return Jobs(cluster, namespace)


# --- the TrainJob backend ------------------------------------------------------------------------------


def test_auto_picks_trainjob_whose_ranks_get_the_contract_and_publish(
    jobs: Jobs, claims: None, operator: OperatorProcess, cluster: E2ECluster
) -> None:
    operator.wait_live()
    jobs.create(training_job("digits", replicas=2, nprocPerNode=1))  # backend: Auto
    ranks = jobs.wait_running_ranks("digits", 2)
    assert sorted(ranks) == [0, 1]
    assert jobs.get("digits")["status"]["backend"] == "TrainJob"
    gpu_nodes = {n.name for n in GPU_NODES}
    assert all(p["spec"]["nodeName"] in gpu_nodes for p in ranks.values())

    # The TrainJob and the runtime made for it, both owned by the TrainingJob (the garbage collector's chain).
    train_job = json_object(
        jobs.custom.get_namespaced_custom_object(*TRAINER, jobs.namespace, "trainjobs", "digits-workers")
    )
    runtime = json_object(
        jobs.custom.get_namespaced_custom_object(*TRAINER, jobs.namespace, "trainingruntimes", "digits")
    )
    for child in (train_job, runtime):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "digits", True)
    assert train_job["spec"]["runtimeRef"]["name"] == "digits"

    # The contract's environment, with Trainer's PET_* values equal to the runtime's own.
    index = f"metadata.annotations['{INDEX_ANNOTATION}']"
    for rank, pod in ranks.items():
        env = env_of(pod)
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "digits-workers-node-0-0.digits-workers"
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "29500"
        assert (env["WORLD_SIZE"], env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("2", "2", "1")
        assert env["RANK"] == env["PET_NODE_RANK"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": index}}
        assert pod["metadata"]["annotations"][INDEX_ANNOTATION] == str(rank)
        assert pod["spec"]["automountServiceAccountToken"] is False and pod["spec"]["enableServiceLinks"] is False
        container = pod["spec"]["containers"][0]
        assert container["name"] == "node" and container["securityContext"]["readOnlyRootFilesystem"] is True
        # One pod template for every rank (manifests/trainjob.py): each mounts the key; only rank 0 reads it.
        assert any("secret" in v for v in pod["spec"]["volumes"])

    jobs.wait_condition("digits", "Running")
    jobs.finish(ranks)
    succeeded = jobs.wait_condition("digits", "Succeeded", timeout=120)
    assert succeeded["message"].startswith("published pvc://models/store/digits/")
    status = jobs.get("digits")["status"]
    assert status["model"]["version"] == env_of(ranks[0])["KUBEMAAS_MODEL_VERSION"]
    assert status["model"]["sha256"] == SHA and status.get("completionTime")


def test_trainjob_exit_78_is_failed_config_error_with_the_message(
    jobs: Jobs, claims: None, operator: OperatorProcess
) -> None:
    operator.wait_live()
    jobs.create(training_job("broken", backend="TrainJob", replicas=2))
    ranks = jobs.wait_running_ranks("broken", 2)
    report = {"exitCode": 78, "message": "KUBEMAAS_OUTPUT_URI is not mounted", "rank": 0, "reason": "ConfigError"}
    jobs.drive(ranks[0]["metadata"]["name"], "fail", json.dumps(report), exit_code=78)
    failed = jobs.wait_condition("broken", "Failed", timeout=120)
    assert failed["reason"] == "ConfigError"
    assert "exited 78" in failed["message"] and "KUBEMAAS_OUTPUT_URI is not mounted" in failed["message"]
    assert jobs.get("broken")["status"]["backend"] == "TrainJob"
    assert jobs.wait_event("broken", "ConfigError")["type"] == "Warning"


# --- Kueue --------------------------------------------------------------------------------------------


@pytest.fixture
def gpu_queue(cluster: E2ECluster, namespace: str) -> Iterator[str]:
    """A ClusterQueue with 2 H100s for this namespace only, and its LocalQueue `team`; yields `team`."""
    with gpu_cluster_queue(cluster, namespace, H100, 2, "h100") as team:
        yield team


TWO_GPUS: dict[str, Any] = {"replicas": 2, "resources": {"gpus": 1, "cpu": "1", "memory": "1Gi"}}


def test_kueue_admits_queued_trainingjobs_within_the_gpu_quota_and_shows_why_one_waits(
    jobs: Jobs, claims: None, operator: OperatorProcess, cluster: E2ECluster, gpu_queue: str
) -> None:
    """A TrainJob and then a Job-backend job, each wanting the whole 2-GPU quota: Kueue admits the first, holds
    the second with its reason (the TrainingJob's Queued condition), and admits it when the first has finished."""
    operator.wait_live()
    scheduling = {"nodeSelector": {"nvidia.com/gpu.present": "true"}, "queueName": gpu_queue}
    jobs.create(training_job("first", backend="TrainJob", scheduling=scheduling, **TWO_GPUS))
    admitted = jobs.wait_condition("first", "Admitted", timeout=90)
    assert admitted["reason"] == "Admitted", admitted
    assert condition(jobs.get("first"), "Queued")["status"] == "False"
    first = jobs.wait_running_ranks("first", 2)
    jobs.create(training_job("second", backend="Job", scheduling=scheduling, **TWO_GPUS))

    # Kueue's own words, once it has tried to admit the Workload (the operator reads it again every 10 s).
    saying = ("insufficient unused quota for nvidia.com/gpu in flavor h100-",)
    queued = jobs.wait_condition("second", "Queued", timeout=90, saying=saying)
    assert queued["reason"] == "Pending", queued
    assert condition(jobs.get("second"), "Admitted")["status"] == "False"
    # Kueue's webhook made the Job suspended; the Job controller's Suspended condition follows on its next sync.
    jobs.wait_condition("second", "Suspended", timeout=30)
    held = jobs.core.list_namespaced_pod(jobs.namespace, label_selector="kubemaas.io/trainingjob=second").items
    assert held == [], "Kueue holds the second job: no pods"
    if cluster.local is not None:  # the Queue column of `kubectl get tj`
        table = cluster.local.kubectl("get", "tj", "-n", jobs.namespace, "second")
        header, row = table.splitlines()[:2]
        assert row.split()[header.split().index("QUEUE")] == gpu_queue, table

    # The first finishes; its quota goes to the second.
    jobs.finish(first)
    jobs.wait_condition("first", "Succeeded", timeout=120)
    jobs.wait_condition("second", "Admitted", timeout=120)
    assert condition(jobs.get("second"), "Queued")["reason"] == "Admitted"
    jobs.finish(jobs.wait_running_ranks("second", 2))
    jobs.wait_condition("second", "Succeeded", timeout=120)


def test_a_local_queue_that_does_not_exist_is_a_condition_and_an_event(
    jobs: Jobs, claims: None, operator: OperatorProcess, cluster: E2ECluster
) -> None:
    operator.wait_live()
    jobs.create(training_job("lost", backend="TrainJob", replicas=1, scheduling={"queueName": "nowhere"}))
    blocked = jobs.wait_condition("lost", "Ready", "False")
    assert blocked["reason"] == "LocalQueueNotFound" and "LocalQueue nowhere not found" in blocked["message"]
    assert jobs.wait_event("lost", "LocalQueueNotFound")["type"] == "Warning"
    with pytest.raises(ApiException) as absent:
        jobs.custom.get_namespaced_custom_object(*TRAINER, jobs.namespace, "trainjobs", "lost-workers")
    assert absent.value.status == 404, "no workload while its LocalQueue is missing"

    # The LocalQueue made (its ClusterQueue does not exist): the workload is created, and Kueue's reason shows.
    missing = f"missing-{jobs.namespace}"[:63]
    local_queue(cluster, jobs.namespace, "nowhere", missing)
    jobs.wait_condition("lost", "Created", timeout=60)
    # Kueue v0.19's words (pkg/controller/core/workload_controller.go, getQueueBlocker): Inadmissible, or with its
    # newer reasons Misconfigured/Suspended, naming the inactive LocalQueue or the missing ClusterQueue.
    queued = jobs.wait_condition("lost", "Queued", timeout=60, saying=("nowhere", missing))
    assert queued["reason"] in ("Inadmissible", "Misconfigured", "Suspended"), queued
