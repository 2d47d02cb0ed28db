"""The admission policy and aggregated roles generated from the API models (kubemaas.api.access).

The reference fields the policy checks are found by walking the pydantic models; these tests find them
again, independently, in the CRD schema (by what the fields are called and say they hold), so a Secret,
ServiceAccount or TrainingJob field that no rule of the generator covers fails here. What the policy does
on a real API server, with an impersonated user, is e2e/test_admission.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from kubemaas.api import access, access_manifests, roles
from kubemaas.api.base import ApiModel
from kubemaas.api.crd import KINDS, Kind, openapi_schema
from kubemaas.api.trainingjob import TrainingJob, TrainingJobSpec
from kubemaas.cli import main
from tests.api.cases import CRDS_DIR, REPO
from tests.api.schema import walk

CHART = REPO / "charts" / "kubemaas"


def spec_leaves(kind: Kind) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(field path as `references` writes it, property name, schema node) of every field under spec."""
    for path, node in walk(openapi_schema(kind)["properties"]["spec"], "spec"):
        name = re.sub(r"\[\]$", "", path.rsplit(".", 1)[-1])
        yield path, name, node


def secret_name_fields(kind: Kind) -> set[str]:
    """Every string field under spec that names a Secret: called `name` or `*Name`, with "secret" in its path
    or description, and not a ConfigMap's (KeyRef and SourceRef serve both)."""
    return {
        path
        for path, name, node in spec_leaves(kind)
        if node.get("type") == "string"
        and (name == "name" or name.endswith("Name"))
        and ("secret" in path.lower() or "secret" in node.get("description", "").lower())
        and not any(part.startswith("configMap") for part in path.split("."))
    }


def fields_named(kind: Kind, pattern: str) -> set[str]:
    return {path for path, name, _ in spec_leaves(kind) if re.fullmatch(pattern, name)}


def covered(kind: Kind, permission: access.Permission) -> set[str]:
    return {r.field for r in access.references(kind) if r.rule.permission == permission}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_secret_reference_of_the_models_is_checked(kind: Kind) -> None:
    expected = secret_name_fields(kind)
    assert covered(kind, access.SECRET_GET) == expected
    # What docs/admission.md lists: the encryption key, env, envFrom, volumes and image pull Secrets.
    assert any(f.endswith("keySecretRef.name") for f in expected)
    assert any("env[].valueFrom.secretKeyRef" in f for f in expected)
    assert any("envFrom[].secretRef" in f for f in expected)
    assert any(f.startswith("spec.imagePullSecrets[]") for f in expected)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_service_account_and_training_job_reference_is_checked(kind: Kind) -> None:
    assert covered(kind, access.POD_CREATE) == fields_named(kind, "serviceAccount.*") == {"spec.serviceAccountName"}
    training_jobs = fields_named(kind, "trainingJob.*")
    assert {
        r.field.removesuffix(".name")
        for r in access.references(kind)
        if r.rule.permission in (access.TRAINING_JOB_GET, access.TRAINING_JOB_LIST)
    } == training_jobs
    # A ModelService serves a TrainingJob's model; a TrainingJob distills from one (its teacher).
    assert (
        training_jobs
        == {
            "ModelService": {"spec.model.trainingJobRef", "spec.model.trainingJobSelector"},
            "TrainingJob": {"spec.distillation.teacher.trainingJobRef"},
        }[kind.kind]
    )


def test_the_documented_fields_are_the_ones_found() -> None:
    by_kind = {k.kind: {r.field for r in access.references(k)} for k in KINDS}
    assert by_kind["TrainingJob"] == {
        "spec.encryption.keySecretRef.name",
        "spec.data.encryption.keySecretRef.name",
        "spec.data.storage.s3.credentialsSecretRef.name",
        "spec.output.storage.s3.credentialsSecretRef.name",
        "spec.distillation.teacher.keySecretRef.name",
        "spec.distillation.teacher.trainingJobRef.name",
        "spec.env[].valueFrom.secretKeyRef.name",
        "spec.envFrom[].secretRef.name",
        "spec.volumes[].secret.secretName",
        "spec.imagePullSecrets[].name",
        "spec.serviceAccountName",
    }
    assert by_kind["ModelService"] == {
        "spec.model.encryption.keySecretRef.name",
        "spec.model.trainingJobRef.name",
        "spec.model.trainingJobSelector",
        "spec.model.storage.s3.credentialsSecretRef.name",
        "spec.runtime.env[].valueFrom.secretKeyRef.name",
        "spec.runtime.envFrom[].secretRef.name",
        "spec.imagePullSecrets[].name",
        "spec.serviceAccountName",
    }
    docs = (REPO / "docs" / "admission.md").read_text()
    for fields in by_kind.values():
        for field in fields:
            assert f"`{field}`" in docs, f"docs/admission.md does not list {field}"


def test_every_rule_of_the_generator_matches_a_field() -> None:
    # A renamed model field would otherwise leave a rule that silently checks nothing.
    walked = [r for k in KINDS for r in access.references(k)]
    for name in access.FIELD_RULES:
        assert any(re.sub(r"_([a-z])", lambda m: m[1].upper(), name) in r.field for r in walked), name
    for model, rule in access.TYPE_RULES.items():
        field = model.model_fields[rule.name_field or "name"]
        assert any(r.field.endswith("." + (field.alias or "")) for r in walked), model.__name__


class _S3(ApiModel):
    """A field added later, holding a Secret's name as a plain string: no rule of the generator knows it."""

    credentials_secret_name: str = Field(description="Secret with the access key.")


class _SpecWithS3(TrainingJobSpec):
    s3: _S3 | None = Field(default=None, description="Object storage.")


class _TrainingJobWithS3(TrainingJob):
    spec: _SpecWithS3 = Field(description="Desired state.")


def test_a_new_secret_field_without_a_rule_is_noticed() -> None:
    kind = Kind(model=_TrainingJobWithS3, kind="TrainingJob", plural="trainingjobs", short_name="tj", columns=())
    missing = secret_name_fields(kind) - covered(kind, access.SECRET_GET)
    assert missing == {"spec.s3.credentialsSecretName"}


# --- the policy --------------------------------------------------------------------------------------


def policy(kind: Kind) -> dict[str, Any]:
    return access.admission_policy(kind)


def expressions(obj: dict[str, Any]) -> list[str]:
    spec = obj["spec"]
    return [v["expression"] for v in (*spec["variables"], *spec["validations"])]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_policy_stays_within_the_api_servers_cel_budgets(kind: Kind) -> None:
    obj = policy(kind)
    # One evaluation of the policy: every check it can make, together.
    assert access.authz_checks_at_most(obj) * access.AUTHZ_CHECK_COST < access.POLICY_COST_BUDGET
    # One expression: at most one check (a second plus the rest would pass the per-expression limit of 1,000,000
    # when its list is long; one check each keeps every expression far below it).
    for expression in expressions(obj):
        assert expression.count(".check(") <= 1, expression


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_messages_never_use_the_authorizer(kind: Kind) -> None:
    # The API server gives a messageExpression no authorizer, not even through a variable: such a message
    # fails and the refusal reads "failed expression: ..." instead of naming the field.
    obj = policy(kind)
    with_authorizer = {v["name"] for v in obj["spec"]["variables"] if "authorizer" in v["expression"]}
    for validation in obj["spec"]["validations"]:
        message = validation["messageExpression"]
        assert "authorizer" not in message
        assert not {v for v in with_authorizer if f"variables.{v}" in message}, message
        assert validation["reason"] == "Forbidden"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_policy_matches_creates_and_spec_changes_of_its_kind_only(kind: Kind) -> None:
    spec = policy(kind)["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == [kind.plural]  # not <plural>/status: the operator writes status
    assert rule["operations"] == ["CREATE", "UPDATE"]
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == "request.operation == 'CREATE' || object.spec != oldObject.spec"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_reference_reaches_the_policy(kind: Kind) -> None:
    spec = policy(kind)["spec"]
    text = "\n".join([*expressions(policy(kind)), *(v["messageExpression"] for v in spec["validations"])])
    for ref in access.references(kind):
        # A list's items are named by index in the refusal: spec.env[3].valueFrom.secretKeyRef.name.
        prefix, _, suffix = ref.field.partition("[]")
        assert f"{prefix}[' + string(i) + ']{suffix}" in text if suffix else ref.field in text, ref.field


def test_secret_slots_fill_the_budget_left_by_the_other_checks() -> None:
    for kind in KINDS:
        checks = access.authz_checks_at_most(policy(kind))
        # The namespace-wide Secret check, one per slot, and one per other reference.
        others = len([r for r in access.references(kind) if r.rule.permission != access.SECRET_GET])
        assert checks == 1 + access.SECRET_SLOTS + others


# --- the aggregated roles ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", roles.ROLES)
def test_aggregated_roles(role: str) -> None:
    obj = roles.aggregated_role(role)
    assert obj["metadata"]["name"] == f"kubemaas-{role}"
    assert obj["metadata"]["labels"][f"rbac.authorization.k8s.io/aggregate-to-{role}"] == "true"
    granted: dict[str, set[str]] = {}
    for rule in obj["rules"]:
        assert rule["apiGroups"] == ["kubemaas.io"]
        for resource in rule["resources"]:
            assert "*" not in resource and "*" not in rule["verbs"]
            granted.setdefault(resource, set()).update(rule["verbs"])
    read, write = set(roles.READ), set(roles.WRITE)
    for kind in KINDS:
        assert granted[f"{kind.plural}/status"] == read  # status stays the operator's
        assert granted[kind.plural] == (read if role == "view" else read | write)


# --- files -------------------------------------------------------------------------------------------


def test_committed_files_are_fresh_and_the_charts_copies_equal_the_plain_ones() -> None:
    assert access_manifests.stale(CRDS_DIR) == []
    assert access_manifests.stale(CHART) == []
    for name in access_manifests.render_all():
        assert (CHART / name).read_text() == (CRDS_DIR / name).read_text(), name
        assert yaml.safe_load((CRDS_DIR / name).read_text())["metadata"]["name"].startswith(f"{access.NAME_PREFIX}-")


def test_check_names_a_stale_or_stray_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["access", "--out", str(tmp_path)]) == 0
    assert main(["access", "--check", "--out", str(tmp_path)]) == 0
    edited = tmp_path / "roles" / "kubemaas-view.yaml"
    edited.write_text(edited.read_text().replace("watch", "delete"))
    (tmp_path / "admission" / "extra.yaml").write_text("{}\n")
    capsys.readouterr()
    assert main(["access", "--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{edited}: stale" in err
    assert f"{tmp_path / 'admission' / 'extra.yaml'}: not generated from any API model" in err
