"""ModelService builders asserted as whole manifests: each case file holds the input and the one expected object.

A case (``cases/*.yaml``): ``builder`` (deployment, canary, service, hpa, pdb, networkpolicy), the ``modelService`` it
is built for, the pinned ``model`` and optional ``options``; ``expected`` is the whole object.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas.api import ModelService
from kubemaas.api.storage import S3Storage
from kubemaas.controllers.modelservice import serving_options
from kubemaas.manifests import modelservice as m
from tests.manifests.builders import parent_of

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


def model_of(case: dict[str, Any]) -> m.ModelRef:
    fields = dict(case.get("model", {"store_uri": "", "model": "", "version": "", "key_secret": "", "source": ""}))
    if "s3" in fields:
        fields["s3"] = S3Storage.model_validate(fields["s3"])
    return m.ModelRef(**fields)


def build(case: dict[str, Any]) -> dict[str, Any]:
    ms = ModelService.parse(case["modelService"])
    parent = parent_of(ms)
    model = model_of(case)
    options = dataclasses.replace(serving_options(ms), **case.get("options", {}))
    builder = case["builder"]
    if builder in ("deployment", "canary"):
        autoscaled = ms.spec.autoscaling is not None
        if builder == "canary":
            return m.deployment(
                ms.spec, parent, model, options, track=m.Track.CANARY, replicas=ms.spec.rollout.canary_replicas
            )
        return m.deployment(ms.spec, parent, model, options, replicas=None if autoscaled else ms.spec.replicas)
    if builder == "service":
        return m.service(parent)
    if builder == "hpa":
        assert ms.spec.autoscaling is not None
        return m.horizontal_pod_autoscaler(parent, ms.spec.autoscaling)
    if builder == "pdb":
        return m.pod_disruption_budget(parent, options)
    if builder == "networkpolicy":
        return m.network_policy(parent, ms.spec.network)
    raise AssertionError(f"unknown builder {builder}")


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_manifest(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    assert build(case) == case["expected"]


def test_every_builder_has_a_case() -> None:
    builders = {yaml.safe_load(p.read_text())["builder"] for p in CASES}
    assert builders == {"deployment", "canary", "service", "hpa", "pdb", "networkpolicy"}


@pytest.mark.parametrize(
    "path", [p for p in CASES if "deployment" in p.stem or "canary" in p.stem], ids=lambda p: p.stem
)
def test_template_round_trips_to_its_model(path: Path) -> None:
    case = yaml.safe_load(path.read_text())
    obj = build(case)
    assert m.model_ref_from_template(obj["spec"]["template"]) == model_of(case)


def test_template_without_loader_has_no_model() -> None:
    assert m.model_ref_from_template({"spec": {"containers": [{"name": "x"}]}}) is None


def test_key_secret_only_in_the_loader() -> None:
    case = yaml.safe_load((Path(__file__).parent / "cases" / "deployment-gpu-autoscaled.yaml").read_text())
    pod = build(case)["spec"]["template"]["spec"]
    mounts = {c["name"]: {v["name"] for v in c["volumeMounts"]} for c in pod["initContainers"] + pod["containers"]}
    assert "model-key" in mounts["model-loader"]
    assert "model-key" not in mounts["tritonserver"]
    assert not any("env" in c and any("KEY" in e["name"] for e in c["env"]) for c in pod["containers"])


@pytest.mark.parametrize(("value", "text"), [(2000, "2k"), (1500, "1500"), (3_000_000, "3M"), (7, "7"), (0, "0")])
def test_quantities_are_rendered_as_the_api_server_returns_them(value: int, text: str) -> None:
    assert m.canonical_quantity(value) == text
