"""The admission policy that checks the requester, and the aggregated roles, against the real API server.

Each test impersonates a user (Impersonate-User, as `kubectl --as`) with a Role of the test's own namespace
and creates TrainingJobs and ModelServices as that user. The policies are the generated ones
(kubemaas.api.access) under names of the test's own, bound to the test's namespace only: the suite's other
tests, which create objects as the cluster admin (who passes every check anyway), never meet them. What the
refusals must say is docs/admission.md.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.chart import CHART, Tools, values_file
from e2e.conftest import E2ECluster
from e2e.kube import create_custom_object, load_crds, merge_patch_custom_object, model_service, training_job
from e2e.test_chart import render
from e2e.test_modelservice import crds  # noqa: F401  (a fixture)
from e2e.typed_client import body_as, new_client
from kubemaas.api import access, roles
from kubemaas.api.crd import GROUP, KINDS

ENFORCED_TIMEOUT = 30.0  # the API server's policy informers pick a new policy and binding up within seconds
Rule = dict[str, Any]


def rule(group: str, resource: str, *verbs: str, names: tuple[str, ...] = ()) -> Rule:
    out: Rule = {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
    if names:
        out["resourceNames"] = list(names)
    return out


CREATE_BOTH = rule(GROUP, "trainingjobs", "create"), rule(GROUP, "modelservices", "create")


def served_uri(key: str) -> dict[str, Any]:
    """A ModelService source from the store, with its key Secret."""
    return {"uri": "pvc://models/store/digits", "encryption": {"keySecretRef": {"name": key}}}


@dataclass
class Admission:
    """The test's namespace with the generated policies bound to it; users and their Roles in it."""

    cluster: E2ECluster
    namespace: str
    suffix: str

    def as_user(self, user: str) -> client.ApiClient:
        api = new_client(self.cluster.kubeconfig)
        api.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]
        return api

    def grant(self, user: str, *rules: Rule) -> None:
        """A Role with `rules` bound to `user` in the namespace (a user may be granted several)."""
        name = f"{user}-{uuid.uuid4().hex[:5]}"
        rbac = client.RbacAuthorizationV1Api(self.cluster.api)
        role = {"metadata": {"name": name}, "rules": list(rules)}
        rbac.create_namespaced_role(self.namespace, body_as(client.V1Role, role))
        binding = {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        rbac.create_namespaced_role_binding(self.namespace, body_as(client.V1RoleBinding, binding))
        # The authorizer learns of a new binding through its informers: wait, or RBAC's own 403 would follow.
        first = rules[0]
        attributes = {"namespace": self.namespace, "verb": first["verbs"][0], "group": first["apiGroups"][0],
                      "resource": first["resources"][0], "name": (first.get("resourceNames") or [""])[0]}  # fmt: skip
        review = {"spec": {"user": user, "resourceAttributes": attributes}}
        authorization = client.AuthorizationV1Api(self.cluster.api)

        def allowed() -> bool:
            answer: Any = authorization.create_subject_access_review(body_as(client.V1SubjectAccessReview, review))
            return bool(answer.status.allowed)

        self.cluster.wait_for(f"{user}'s Role {name} to take effect", allowed, timeout=30)

    def create(self, user: str, obj: dict[str, Any]) -> dict[str, Any]:
        return create_custom_object(self.as_user(user), self.namespace, obj, load_crds())

    def refusal(self, user: str, obj: dict[str, Any], patch: dict[str, Any] | None = None) -> str:
        """The policy's message refusing `user`'s create (or merge patch) of `obj`; fails if it was admitted."""
        api, crds_ = self.as_user(user), load_crds()
        with pytest.raises(ApiException) as refused:
            if patch is None:
                create_custom_object(api, self.namespace, obj, crds_)
            else:
                merge_patch_custom_object(api, self.namespace, obj, patch, crds_)
        assert refused.value.status == 403, refused.value.body
        message = str(json.loads(str(refused.value.body))["message"])
        assert "ValidatingAdmissionPolicy" in message, message  # not RBAC's own refusal
        return message.split("denied request: ", 1)[1]

    def expect(self, user: str, obj: dict[str, Any], field: str, missing: str) -> None:
        """Refused, naming the field and the missing permission."""
        assert self.refusal(user, obj) == f"{field}: user {user} may not {missing} in namespace {self.namespace}"


def policy_objects(suffix: str, namespace: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The generated policies and bindings under names of this test, bound to `namespace` only."""
    out = []
    for kind in KINDS:
        policy, binding = access.admission_policy(kind), copy.deepcopy(access.admission_binding(kind))
        name = f"{access.policy_name(kind)}-{suffix}"
        policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
        binding["spec"]["matchResources"] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        }
        out.append((policy, binding))
    return out


PROBE_USER = "admission-probe"


def wait_enforced(admission: Admission) -> None:
    """Until both bindings refuse a probe user who may create the kinds but get no Secret."""
    probes = [
        training_job("probe", encryption={"keySecretRef": {"name": "probe-key"}}),
        model_service("probe", served_uri("probe-key")),
    ]
    deadline = time.monotonic() + ENFORCED_TIMEOUT
    for probe in probes:
        while True:
            try:
                obj = create_custom_object(admission.as_user(PROBE_USER), admission.namespace, probe, load_crds())
            except ApiException as error:
                if error.status == 403 and admission.suffix in str(error.body):
                    break
                if error.status != 403 or "ValidatingAdmissionPolicy" not in str(error.body):
                    raise
                # Refused by another release's policy (a chart installed beside this test, e.g. the quickstart's):
                # its refusals read exactly like ours, so once the wait is over either one will do.
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
                continue
            group, version = obj["apiVersion"].split("/")
            plural = next(k.plural for k in KINDS if k.kind == obj["kind"])
            client.CustomObjectsApi(admission.cluster.api).delete_namespaced_custom_object(
                group, version, admission.namespace, plural, "probe"
            )
            assert time.monotonic() < deadline, "the admission policies were not enforced in time"
            time.sleep(0.5)


def type_checked(api: client.AdmissionregistrationV1Api, name: str) -> client.V1TypeChecking | None:
    found: Any = api.read_validating_admission_policy(name)
    status = found.status
    if status is None or status.observed_generation != found.metadata.generation:
        return None
    return status.type_checking or client.V1TypeChecking()


@pytest.fixture
def admission(cluster: E2ECluster, namespace: str, crds: None) -> Iterator[Admission]:  # noqa: F811
    suffix = namespace.rsplit("-", 1)[-1] + uuid.uuid4().hex[:4]
    api = client.AdmissionregistrationV1Api(cluster.api)
    created = policy_objects(suffix, namespace)
    try:
        for policy, binding in created:
            api.create_validating_admission_policy(body_as(client.V1ValidatingAdmissionPolicy, policy))
            api.create_validating_admission_policy_binding(body_as(client.V1ValidatingAdmissionPolicyBinding, binding))
        found = Admission(cluster, namespace, suffix)
        found.grant(PROBE_USER, *CREATE_BOTH)
        wait_enforced(found)
        for policy, _ in created:
            # The API server type-checks every expression against the CRDs' schemas, and says so in status.
            checked = cluster.wait_for(
                f"{policy['metadata']['name']} to be type-checked",
                partial(type_checked, api, policy["metadata"]["name"]),
            )
            assert not checked.expression_warnings, checked.expression_warnings
        yield found
    finally:
        for policy, binding in created:
            for delete, name in (
                (api.delete_validating_admission_policy_binding, binding["metadata"]["name"]),
                (api.delete_validating_admission_policy, policy["metadata"]["name"]),
            ):
                try:
                    delete(name)
                except ApiException as error:
                    if error.status != 404:
                        raise


# --- refused ----------------------------------------------------------------------------------------


def test_key_secret_the_user_may_not_get_is_refused_naming_the_field(admission: Admission) -> None:
    admission.grant("alice", *CREATE_BOTH)
    job = training_job("digits", encryption={"keySecretRef": {"name": "team-b-key"}, "generateKey": "Never"})
    admission.expect("alice", job, "spec.encryption.keySecretRef.name", "get secret 'team-b-key'")
    served = model_service("digits", served_uri("team-b-key"))
    admission.expect("alice", served, "spec.model.encryption.keySecretRef.name", "get secret 'team-b-key'")


ENV_SECRET = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "team-b-token", "key": "token"}}}
PLAIN_ENV = {"name": "MODE", "value": "fast"}
SECRET_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("TrainingJob", {"env": [PLAIN_ENV, ENV_SECRET]}, "spec.env[1].valueFrom.secretKeyRef.name"),
    ("TrainingJob", {"envFrom": [{"secretRef": {"name": "team-b-token"}}]}, "spec.envFrom[0].secretRef.name"),
    (
        "TrainingJob",
        {"volumes": [{"name": "creds", "secret": {"secretName": "team-b-token"}}]},
        "spec.volumes[0].secret.secretName",
    ),
    ("TrainingJob", {"imagePullSecrets": [{"name": "team-b-token"}]}, "spec.imagePullSecrets[0].name"),
    ("TrainingJob", {"data": {"uri": "pvc://datasets/digits",
                              "encryption": {"keySecretRef": {"name": "team-b-token"}}}},
     "spec.data.encryption.keySecretRef.name"),
    ("TrainingJob", {"data": {"uri": "s3://datasets/digits",
                              "storage": {"s3": {"credentialsSecretRef": {"name": "team-b-token"}}}}},
     "spec.data.storage.s3.credentialsSecretRef.name"),
    ("TrainingJob", {"output": {"uri": "s3://models/store",
                                "storage": {"s3": {"credentialsSecretRef": {"name": "team-b-token"}}}}},
     "spec.output.storage.s3.credentialsSecretRef.name"),
    ("TrainingJob", {"distillation": {"teacher": {"uri": "pvc://models/store/digits",
                                                  "keySecretRef": {"name": "team-b-token"}}}},
     "spec.distillation.teacher.keySecretRef.name"),
    ("ModelService", {"runtime": {"env": [PLAIN_ENV, ENV_SECRET]}}, "spec.runtime.env[1].valueFrom.secretKeyRef.name"),
    ("ModelService", {"runtime": {"envFrom": [{"secretRef": {"name": "team-b-token"}}]}},
     "spec.runtime.envFrom[0].secretRef.name"),
    ("ModelService", {"imagePullSecrets": [{"name": "team-b-token"}]}, "spec.imagePullSecrets[0].name"),
    ("ModelService", {"model": {"uri": "s3://models/store/digits", "encryption": {"keySecretRef": {"name": "own-key"}},
                                "storage": {"s3": {"credentialsSecretRef": {"name": "team-b-token"}}}}},
     "spec.model.storage.s3.credentialsSecretRef.name"),
]  # fmt: skip


def test_env_envfrom_volume_and_pull_secrets_the_user_may_not_get_are_refused(admission: Admission) -> None:
    # alice may get the key Secret, by name, and nothing else.
    admission.grant("alice", *CREATE_BOTH, rule("", "secrets", "get", names=("own-key",)))
    key = {"keySecretRef": {"name": "own-key"}}
    for kind, spec, field in SECRET_FIELDS:
        if kind == "TrainingJob":
            obj = training_job("digits", encryption=key, **spec)
        else:  # a source of its own (an s3:// uri with its credentials Secret), or the store's with the own key
            rest = {k: v for k, v in spec.items() if k != "model"}
            obj = model_service("digits", spec.get("model", served_uri("own-key")), **rest)
        admission.expect("alice", obj, field, "get secret 'team-b-token'")
    # Every field the generator found in the models is among those tried here.
    tried = {field.replace("[0]", "[]").replace("[1]", "[]") for _, _, field in SECRET_FIELDS}
    found = {r.field for k in KINDS for r in access.references(k) if r.rule.permission == access.SECRET_GET}
    assert found - tried == {"spec.encryption.keySecretRef.name", "spec.model.encryption.keySecretRef.name"}


def test_service_account_without_pod_create_is_refused(admission: Admission) -> None:
    admission.grant("alice", *CREATE_BOTH, rule("", "secrets", "get"))
    job = training_job("digits", serviceAccountName="builder")
    served = model_service("digits", served_uri("key"), serviceAccountName="builder")
    missing = f"create pods in namespace {admission.namespace}, so may not run pods as ServiceAccount 'builder'"
    for obj in (job, served):
        assert admission.refusal("alice", obj) == f"spec.serviceAccountName: user alice may not {missing}"
    # Whoever may create pods may already run them as any ServiceAccount of the namespace.
    admission.grant("alice", rule("", "pods", "create"))
    admission.create("alice", job)
    admission.create("alice", served)


def test_model_service_serving_a_training_job_the_user_may_not_get_is_refused(admission: Admission) -> None:
    admission.grant("alice", *CREATE_BOTH[1:], rule("", "secrets", "get"))
    by_ref = model_service("digits", {"trainingJobRef": {"name": "team-b-job"}})
    admission.expect("alice", by_ref, "spec.model.trainingJobRef.name", "get TrainingJob 'team-b-job'")
    by_selector = model_service("digits", {"trainingJobSelector": {"matchLabels": {"team": "b"}}})
    admission.expect("alice", by_selector, "spec.model.trainingJobSelector", "list trainingjobs")
    admission.grant("alice", rule(GROUP, "trainingjobs", "get", names=("own-job",)))
    admission.create("alice", model_service("digits", {"trainingJobRef": {"name": "own-job"}}))
    admission.expect("alice", by_selector, "spec.model.trainingJobSelector", "list trainingjobs")


def test_a_teacher_training_job_the_user_may_not_get_is_refused(admission: Admission) -> None:
    """Distilling from a TrainingJob asks `get` on it, as serving one does (and `get` on its key Secret)."""
    admission.grant("alice", CREATE_BOTH[0], rule("", "secrets", "get"))
    teacher = {"keySecretRef": {"name": "team-b-key"}}
    student = training_job("student", distillation={"teacher": {"trainingJobRef": {"name": "team-b-job"}, **teacher}})
    admission.expect("alice", student, "spec.distillation.teacher.trainingJobRef.name", "get TrainingJob 'team-b-job'")
    admission.grant("alice", rule(GROUP, "trainingjobs", "get", names=("own-job",)))
    admission.create(
        "alice", training_job("student", distillation={"teacher": {"trainingJobRef": {"name": "own-job"}, **teacher}})
    )


def test_more_distinct_secrets_than_checked_by_name_is_refused(admission: Admission) -> None:
    slots = access.SECRET_SLOTS
    names = tuple(f"s{i}" for i in range(slots + 1))
    admission.grant("alice", *CREATE_BOTH, rule("", "secrets", "get", names=names))
    # The most references the API allows with `slots` distinct names: the costliest object a user allowed
    # Secrets by name can create, within the API server's budget.
    env = [
        {"name": f"V{i}", "valueFrom": {"secretKeyRef": {"name": names[i % (slots - 1)], "key": "k"}}}
        for i in range(128)
    ]
    most: dict[str, Any] = {
        "env": env,
        "envFrom": [{"secretRef": {"name": names[i % 4]}} for i in range(16)],
        "volumes": [{"name": f"v{i}", "secret": {"secretName": names[i % 4]}} for i in range(32)],
        "imagePullSecrets": [{"name": names[i]} for i in range(16)],
        "encryption": {"keySecretRef": {"name": names[slots - 1]}},
    }  # fmt: skip
    admission.create("alice", training_job("most", **most))
    one_more = {**most, "imagePullSecrets": [{"name": names[slots]}, *most["imagePullSecrets"][1:]]}
    assert admission.refusal("alice", training_job("one-more", **one_more)) == (
        f"spec: user alice may get only some secrets in namespace {admission.namespace} and the object references "
        f"{slots + 1} distinct secrets, more than the {slots} the admission policy checks one by one: reference "
        "fewer, or be allowed to get every secret in the namespace"
    )


# --- admitted ---------------------------------------------------------------------------------------


def every_reference(key: str, secret: str) -> dict[str, Any]:
    return {
        "encryption": {"keySecretRef": {"name": key}, "generateKey": "Never"},
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}}],
        "envFrom": [{"secretRef": {"name": secret}}],
        "volumes": [{"name": "creds", "secret": {"secretName": secret}}],
        "imagePullSecrets": [{"name": secret}],
        "serviceAccountName": "builder",
    }


@pytest.mark.parametrize("secrets", ["by-name", "namespace-wide"])
def test_user_with_the_permissions_is_admitted_and_spec_changes_are_checked_again(
    admission: Admission, secrets: str
) -> None:
    names = ("team-a-key", "team-a-token")
    allowed = rule("", "secrets", "get", names=names if secrets == "by-name" else ())
    admission.grant("alice", *CREATE_BOTH, allowed, rule("", "pods", "create"),
                    rule(GROUP, "trainingjobs", "get", names=("digits",)))  # fmt: skip
    job = admission.create("alice", training_job("digits", **every_reference(*names)))
    source = {"trainingJobRef": {"name": "digits"}}
    runtime = {"env": [ENV_SECRET | {"valueFrom": {"secretKeyRef": {"name": names[1], "key": "k"}}}]}
    admission.create("alice", model_service("digits", source, runtime=runtime, serviceAccountName="builder"))
    admission.create("alice", model_service("by-uri", served_uri(names[0]), imagePullSecrets=[{"name": names[1]}]))

    # bob may edit TrainingJobs but get no Secret: suspending alice's job changes its spec, and is refused
    # (its pods would come back with Secrets bob cannot read); annotating it changes no spec, and is admitted,
    # as the operator's own writes are.
    admission.grant("bob", rule(GROUP, "trainingjobs", "get", "patch"))
    message = admission.refusal("bob", job, {"spec": {"runPolicy": {"suspend": True}}})
    # The first reference in the models' order is named: spec.env comes before spec.encryption.
    assert message == (
        f"spec.env[0].valueFrom.secretKeyRef.name: user bob may not get secret 'team-a-token' in namespace "
        f"{admission.namespace}"
    )
    api = admission.as_user("bob")
    merge_patch_custom_object(api, admission.namespace, job, {"metadata": {"annotations": {"x": "y"}}}, load_crds())


# --- aggregated roles -------------------------------------------------------------------------------


def can_i(api: client.ApiClient, namespace: str, verb: str, resource: str) -> bool:
    review = {
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": GROUP, "resource": resource}}
    }
    answer: Any = client.AuthorizationV1Api(api).create_self_subject_access_review(
        body_as(client.V1SelfSubjectAccessReview, review)
    )
    return bool(answer.status.allowed)


@pytest.fixture
def aggregated_roles(cluster: E2ECluster, namespace: str) -> Iterator[None]:
    """The generated roles under names of this test (another test may hold the same ones under its names)."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    generated = [roles.aggregated_role(role) for role in roles.ROLES]
    for role in generated:
        role["metadata"]["name"] += "-" + namespace.rsplit("-", 1)[-1]
        rbac.create_cluster_role(body_as(client.V1ClusterRole, role))
    try:
        yield
    finally:
        for role in generated:
            rbac.delete_cluster_role(role["metadata"]["name"])


@pytest.mark.usefixtures("aggregated_roles")
def test_edit_lets_a_user_create_a_training_job_and_view_only_read(cluster: E2ECluster, admission: Admission) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    for user, role in (("erin", "edit"), ("vic", "view")):
        binding = {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        rbac.create_namespaced_role_binding(admission.namespace, body_as(client.V1RoleBinding, binding))
    erin, vic = admission.as_user("erin"), admission.as_user("vic")
    # The cluster-role aggregation controller folds kubemaas-edit into edit within moments.
    cluster.wait_for(
        "edit to aggregate kubemaas-edit", lambda: can_i(erin, admission.namespace, "create", "trainingjobs")
    )
    # edit may read Secrets and create pods: the admission policy admits erin's job with its key.
    created = admission.create("erin", training_job("digits"))
    assert created["metadata"]["name"] == "digits"
    assert can_i(erin, admission.namespace, "deletecollection", "modelservices")
    assert not can_i(erin, admission.namespace, "patch", "trainingjobs/status")
    assert can_i(vic, admission.namespace, "list", "modelservices")
    assert can_i(vic, admission.namespace, "get", "trainingjobs/status")
    assert not can_i(vic, admission.namespace, "create", "trainingjobs")


# --- the chart --------------------------------------------------------------------------------------


def generated_objects() -> list[dict[str, Any]]:
    return [*(o for k in KINDS for o in (access.admission_policy(k), access.admission_binding(k))),
            *(roles.aggregated_role(r) for r in roles.ROLES)]  # fmt: skip


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The admission policies, their bindings and the aggregated roles among `objects`, by kind/name."""

    def ours(obj: dict[str, Any]) -> bool:
        if obj["kind"] == "ClusterRole":
            return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in obj["metadata"]["labels"])
        return obj["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")

    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects if ours(o)}


def test_chart_renders_the_generated_objects(tools: Tools, tmp_path: Path) -> None:
    rendered = by_name(render(tools, tmp_path, {}))
    expected = by_name(generated_objects())
    # The release `kubemaas` keeps the plain manifests' names.
    assert rendered.keys() == expected.keys()
    for key, obj in expected.items():
        got = rendered[key]
        assert got["metadata"]["labels"].items() >= obj["metadata"]["labels"].items()
        assert got["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert {k: v for k, v in got.items() if k != "metadata"} == {k: v for k, v in obj.items() if k != "metadata"}


def test_chart_prefixes_other_releases_and_takes_the_values(tools: Tools, tmp_path: Path) -> None:
    values = {"admission": {"validationActions": ["Warn", "Audit"]}}
    result = tools.helm("template", "team", str(CHART), "--values", str(values_file(tmp_path, values)))
    names = by_name([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    assert "ClusterRole/team-kubemaas-edit" in names
    for kind in KINDS:
        binding = names[f"ValidatingAdmissionPolicyBinding/team-{access.policy_name(kind)}"]
        assert binding["spec"] == {
            "policyName": f"team-{access.policy_name(kind)}",
            "validationActions": ["Warn", "Audit"],
        }
        assert f"ValidatingAdmissionPolicy/team-{access.policy_name(kind)}" in names
    off = render(tools, tmp_path, {"admission": {"enabled": False}, "aggregatedRoles": {"enabled": False}})
    assert by_name(off) == {}
