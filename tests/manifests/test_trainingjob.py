"""The TrainingJob builders, each case one whole expected object (kubespawner's test_objects style)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from kubemaas import contract
from kubemaas.api.trainingjob import RESERVED_ENV, TrainingJob
from kubemaas.contract.keys import KEY_ID_PATTERN
from kubemaas.manifests import trainingjob as m
from kubemaas.manifests import trainingjob_mounts, trainjob

UID = "0f4c2a6e-9d7b-4c1e-8a3f-5b6d7e8f9a0b"
VERSION = "v20261129-0f4c2a6e"


def make_job(**spec: Any) -> TrainingJob:
    body: dict[str, Any] = {
        "apiVersion": "kubemaas.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "digits", "namespace": "team-a", "uid": UID, "generation": 1},
        "spec": {
            "image": "kubemaas/trainer:0.1.0",
            "output": {"uri": "pvc://models/store"},
            "encryption": {"keySecretRef": {"name": "digits-key"}},
            **spec,
        },
    }
    return TrainingJob.parse(body)


OWNER = {
    "apiVersion": "kubemaas.io/v1alpha1",
    "kind": "TrainingJob",
    "name": "digits",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "trainingjob",
        "app.kubernetes.io/instance": "digits",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "kubemaas",
        "app.kubernetes.io/managed-by": "kubemaas",
        "kubemaas.io/trainingjob": "digits",
    }


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
PORTS = [{"name": "pytorchjob-port", "containerPort": 29500, "protocol": "TCP"}]
KEY_VOLUME = {"name": "kubemaas-keys", "secret": {"secretName": "digits-key", "defaultMode": 0o400}}
KEY_MOUNT = {"name": "kubemaas-keys", "mountPath": "/var/run/kubemaas/keys", "readOnly": True}
TMP_VOLUME = {"name": "kubemaas-tmp", "emptyDir": {"sizeLimit": "32Gi"}}
# What a container gets when the spec names no cpu or memory: bounded all the same (issue 24).
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "8Gi"}}
TMP_MOUNT = {"name": "kubemaas-tmp", "mountPath": "/tmp"}
OUTPUT_VOLUME = {"name": "kubemaas-output", "persistentVolumeClaim": {"claimName": "models"}}
# No `readOnly: false`: the API server drops it, and the apply helper compares against what it stores.
OUTPUT_MOUNT = {"name": "kubemaas-output", "mountPath": "/mnt/kubemaas/models"}
DATA_VOLUME = {"name": "kubemaas-data", "persistentVolumeClaim": {"claimName": "datasets"}}
DATA_MOUNT = {"name": "kubemaas-data", "mountPath": "/mnt/kubemaas/datasets", "readOnly": True}


def test_minimal_job_is_a_pytorchjob_with_only_a_master() -> None:
    assert m.pytorchjob(make_job(), VERSION) == {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": "digits",
            "namespace": "team-a",
            "labels": labels("training"),
            "ownerReferences": [OWNER],
        },
        "spec": {
            "nprocPerNode": "1",
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3, "suspend": False},
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "ExitCode",
                    "template": {
                        "metadata": {"labels": labels("master")},
                        "spec": {
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "securityContext": POD_SECURITY,
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": "kubemaas/trainer:0.1.0",
                                    "env": [
                                        {"name": "HOME", "value": "/tmp"},
                                        {"name": "KUBEMAAS_MODEL_NAME", "value": "digits"},
                                        {"name": "KUBEMAAS_MODEL_VERSION", "value": VERSION},
                                        {"name": "KUBEMAAS_OUTPUT_URI", "value": "pvc://models/store"},
                                        {"name": "KUBEMAAS_KEY_DIR", "value": "/var/run/kubemaas/keys"},
                                    ],
                                    "ports": PORTS,
                                    "resources": DEFAULT_RESOURCES,
                                    "volumeMounts": [OUTPUT_MOUNT, TMP_MOUNT, KEY_MOUNT],
                                    "terminationMessagePath": "/dev/termination-log",
                                    "terminationMessagePolicy": "File",
                                    "securityContext": CONTAINER_SECURITY,
                                }
                            ],
                            "volumes": [OUTPUT_VOLUME, TMP_VOLUME, KEY_VOLUME],
                        },
                    },
                }
            },
        },
    }


FULL_SPEC: dict[str, Any] = {
    "command": ["python", "-m", "digits"],
    "args": ["--epochs", "3"],
    "env": [
        {"name": "LR", "value": "0.1"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}},
    ],
    "envFrom": [{"configMapRef": {"name": "hyperparameters"}}],
    "serviceAccountName": "trainer",
    "imagePullSecrets": [{"name": "registry"}],
    "volumes": [{"name": "vocab", "configMap": {"name": "vocab"}}],
    "volumeMounts": [{"name": "vocab", "mountPath": "/etc/vocab", "readOnly": True}],
    "replicas": 4,
    "nprocPerNode": 2,
    "resources": {"gpus": 2, "gpuResource": "nvidia.com/mig-1g.10gb", "cpu": "4", "memory": "8Gi", "shmSize": "2Gi"},
    "scheduling": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training",
        "queueName": "team-a",
        "schedulerName": "volcano",
    },
    "data": {"uri": "pvc://datasets/digits"},
    "output": {"uri": "pvc://models/store", "modelName": "digits-mlp", "quantization": "DynamicInt8"},
    "runPolicy": {"backoffLimit": 2, "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60},
}

FULL_RESOURCES = {
    "limits": {"cpu": "4", "memory": "8Gi", "nvidia.com/mig-1g.10gb": "2"},
    "requests": {"cpu": "4", "memory": "8Gi"},
}
FULL_POD_SCHEDULING = {
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "training",
    "schedulerName": "volcano",
}


def full_env(*, rank0: bool, rendezvous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "OMP_NUM_THREADS", "value": "2"},  # resources.cpu 4 shared by nprocPerNode 2
        {"name": "LR", "value": "0.1"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "token"}}},
        {"name": "KUBEMAAS_MODEL_NAME", "value": "digits-mlp"},
        {"name": "KUBEMAAS_MODEL_VERSION", "value": VERSION},
        {"name": "KUBEMAAS_OUTPUT_URI", "value": "pvc://models/store"},
        {"name": "KUBEMAAS_DATA_URI", "value": "pvc://datasets/digits"},
        *([{"name": "KUBEMAAS_KEY_DIR", "value": "/var/run/kubemaas/keys"}] if rank0 else []),
        {"name": "KUBEMAAS_QUANTIZATION", "value": "DynamicInt8"},
        *rendezvous,
    ]


LAUNCH = [
    "python",
    "-m",
    "kubemaas.runtime.launch",
    "--nnodes=$(PET_NNODES)",
    "--nproc-per-node=2",
    "--node-rank=$(PET_NODE_RANK)",
    "--master-addr=$(PET_MASTER_ADDR)",
    "--master-port=$(PET_MASTER_PORT)",
    "--no-python",
    "python",
    "-m",
    "digits",
    "--epochs",
    "3",
]
SHM_VOLUME = {"name": "kubemaas-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
SHM_MOUNT = {"name": "kubemaas-shm", "mountPath": "/dev/shm"}


def full_pod(*, container: str, rank0: bool, rendezvous: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0 mounts the output claim and the key; the other ranks mount neither."""
    claims_volumes, claims_mounts = ([OUTPUT_VOLUME], [OUTPUT_MOUNT]) if rank0 else ([], [])
    mounts = [*claims_mounts, DATA_MOUNT, TMP_MOUNT, SHM_MOUNT, *([KEY_MOUNT] if rank0 else [])]
    volumes = [*claims_volumes, DATA_VOLUME, TMP_VOLUME, SHM_VOLUME, *([KEY_VOLUME] if rank0 else [])]
    return {
        "serviceAccountName": "trainer",
        "imagePullSecrets": [{"name": "registry"}],
        "enableServiceLinks": False,
        "securityContext": POD_SECURITY,
        "containers": [
            {
                "name": container,
                "image": "kubemaas/trainer:0.1.0",
                "command": LAUNCH,
                "env": full_env(rank0=rank0, rendezvous=rendezvous),
                "envFrom": [{"configMapRef": {"name": "hyperparameters"}}],
                "ports": PORTS,
                "resources": FULL_RESOURCES,
                "volumeMounts": [*mounts, {"name": "vocab", "mountPath": "/etc/vocab", "readOnly": True}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "securityContext": CONTAINER_SECURITY,
            }
        ],
        "volumes": [*volumes, {"name": "vocab", "configMap": {"name": "vocab"}}],
        **FULL_POD_SCHEDULING,
    }


def test_four_gpu_pods_as_pytorchjob_master_and_three_workers() -> None:
    workload_labels = {**labels("training"), "kueue.x-k8s.io/queue-name": "team-a"}
    assert m.pytorchjob(make_job(**FULL_SPEC), VERSION) == {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": "digits",
            "namespace": "team-a",
            "labels": workload_labels,
            "ownerReferences": [OWNER],
        },
        "spec": {
            "nprocPerNode": "2",
            # No suspend: under a Kueue queue the field is Kueue's until the user suspends.
            "runPolicy": {
                "cleanPodPolicy": "Running",
                "backoffLimit": 2,
                "activeDeadlineSeconds": 3600,
                "schedulingPolicy": {"minAvailable": 4, "priorityClass": "training"},
            },
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "ExitCode",
                    "template": {
                        "metadata": {"labels": labels("master")},
                        "spec": full_pod(container="pytorch", rank0=True, rendezvous=[]),
                    },
                },
                "Worker": {
                    "replicas": 3,
                    "restartPolicy": "ExitCode",
                    "template": {
                        "metadata": {"labels": labels("worker")},
                        "spec": full_pod(container="pytorch", rank0=False, rendezvous=[]),
                    },
                },
            },
        },
    }


INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
RENDEZVOUS: list[dict[str, Any]] = [
    {"name": "MASTER_ADDR", "value": "digits-workers-0.digits-workers"},
    {"name": "MASTER_PORT", "value": "29500"},
    {"name": "WORLD_SIZE", "value": "8"},
    {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX}}},
    {"name": "PET_NNODES", "value": "4"},
    {"name": "PET_NPROC_PER_NODE", "value": "2"},
    {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX}}},
    {"name": "PET_MASTER_ADDR", "value": "digits-workers-0.digits-workers"},
    {"name": "PET_MASTER_PORT", "value": "29500"},
]


def test_four_gpu_pods_as_indexed_job() -> None:
    pod = full_pod(container="trainer", rank0=True, rendezvous=RENDEZVOUS)
    assert m.indexed_job(make_job(**FULL_SPEC), VERSION) == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "digits-workers",
            "namespace": "team-a",
            "labels": {**labels("training"), "kueue.x-k8s.io/queue-name": "team-a"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": 4,
            "parallelism": 4,
            "backoffLimit": 2,
            "activeDeadlineSeconds": 3600,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1, 78, 79]},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
            "template": {
                "metadata": {"labels": labels("worker")},
                "spec": {"restartPolicy": "Never", **pod, "subdomain": "digits-workers"},
            },
        },
    }


def test_headless_service_makes_rank_zero_addressable() -> None:
    assert m.headless_service(make_job(replicas=2)) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "digits-workers",
            "namespace": "team-a",
            "labels": labels("rendezvous"),
            "ownerReferences": [OWNER],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"kubemaas.io/trainingjob": "digits", "app.kubernetes.io/component": "worker"},
            "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
        },
    }
    # The Indexed Job's pods carry what the selector asks for, and the hostname the Service resolves.
    job = m.indexed_job(make_job(replicas=2), VERSION)
    assert job["spec"]["template"]["metadata"]["labels"].items() >= {"app.kubernetes.io/component": "worker"}.items()
    assert job["spec"]["template"]["spec"]["subdomain"] == "digits-workers"


def test_network_policy_opens_the_ranks_ports_to_each_other_only() -> None:
    own_pods = {"matchLabels": {"kubemaas.io/trainingjob": "digits"}}
    assert m.network_policy(make_job(replicas=2)) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "digits", "namespace": "team-a", "labels": labels("network"), "ownerReferences": [OWNER]},
        "spec": {
            "podSelector": own_pods,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": own_pods}]},
                # The operator reads rank 0's progress, and nothing else.
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubemaas"}},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 9400}],
                },
            ],
        },
    }
    # Every rank of either backend carries the label the policy selects, so each may reach the others.
    job = make_job(replicas=2)
    templates = [m.indexed_job(job, VERSION)["spec"]["template"]] + [
        spec["template"] for spec in m.pytorchjob(job, VERSION)["spec"]["pytorchReplicaSpecs"].values()
    ]
    for template in templates:
        assert template["metadata"]["labels"]["kubemaas.io/trainingjob"] == "digits"


def test_data_on_the_output_claim_is_mounted_once() -> None:
    job = make_job(data={"uri": "pvc://models/datasets/digits"}, replicas=2)
    master = m.pytorchjob(job, VERSION)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    worker = m.pytorchjob(job, VERSION)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert master["volumes"] == [OUTPUT_VOLUME, TMP_VOLUME, KEY_VOLUME]
    assert master["containers"][0]["volumeMounts"] == [OUTPUT_MOUNT, TMP_MOUNT, KEY_MOUNT]
    # The workers read the data from the same claim, read-only.
    shared = {"name": "kubemaas-data", "persistentVolumeClaim": {"claimName": "models"}}
    assert worker["volumes"] == [shared, TMP_VOLUME]
    assert worker["containers"][0]["volumeMounts"] == [
        {"name": "kubemaas-data", "mountPath": "/mnt/kubemaas/models", "readOnly": True},
        TMP_MOUNT,
    ]
    assert trainingjob_mounts.required_claims(job) == ["models"]


def test_buckets_mount_nothing_but_their_credentials_each_on_the_ranks_that_use_them() -> None:
    """An s3:// output reaches rank 0 alone (KUBEMAAS_S3_*), an s3:// dataset every rank (KUBEMAAS_DATA_S3_*),
    each store with its own credentials and CA bundle mounted as files, never in the environment."""
    job = make_job(
        output={
            "uri": "s3://models/store",
            "storage": {
                "s3": {
                    "endpoint": "https://s3.internal:9000",
                    "pathStyle": True,
                    "credentialsSecretRef": {"name": "models-s3"},
                    "caBundle": {"name": "internal-ca", "key": "ca.pem"},
                }
            },
        },
        data={"uri": "s3://datasets/digits", "storage": {"s3": {"region": "eu-west-1"}}},
        replicas=2,
    )
    specs = m.pytorchjob(job, VERSION)["spec"]["pytorchReplicaSpecs"]
    master, worker = specs["Master"]["template"]["spec"], specs["Worker"]["template"]["spec"]
    credentials = {
        "name": "kubemaas-s3-credentials",
        "secret": {
            "secretName": "models-s3",
            "items": [
                {"key": "AWS_ACCESS_KEY_ID", "path": "AWS_ACCESS_KEY_ID"},
                {"key": "AWS_SECRET_ACCESS_KEY", "path": "AWS_SECRET_ACCESS_KEY"},
            ],
            "defaultMode": 0o400,
        },
    }
    ca = {
        "name": "kubemaas-s3-ca-bundle",
        "configMap": {"name": "internal-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]},
    }
    assert master["volumes"] == [TMP_VOLUME, KEY_VOLUME, credentials, ca]
    assert master["containers"][0]["volumeMounts"] == [
        TMP_MOUNT,
        KEY_MOUNT,
        {"name": "kubemaas-s3-credentials", "mountPath": "/var/run/kubemaas/s3-credentials", "readOnly": True},
        {"name": "kubemaas-s3-ca-bundle", "mountPath": "/var/run/kubemaas/s3-ca", "readOnly": True},
    ]
    assert worker["volumes"] == [TMP_VOLUME] and worker["containers"][0]["volumeMounts"] == [TMP_MOUNT]
    assert trainingjob_mounts.required_claims(job) == []
    assert trainingjob_mounts.credentials_secret_names(job) == ["models-s3"]

    def store_env(pod: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "S3_" in e["name"]}

    assert store_env(master) == {
        "KUBEMAAS_S3_ENDPOINT": "https://s3.internal:9000",
        "KUBEMAAS_S3_PATH_STYLE": "true",
        "KUBEMAAS_S3_CA_BUNDLE": "/var/run/kubemaas/s3-ca/ca.crt",
        "KUBEMAAS_S3_CREDENTIALS_DIR": "/var/run/kubemaas/s3-credentials",
        "KUBEMAAS_DATA_S3_REGION": "eu-west-1",
    }
    assert store_env(worker) == {"KUBEMAAS_DATA_S3_REGION": "eu-west-1"}
    # What the pods parse back: each store's own settings.
    environ = {e["name"]: e["value"] for e in master["containers"][0]["env"] if "value" in e}
    parsed = contract.parse(environ)
    assert parsed.settings.output_in_bucket and parsed.settings.data_uri == "s3://datasets/digits"
    assert parsed.output_s3.endpoint_url == "https://s3.internal:9000" and parsed.output_s3.path_style
    assert parsed.output_s3.credentials_dir == Path("/var/run/kubemaas/s3-credentials")
    assert parsed.data_s3.region == "eu-west-1" and parsed.data_s3.credentials_dir is None


def test_without_a_command_the_image_entrypoint_gets_the_args_and_no_token_is_mounted() -> None:
    pod = m.indexed_job(make_job(args=["--steps", "10"]), VERSION)["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["--steps", "10"]
    assert "command" not in pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod


@pytest.mark.parametrize(
    ("cpu", "nproc", "threads"),
    [("600m", 1, "1"), ("1500m", 1, "1"), ("4", 2, "2"), ("3", 2, "1"), (64, 8, "8"), ("2", 4, "1"), (None, 2, None)],
)
def test_threads_per_process_are_the_cpu_limits_whole_cpus_shared_by_the_processes(
    cpu: str | int | None, nproc: int, threads: str | None
) -> None:
    """PyTorch sizes its thread pool by the node's cores; under a CFS quota that many threads stall each
    other's steps (docs/runtime-contract.md §1). Without a limit nothing is set: torch's default holds."""
    job = make_job(resources={"cpu": cpu} if cpu is not None else {}, nprocPerNode=nproc)
    env = m.indexed_job(job, VERSION)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e.get("value") for e in env if e["name"] == "OMP_NUM_THREADS"] == ([threads] if threads else [])


def test_omp_num_threads_of_the_users_env_wins_and_is_not_listed_twice() -> None:
    job = make_job(resources={"cpu": "8"}, env=[{"name": "OMP_NUM_THREADS", "value": "3"}])
    env = m.indexed_job(job, VERSION)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "OMP_NUM_THREADS"] == ["3"]


def test_the_rendered_environment_parses_as_the_pods_will() -> None:
    """Operator and runtime agree: what the builder renders, the contract parses (after the kubelet's fieldRef)."""
    pod = m.indexed_job(make_job(**FULL_SPEC), VERSION)["spec"]["template"]["spec"]
    environ = {}
    for entry in pod["containers"][0]["env"]:
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            environ[entry["name"]] = "3"  # the completion index the Job controller writes on pod 3
    environ["RANK"] = "7"  # torchrun's global rank of pod 3's second process
    parsed = contract.parse(environ)
    assert parsed.settings.model_version == VERSION and parsed.settings.model_name == "digits-mlp"
    assert parsed.settings.data_path == Path("/mnt/kubemaas/datasets/digits")
    assert parsed.process.world_size == 8


def test_suspend_is_sent_to_both_backends_even_under_a_queue() -> None:
    job = make_job(runPolicy={"suspend": True}, scheduling={"queueName": "team-a"})
    assert m.pytorchjob(job, VERSION)["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 3,
        "suspend": True,
    }
    assert m.indexed_job(job, VERSION)["spec"]["suspend"] is True
    # Without a queue, resuming is an explicit `suspend: false`.
    assert m.indexed_job(make_job(), VERSION)["spec"]["suspend"] is False


def test_key_secret_layout_and_not_owned_by_the_job() -> None:
    key = m.NewKey(key_id="k0123456789ab", key=bytes(range(32)))
    assert m.key_secret(make_job(), key) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "digits-key",
            "namespace": "team-a",
            "labels": {
                "app.kubernetes.io/name": "kubemaas-model-key",
                "app.kubernetes.io/managed-by": "kubemaas",
                "app.kubernetes.io/part-of": "kubemaas",
            },
            "annotations": {"kubemaas.io/trainingjob": "digits"},
        },
        "type": "Opaque",
        "data": {
            "key-k0123456789ab": base64.b64encode(bytes(range(32))).decode(),
            "active": base64.b64encode(b"k0123456789ab").decode(),
        },
    }
    never = make_job(encryption={"keySecretRef": {"name": "digits-key"}, "generateKey": "Never"})
    assert m.key_secret(never, key) is None


def test_new_keys_are_random_32_bytes_with_a_valid_id_and_a_repr_without_bytes() -> None:
    a, b = m.new_key(), m.new_key()
    assert len(a.key) == 32 and a.key != b.key and a.key_id != b.key_id
    assert KEY_ID_PATTERN.fullmatch(a.key_id)
    assert a.key.hex() not in repr(a) and str(list(a.key)) not in repr(a)
    assert re.fullmatch(r"NewKey\(key_id='k[0-9a-f]{12}'\)", repr(a))


def test_user_objects_are_rendered_without_the_zero_values_the_api_server_drops() -> None:
    job = make_job(
        env=[{"name": "EMPTY", "value": ""}],
        volumes=[{"name": "cache", "persistentVolumeClaim": {"claimName": "cache", "readOnly": False}}],
        volumeMounts=[{"name": "cache", "mountPath": "/cache", "readOnly": False}],
    )
    pod = m.indexed_job(job, VERSION)["spec"]["template"]["spec"]
    assert {"name": "EMPTY"} in pod["containers"][0]["env"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}} in pod["volumes"]
    assert {"name": "cache", "mountPath": "/cache"} in pod["containers"][0]["volumeMounts"]


# --- the TrainJob backend (Kubeflow Trainer v2) ---------------------------------------------------------

TRAINJOB_RENDEZVOUS: list[dict[str, Any]] = [
    {"name": "MASTER_ADDR", "value": "digits-workers-node-0-0.digits-workers"},
    {"name": "MASTER_PORT", "value": "29500"},
    {"name": "WORLD_SIZE", "value": "8"},
    {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX}}},
    {"name": "PET_NNODES", "value": "4"},
    {"name": "PET_NPROC_PER_NODE", "value": "2"},
    {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": INDEX}}},
    {"name": "PET_MASTER_ADDR", "value": "digits-workers-node-0-0.digits-workers"},
    {"name": "PET_MASTER_PORT", "value": "29500"},
]


def test_four_gpu_pods_as_a_train_job_on_a_runtime_of_its_own() -> None:
    job = make_job(**FULL_SPEC)
    pod = full_pod(container="node", rank0=True, rendezvous=TRAINJOB_RENDEZVOUS)
    assert trainjob.training_runtime(job, VERSION) == {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": {"name": "digits", "namespace": "team-a", "labels": labels("runtime"), "ownerReferences": [OWNER]},
        "spec": {
            "mlPolicy": {"numNodes": 4, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": "node",
                            "replicas": 1,
                            "template": {
                                "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                "spec": {
                                    "completionMode": "Indexed",
                                    "backoffLimit": 2,
                                    "podFailurePolicy": {
                                        "rules": [
                                            {
                                                "action": "FailJob",
                                                "onExitCodes": {
                                                    "containerName": "node",
                                                    "operator": "In",
                                                    "values": [1, 78, 79],
                                                },
                                            },
                                            {
                                                "action": "Ignore",
                                                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                                            },
                                        ]
                                    },
                                    "successPolicy": {"rules": [{"succeededIndexes": "0"}]},
                                    "template": {
                                        "metadata": {
                                            "labels": {**labels("worker"), "kubemaas.io/trainingjob-uid": UID}
                                        },
                                        "spec": {"restartPolicy": "Never", **pod},
                                    },
                                },
                            },
                        }
                    ]
                }
            },
        },
    }
    assert trainjob.train_job(job) == {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": "digits-workers",
            "namespace": "team-a",
            "labels": {**labels("training"), "kueue.x-k8s.io/queue-name": "team-a"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "digits"},
            "trainer": {"numNodes": 4, "numProcPerNode": 2},
            # No suspend: under a Kueue queue the field is Kueue's until the user suspends.
            "activeDeadlineSeconds": 3600,
        },
    }


def test_a_minimal_train_job_sends_suspend_and_no_queue_label() -> None:
    job = make_job()
    body = trainjob.train_job(job)
    assert body["metadata"]["labels"] == labels("training")
    assert body["spec"] == {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "digits"},
        "trainer": {"numNodes": 1, "numProcPerNode": 1},
        "suspend": False,
    }
    assert trainjob.train_job(make_job(runPolicy={"suspend": True}, scheduling={"queueName": "q"}))["spec"]["suspend"]


# What each backend's controller adds to the env the builder renders, on the pod of node (pod) index 3: Kubeflow
# v1 sets the rendezvous of a PyTorchJob's Worker 2 itself; Trainer v2's torch plugin upserts its PET_* variables
# by name (constants.TorchRunReservedEnvNames, pkg/runtime/framework/plugins/torch); the Indexed Job has none.
KUBEFLOW_WORKER_2 = {
    "PYTHONUNBUFFERED": "1",
    "MASTER_ADDR": "digits-master-0",
    "MASTER_PORT": "29500",
    "WORLD_SIZE": "8",  # replicas x nprocPerNode (training-operator v1.8.1, pytorch/envvar.go)
    "RANK": "3",
    "PET_NNODES": "4",
    "PET_NPROC_PER_NODE": "2",
    "PET_NODE_RANK": "3",
    "PET_MASTER_ADDR": "digits-master-0",
    "PET_MASTER_PORT": "29500",
}
TRAINER_PET = {
    "PET_NNODES": "4",
    "PET_NPROC_PER_NODE": "2",
    "PET_NODE_RANK": "3",  # fieldRef metadata.annotations['batch.kubernetes.io/job-completion-index']
    "PET_MASTER_ADDR": "digits-workers-node-0-0.digits-workers",
    "PET_MASTER_PORT": "29500",
}


def _pod_environ(container: dict[str, Any], added: dict[str, str]) -> dict[str, str]:
    """The container's env as the process sees it on pod index 3 (fieldRefs resolved), then `added` upserted."""
    environ = {}
    for entry in container["env"]:
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == INDEX, entry
            environ[entry["name"]] = "3"
    return {**environ, **added}


def test_every_backend_gives_the_pods_the_same_contract_environment() -> None:
    """The contract's round trip under all three backends: what each pod sees (builder + its controller) parses to
    the same settings and the same process layout; only rank 0's address differs, by the backend's naming."""
    job = make_job(**FULL_SPEC)
    worker = m.pytorchjob(job, VERSION)["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    indexed = m.indexed_job(job, VERSION)["spec"]["template"]["spec"]["containers"][0]
    node = trainjob.training_runtime(job, VERSION)["spec"]["template"]["spec"]["replicatedJobs"][0]
    node_container = node["template"]["spec"]["template"]["spec"]["containers"][0]
    environs = {
        "PyTorchJob": _pod_environ(worker, KUBEFLOW_WORKER_2),
        "Job": _pod_environ(indexed, {}),
        "TrainJob": _pod_environ(node_container, TRAINER_PET),
    }
    # Trainer's upsert changes nothing: the runtime already carries the values Trainer sets.
    assert environs["TrainJob"] == _pod_environ(node_container, {})
    parsed = {}
    for backend, environ in environs.items():
        environ["RANK"] = "7"  # torchrun's global rank of pod 3's second process (§1a)
        environ["LOCAL_RANK"] = "1"
        parsed[backend] = contract.parse(environ)
    settings = {b: p.settings for b, p in parsed.items()}
    # Rank 0's settings (the key directory) are on the Master alone under PyTorchJob; the others' pods are one.
    assert (
        settings["Job"]
        == settings["TrainJob"]
        == settings["PyTorchJob"].model_copy(update={"key_dir": settings["Job"].key_dir})
    )
    layout = {
        b: (p.process.rank, p.process.local_rank, p.process.world_size, p.process.master_port)
        for b, p in parsed.items()
    }
    assert set(layout.values()) == {(7, 1, 8, 29500)}, layout
    names = {b: sorted(k for k in e if k in RESERVED_ENV or k.startswith("KUBEMAAS_")) for b, e in environs.items()}
    assert names["TrainJob"] == names["Job"], "the TrainJob pod's contract variables differ from the Job backend's"
    assert trainjob.master_addr(job) == environs["TrainJob"]["MASTER_ADDR"] == environs["TrainJob"]["PET_MASTER_ADDR"]
