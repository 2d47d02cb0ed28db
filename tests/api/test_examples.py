"""The examples a user learns the API from are valid, and mean what their comments say."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from kubemaas.api import LATEST, ModelService, TrainingJob
from kubemaas.api.crd import KINDS, openapi_schema
from kubemaas.api.modelservice import ScalingMetric
from kubemaas.api.trainingjob import Backend, KeyGeneration, Quantization
from tests.api.cases import EXAMPLES_DIR

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SCHEMAS = {k.kind: openapi_schema(k) for k in KINDS}


def test_examples_exist_for_every_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES}
    assert kinds == {"TrainingJob", "ModelService"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_the_crd_schema(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    jsonschema.Draft7Validator(SCHEMAS[body["kind"]]).validate(body)


def test_training_example() -> None:
    job = TrainingJob.parse(yaml.safe_load((EXAMPLES_DIR / "trainingjob-digits.yaml").read_text()))
    assert job.spec.replicas == 2
    assert job.spec.resources.gpus == 1
    assert job.spec.resources.memory == "8Gi"
    assert job.spec.resources.shm_size == "1Gi"
    assert job.spec.backend is Backend.Auto
    assert job.spec.output.quantization is Quantization.NONE
    assert job.spec.encryption.generate_key is KeyGeneration.IfMissing
    assert job.spec.scheduling is not None and job.spec.scheduling.queue_name == "team-a"


def test_serving_example() -> None:
    svc = ModelService.parse(yaml.safe_load((EXAMPLES_DIR / "modelservice-digits.yaml").read_text()))
    assert svc.spec.model.training_job_ref is not None and svc.spec.model.training_job_ref.name == "digits"
    assert svc.spec.model.version == LATEST
    assert svc.spec.batching.preferred_batch_sizes == [8, 16, 32]
    assert svc.spec.autoscaling is not None
    assert (svc.spec.autoscaling.min_replicas, svc.spec.autoscaling.max_replicas) == (1, 4)
    assert svc.spec.autoscaling.metric is ScalingMetric.CPU
    assert svc.spec.replicas is None, "replicas and autoscaling are exclusive"
    assert svc.spec.runtime.image is None, "the operator's default Triton image applies"
    assert svc.spec.promotion is not None
    (gate,) = svc.spec.promotion.require_metrics
    assert (gate.name, gate.min, gate.max) == ("heldOutAccuracy", "0.9", None)


def test_promotion_gate_names_a_metric_the_training_example_publishes() -> None:
    svc = ModelService.parse(yaml.safe_load((EXAMPLES_DIR / "modelservice-digits.yaml").read_text()))
    assert svc.spec.promotion is not None
    program = (EXAMPLES_DIR / "training" / "digits_mlp.py").read_text()
    for gate in svc.spec.promotion.require_metrics:
        assert f'"{gate.name}"' in program, f"digits_mlp.py does not publish {gate.name}"


QUICKSTART = EXAMPLES_DIR / "quickstart"


def quickstart_objects() -> dict[str, dict[str, object]]:
    docs = [d for p in sorted(QUICKSTART.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {str(d["kind"]): d for d in docs}


def test_the_quickstart_trains_and_serves_on_the_local_clusters_cpu() -> None:
    """What `make run` provides is what examples/quickstart/ asks for: no GPU, images the project builds and
    puts on the real node, the real node's placement, the store directory `make run` prepares."""
    from e2e.cluster import images, node, quickstart

    objects = quickstart_objects()
    assert set(objects) == {"PersistentVolume", "PersistentVolumeClaim", "TrainingJob", "ModelService"}
    for kind in ("TrainingJob", "ModelService"):
        jsonschema.Draft7Validator(SCHEMAS[kind]).validate(objects[kind])
    job = TrainingJob.parse(objects["TrainingJob"])
    svc = ModelService.parse(objects["ModelService"])
    built = {image.ref for image in images.DOCKERFILE_IMAGES.values()}
    assert job.spec.image in built and svc.spec.runtime.image in built
    assert job.spec.resources.gpus in (None, 0) and svc.spec.resources.gpus in (None, 0)
    assert svc.spec.runtime.backend.value == "python"  # the CPU Triton image has no libtorch backend
    placement = node.pod_placement()
    for scheduling in (job.spec.scheduling, svc.spec.scheduling):
        assert scheduling is not None
        assert scheduling.node_selector == placement["nodeSelector"]
        assert [t.to_wire() for t in scheduling.tolerations or ()] == placement["tolerations"]
    assert svc.spec.model.training_job_ref is not None and svc.spec.model.training_job_ref.name == job.metadata.name
    assert job.spec.output.uri == "pvc://models/store"
    pv = objects["PersistentVolume"]
    assert pv["spec"]["local"] == {"path": str(quickstart.STORE)}  # type: ignore[index]
    assert objects["PersistentVolumeClaim"]["metadata"] == {"name": "models"}


def test_distilled_training_example() -> None:
    job = TrainingJob.parse(yaml.safe_load((EXAMPLES_DIR / "trainingjob-digits-distilled.yaml").read_text()))
    teacher = yaml.safe_load((EXAMPLES_DIR / "trainingjob-digits.yaml").read_text())
    assert job.spec.distillation is not None
    ref = job.spec.distillation.teacher.training_job_ref
    assert ref is not None and ref.name == teacher["metadata"]["name"]
    # The teacher's own key Secret, or the operator refuses it (TeacherKeyMismatch).
    assert job.spec.distillation.teacher.key_secret_ref.name == teacher["spec"]["encryption"]["keySecretRef"]["name"]
    assert job.spec.output.compression is not None and job.spec.output.compression.pruning is not None
