"""The Helm chart against a real API server: lint, render, dry-run, install, upgrade, uninstall, RBAC.

helm and kubectl come from the local cluster's build (e2e/cluster, pinned in versions.toml); against an
external cluster (KUBEMAAS_E2E_KUBECONFIG) they are taken from PATH.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.chart import CHART, Tools, values_file
from e2e.conftest import PSS_RESTRICTED, E2ECluster, RealNode
from e2e.test_modelservice import serve_digits, store  # noqa: F401  (store: a fixture)
from e2e.typed_client import container_statuses, name_of, pod_spec
from e2e.waits import condition_is
from kubemaas.api.crd import KINDS
from kubemaas.cli import build_parser
from kubemaas.controllers.settings import PEERING_NAME

KUBE_VERSION = "v1.34.4"
# Objects of the Prometheus Operator: the local cluster does not serve monitoring.coreos.com, and a
# stand-in CRD that accepts anything would prove nothing, so dry-run leaves them out (their shape is
# checked in test_monitoring_objects_select_what_they_should).
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com/v1"

MONITORING = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "tritonPodMonitor": {"enabled": True},
    "prometheusAdapter": {"rule": {"enabled": True}},
    "grafana": {"dashboard": {"enabled": True}},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": MONITORING,
    "peering": {"replicas": 2},
    "everything": {"watchNamespaces": ["team-a"], "replicas": 3, **MONITORING},
}
# What the controllers may do per namespace, and nothing else (the chart README's RBAC table).
NAMESPACED_RULES = {
    ("kubemaas.io", "trainingjobs"): {"get", "list", "watch", "patch"},
    ("kubemaas.io", "modelservices"): {"get", "list", "watch", "patch"},
    ("kubemaas.io", "trainingjobs/status"): {"get", "patch"},
    ("kubemaas.io", "modelservices/status"): {"get", "patch"},
    ("trainer.kubeflow.org", "trainjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"get", "list", "watch", "create", "patch", "delete"},
    ("kubeflow.org", "pytorchjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    # Read-only: a queued TrainingJob's LocalQueue and Kueue's Workload for it.
    ("kueue.x-k8s.io", "localqueues"): {"get", "list"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "replicasets"): {"get", "list", "watch"},
    ("", "pods"): {"get", "list", "watch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create", "patch"},
    ("", "persistentvolumeclaims"): {"get"},
    # Created (generateKey), and probed with a dry-run create; never read (docs/security.md).
    ("", "secrets"): {"create"},
}
CLUSTER_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}
NAMESPACE_SCANNING = {("", "namespaces"): {"list", "watch"}}
CLUSTER_PEERING_RULES = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
NAMESPACED_PEERING_RULES = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}


def render(
    tools: Tools, tmp_path: Path, values: dict[str, Any], namespace: str = "kubemaas-system"
) -> list[dict[str, Any]]:
    result = tools.helm(
        "template", "kubemaas", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
        "--values", str(values_file(tmp_path, values)),
    )  # fmt: skip
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rules_of(objects: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs over every object of this kind that the operator is bound to.

    The aggregated roles (<release>-view, -edit, -admin) are the tenants', checked in e2e/test_admission.py."""
    out: dict[tuple[str, str], set[str]] = {}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        if obj["kind"] != kind or any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            continue
        for rule in obj["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "Deployment"]
    return found


# --- rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_strict(tools: Tools, tmp_path: Path, name: str) -> None:
    result = tools.helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION,
                        "--values", str(values_file(tmp_path, VALUE_SETS[name])))  # fmt: skip
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_lint_refuses_values_the_schema_forbids(tools: Tools, tmp_path: Path) -> None:
    result = tools.helm("lint", "--strict", str(CHART), "--values", str(values_file(tmp_path, {"replicas": 0})),
                        check=False)  # fmt: skip
    assert result.returncode != 0
    assert "replicas" in result.stdout + result.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rbac_is_least_privilege(tools: Tools, tmp_path: Path, name: str) -> None:
    values = VALUE_SETS[name]
    objects = render(tools, tmp_path, values)
    for obj in objects:
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{obj['kind']} {obj['metadata']['name']} has a wildcard in {field}"
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    peering = values.get("replicas", 1) > 1
    if values.get("watchNamespaces"):
        roles = [o for o in objects if o["kind"] == "Role"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
        for role in roles:
            assert rules_of([role], "Role") == NAMESPACED_RULES | (NAMESPACED_PEERING_RULES if peering else {})
        assert rules_of(objects, "ClusterRole") == CLUSTER_RULES | NAMESPACE_SCANNING
    else:
        assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
        expected = NAMESPACED_RULES | CLUSTER_RULES | (CLUSTER_PEERING_RULES if peering else {})
        assert rules_of(objects, "ClusterRole") == expected
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_arguments_match_the_cli(tools: Tools, tmp_path: Path, name: str) -> None:
    values = VALUE_SETS[name]
    objects = render(tools, tmp_path, values)
    pod = deployment(objects)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])  # exits (SystemExit) on a flag `kubemaas run` lacks
    peering = values.get("replicas", 1) > 1
    assert args.command == "run"
    assert args.standalone is not peering
    assert args.namespace == values.get("watchNamespaces", [])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    assert args.metrics_port == ports["metrics"] != ports["health"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    strategy = deployment(objects)["spec"]["strategy"]["type"]
    assert strategy == ("RollingUpdate" if peering else "Recreate")
    # kopf peers cluster-wide without -n, per watched namespace with it; the objects must be there.
    peerings = [
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objects
        if o["kind"] in ("ClusterKopfPeering", "KopfPeering")
    ]
    if not peering:
        assert peerings == []
    elif values.get("watchNamespaces"):
        assert peerings == [("KopfPeering", ns, PEERING_NAME) for ns in values["watchNamespaces"]]
    else:
        assert peerings == [("ClusterKopfPeering", None, PEERING_NAME)]


def test_monitoring_objects_select_what_they_should(tools: Tools, tmp_path: Path) -> None:
    objects = render(tools, tmp_path, MONITORING)
    by_kind = {o["kind"]: o for o in objects}
    service, monitor = by_kind["Service"], by_kind["ServiceMonitor"]
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pod_monitor = by_kind["PodMonitor"]
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "kubemaas"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    adapter = next(o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o["data"])
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert "[2m]" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
    dashboard = next(o for o in objects if o["kind"] == "ConfigMap" and "kubemaas.json" in o["data"])
    assert json.loads(dashboard["data"]["kubemaas.json"]) == json.loads(
        (CHART / "dashboards/kubemaas.json").read_text()
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- against the API server --------------------------------------------------------------------------


@pytest.fixture
def watched(cluster: E2ECluster, namespace: str) -> Iterator[list[str]]:
    """Two more restricted namespaces next to `namespace`, for watchNamespaces."""
    core = client.CoreV1Api(cluster.api)
    names = [f"{namespace}-w{i}" for i in range(2)]
    for name in names:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=PSS_RESTRICTED)))
    try:
        yield names
    finally:
        for name in names:
            try:
                core.delete_namespace(name)
            except ApiException as error:
                if error.status != 404:
                    raise


def ensure_peering_crds(tools: Tools, cluster: E2ECluster) -> None:
    # kopf's peering CRDs are cluster-wide and shared; applying the chart's (generated) copies is idempotent.
    # The peering objects themselves are only dry-run: a real one would make every operator started
    # without --standalone on this shared cluster join the same peering.
    for plural in ("clusterkopfpeerings", "kopfpeerings"):
        tools.kubectl("apply", "--server-side", "--field-manager=kubemaas-chart-test",
                      "-f", str(CHART / "crds" / f"kopf.dev_{plural}.yaml"))  # fmt: skip
        # Not `kubectl wait`: it fails at once while a new CRD has no conditions yet (a cold run saw it).
        cluster.wait_object(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            f"{plural}.kopf.dev",
            lambda crd: condition_is(crd, "Established"),
            what=f"CRD {plural}.kopf.dev Established",
        )


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_passes_server_side_dry_run(
    tools: Tools, tmp_path: Path, namespace: str, watched: list[str], name: str, cluster: E2ECluster
) -> None:
    values = dict(VALUE_SETS[name])
    if "watchNamespaces" in values:
        values["watchNamespaces"] = watched[: len(values["watchNamespaces"])]
    objects = render(tools, tmp_path, values, namespace=namespace)
    if any(o["apiVersion"] == "kopf.dev/v1" for o in objects):
        ensure_peering_crds(tools, cluster)
    checked = [o for o in objects if o["apiVersion"] != PROMETHEUS_OPERATOR_GROUP]
    assert len(checked) >= 6
    result = tools.kubectl(
        "apply", "--dry-run=server", "--server-side", "--field-manager=kubemaas-chart-test", "-o", "name", "-f", "-",
        stdin=yaml.safe_dump_all(checked),
    )  # fmt: skip
    assert len(result.stdout.split()) == len(checked), result.stdout


@dataclass
class Release:
    name: str
    namespace: str
    tools: Tools

    @property
    def fullname(self) -> str:
        return f"{self.name}-kubemaas"

    def helm(self, verb: str, values: dict[str, Any], directory: Path) -> None:
        self.tools.helm(verb, self.name, str(CHART), "--namespace", self.namespace,
                        "--values", str(values_file(directory, values)))  # fmt: skip


@pytest.fixture
def release(tools: Tools, namespace: str) -> Iterator[Release]:
    installed = Release(f"km{uuid.uuid4().hex[:6]}", namespace, tools)
    yield installed
    # Cluster-scoped leftovers (ClusterRoles) would outlive the namespace: uninstall whatever is left.
    tools.helm("uninstall", installed.name, "--namespace", namespace, "--ignore-not-found", "--wait")


# kwok runs the operator pods on its simulated nodes (no image pull): pin them there, so a real node in
# the cluster never tries to pull an image this machine cannot reach.
# Without the admission policy: the chart's is cluster-wide, and would judge the objects of the tests running
# beside these (e2e/test_admission.py's impersonated users). The policy is tested there, bound to one namespace.
ON_KWOK = {"nodeSelector": {"type": "kwok"}, "admission": {"enabled": False}}


def available(cluster: E2ECluster, namespace: str, name: str, generation_at_least: int = 1) -> bool:
    found: Any = client.AppsV1Api(cluster.api).read_namespaced_deployment(name, namespace)
    status = found.status
    if found.metadata.generation < generation_at_least or (status.observed_generation or 0) < found.metadata.generation:
        return False
    if (status.updated_replicas or 0) != found.spec.replicas or (status.available_replicas or 0) != found.spec.replicas:
        return False
    return any(c.type == "Available" and c.status == "True" for c in status.conditions or [])


def test_install_upgrade_uninstall(cluster: E2ECluster, release: Release, tmp_path: Path) -> None:
    apps, core = client.AppsV1Api(cluster.api), client.CoreV1Api(cluster.api)
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    release.helm("install", ON_KWOK, tmp_path)
    cluster.wait_for("the operator Deployment to be Available",
                     lambda: available(cluster, release.namespace, release.fullname), timeout=90)  # fmt: skip
    # Admitted in a namespace that enforces Pod Security `restricted` (the namespace fixture's labels).
    ns: Any = core.read_namespace(release.namespace)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods: Any = core.list_namespaced_pod(release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}")
    assert len(pods.items) == 1

    upgraded = {**ON_KWOK, "operator": {"tritonImage": "example.com/triton:25.01-py3"},
                "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "192Mi"}}}  # fmt: skip
    release.helm("upgrade", upgraded, tmp_path)
    cluster.wait_for("the upgraded Deployment to be Available",
                     lambda: available(cluster, release.namespace, release.fullname, 2), timeout=90)  # fmt: skip
    found: Any = apps.read_namespaced_deployment(release.fullname, release.namespace)
    (container,) = found.spec.template.spec.containers
    assert "--triton-image=example.com/triton:25.01-py3" in container.args
    assert container.resources.limits == {"memory": "192Mi"}

    release.tools.helm("uninstall", release.name, "--namespace", release.namespace, "--wait")
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment(release.fullname, release.namespace)
    assert gone.value.status == 404
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(release.fullname)
    assert gone.value.status == 404
    # Helm never deletes CRDs: every TrainingJob and ModelService survives an uninstall.
    ext = client.ApiextensionsV1Api(cluster.api)
    for kind in KINDS:
        ext.read_custom_resource_definition(kind.crd_name)


def can_i(tools: Tools, account: str, verb: str, resource: str, namespace: str | None) -> bool:
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    # `can-i VERB pods/log` would ask about the pod named "log": a subresource needs its own flag.
    resource, _, subresource = resource.partition("/")
    sub = [f"--subresource={subresource}"] if subresource else []
    result = tools.kubectl("auth", "can-i", verb, resource, *sub, "--as", account, *scope, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def listed_rules(tools: Tools, account: str, namespace: str) -> dict[str, set[str]]:
    """What `kubectl auth can-i --list` shows for the account, as resource -> verbs (non-resource URLs left out).

    The table itself has no machine-readable form, so the rules come from the API it prints: a
    SelfSubjectRulesReview created as the account. The table is checked for wildcards as well.
    """
    table = tools.kubectl("auth", "can-i", "--list", "--as", account, "--namespace", namespace).stdout
    resource_rows = [line for line in table.splitlines()[1:] if not line.lstrip().startswith("[")]
    assert not [row for row in resource_rows if "*" in row.split("[", 1)[0] or "[*]" in row], table
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    out = tools.kubectl("create", "--as", account, "-o", "json", "-f", "-", stdin=json.dumps(review)).stdout
    rules: dict[str, set[str]] = {}
    for rule in json.loads(out)["status"]["resourceRules"]:
        for group in rule.get("apiGroups") or [""]:
            for resource in rule.get("resources", []):
                key = f"{resource}.{group}" if group else resource
                rules.setdefault(key, set()).update(rule["verbs"])
    return rules


# Granted to every authenticated user by the cluster's default roles (self reviews), not by the chart.
DEFAULT_GRANTS = {
    "selfsubjectaccessreviews.authorization.k8s.io", "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}  # fmt: skip


@pytest.mark.parametrize("mode", ["cluster-wide", "watch-namespaces"])
def test_service_account_permissions(
    cluster: E2ECluster, tools: Tools, release: Release, watched: list[str], tmp_path: Path, mode: str
) -> None:
    values: dict[str, Any] = {**ON_KWOK}
    if mode == "watch-namespaces":
        values["watchNamespaces"] = watched[:1]
    release.helm("install", values, tmp_path)
    account = f"system:serviceaccount:{release.namespace}:{release.fullname}"
    work_ns = watched[0]
    other_ns = watched[1]

    granted = listed_rules(tools, account, work_ns)
    for resource, verbs in granted.items():
        assert "*" not in resource and "*" not in verbs, f"wildcard: {resource} {verbs}"
    expected = {f"{r}.{g}" if g else r: v for (g, r), v in (NAMESPACED_RULES | CLUSTER_RULES).items()}
    if mode == "watch-namespaces":
        expected |= {"namespaces": {"list", "watch"}}
    assert {k: v for k, v in granted.items() if k not in DEFAULT_GRANTS} == expected

    yes = [
        ("create", "secrets", work_ns),
        ("patch", "modelservices.kubemaas.io/status", work_ns), ("watch", "trainingjobs.kubemaas.io", work_ns),
        ("create", "deployments.apps", work_ns), ("delete", "horizontalpodautoscalers.autoscaling", work_ns),
        ("create", "pytorchjobs.kubeflow.org", work_ns),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ]  # fmt: skip
    no = [
        ("get", "secrets", work_ns), ("list", "secrets", None), ("watch", "secrets", None),
        ("list", "secrets", work_ns),
        ("delete", "secrets", work_ns), ("update", "secrets", work_ns),
        ("create", "pods/exec", work_ns), ("get", "pods/log", work_ns), ("create", "pods", work_ns),
        ("update", "trainingjobs.kubemaas.io", work_ns), ("delete", "modelservices.kubemaas.io", work_ns),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "rolebindings.rbac.authorization.k8s.io", work_ns),
        ("delete", "namespaces", None), ("create", "serviceaccounts/token", work_ns),
        ("patch", "clusterkopfpeerings.kopf.dev", None),
    ]  # fmt: skip
    if mode == "watch-namespaces":
        yes_elsewhere = False
        no += [("create", "secrets", other_ns), ("create", "deployments.apps", other_ns),
               ("get", "trainingjobs.kubemaas.io", other_ns)]  # fmt: skip
    else:
        yes_elsewhere = True
    for verb, resource, ns in yes:
        assert can_i(tools, account, verb, resource, ns), f"cannot {verb} {resource} in {ns or 'the cluster'}"
    for verb, resource, ns in no:
        assert not can_i(tools, account, verb, resource, ns), f"can {verb} {resource} in {ns or 'the cluster'}"
    assert can_i(tools, account, "create", "deployments.apps", other_ns) is yes_elsewhere


@pytest.mark.real_node
@pytest.mark.usefixtures("store")
def test_operator_image_reconciles_from_inside_the_cluster(
    cluster: E2ECluster, release: Release, real_node: RealNode, node_images: None, tmp_path: Path
) -> None:
    """The chart's operator, as the image built from images/operator, runs on the real node: admitted under
    `restricted`, its kopf probes pass through the kubelet, it reaches the API server through the
    `kubernetes` Service with its ServiceAccount token, reconciles a ModelService to Ready and serves
    its metrics."""
    cluster.install_crds()
    release.helm("install", {**real_node.placement(), "watchNamespaces": [release.namespace]}, tmp_path)
    try:
        cluster.wait_for("the operator Deployment to be Available on the real node",
                         lambda: available(cluster, release.namespace, release.fullname), timeout=120)  # fmt: skip
    except TimeoutError as error:
        logs = cluster.kubectl("-n", release.namespace, "logs", f"deploy/{release.fullname}", "--tail=40")
        raise AssertionError(f"{error}\nthe operator container's log:\n{logs}") from error
    core = client.CoreV1Api(cluster.api)
    (pod,) = core.list_namespaced_pod(
        release.namespace, label_selector=f"app.kubernetes.io/instance={release.name}"
    ).items
    assert pod_spec(pod).node_name == real_node.name
    assert container_statuses(pod)[0].ready

    serve_digits(cluster, release.namespace, replicas=1)
    log = cluster.kubectl("-n", release.namespace, "logs", name_of(pod))
    assert "Traceback" not in log, log[-3000:]
    port = deployment_port(cluster, release, "metrics")
    with (
        cluster.port_forward(release.namespace, f"pod/{name_of(pod)}", port) as local,
        urllib.request.urlopen(f"http://127.0.0.1:{local}/metrics", timeout=10) as response,
    ):
        metrics = response.read().decode()
    assert re.search(r'kubemaas_reconcile_total\{kind="ModelService",outcome="success"\} [1-9]', metrics), metrics[
        :2000
    ]


def deployment_port(cluster: E2ECluster, release: Release, name: str) -> int:
    found: Any = client.AppsV1Api(cluster.api).read_namespaced_deployment(release.fullname, release.namespace)
    (container,) = found.spec.template.spec.containers
    return int(next(p.container_port for p in container.ports if p.name == name))
