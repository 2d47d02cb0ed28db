"""kwok-simulated nodes: CPU nodes and GPU nodes labelled as the NVIDIA GPU operator labels them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpu: str
    memory: str
    gpus: int = 0
    gpu_product: str = ""
    gpu_memory_mib: int = 0
    gpu_family: str = ""


CPU_NODES = tuple(NodeShape(f"kwok-cpu-{i}", cpu="8", memory="32Gi") for i in range(3))
GPU_NODES = (
    NodeShape(
        "kwok-gpu-a100-0",
        cpu="64",
        memory="512Gi",
        gpus=4,
        gpu_product="NVIDIA-A100-SXM4-80GB",
        gpu_memory_mib=81920,
        gpu_family="ampere",
    ),
    NodeShape(
        "kwok-gpu-h100-0",
        cpu="96",
        memory="1024Gi",
        gpus=8,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib=81559,
        gpu_family="hopper",
    ),
)
ALL_NODES = CPU_NODES + GPU_NODES
MAX_GPUS_PER_NODE = max(n.gpus for n in ALL_NODES)


def gpu_labels(shape: NodeShape) -> dict[str, str]:
    """The labels GPU feature discovery (part of the GPU operator) puts on a GPU node."""
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": shape.gpu_product,
        "nvidia.com/gpu.count": str(shape.gpus),
        "nvidia.com/gpu.memory": str(shape.gpu_memory_mib),
        "nvidia.com/gpu.family": shape.gpu_family,
        "nvidia.com/gpu.machine": "kwok-simulated",
        "nvidia.com/cuda.driver.major": "550",
        "nvidia.com/cuda.runtime.major": "12",
        "nvidia.com/mig.capable": "false",
        "nvidia.com/gpu.deploy.device-plugin": "true",
    }


def node_manifest(shape: NodeShape) -> dict[str, Any]:
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": shape.name,
        "node.kubernetes.io/instance-type": "kwok-gpu" if shape.gpus else "kwok-cpu",
        "type": "kwok",
    }
    capacity = {"cpu": shape.cpu, "memory": shape.memory, "pods": "110", "ephemeral-storage": "200Gi"}
    if shape.gpus:
        labels |= gpu_labels(shape)
        capacity["nvidia.com/gpu"] = str(shape.gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": shape.name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {},
        "status": {
            "allocatable": capacity,
            "capacity": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok",
            },
            "phase": "Running",
        },
    }
