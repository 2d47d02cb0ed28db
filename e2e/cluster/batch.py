"""Kubeflow Trainer v2, JobSet and Kueue as local processes, their webhooks served to the API server.

In a cluster each runs as a Deployment behind a Service, and the API server calls its webhooks through that
Service with a certificate the controller's own rotator made. Here the controllers run on the host beside the
API server: each gets a serving certificate for 127.0.0.1 from the cluster's CA (their cert rotators are off),
and the webhook configurations shipped in each module are registered with `clientConfig.url` pointing at the
process instead of a Service. Everything else (CRDs, webhook rules, failure policies) is upstream's, read from
the same module version the binaries are built from.

Kueue is configured for the integrations Kubemaas uses (batch/Job, JobSet, TrainJob), with fair sharing on; its
webhooks for other kinds (Pods, Deployments, Ray, MPI ...) are not registered, so nothing else in the cluster
depends on it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import processes
from .pki import CertificateAuthority, KeyPair

# Kueue's integrations here; "kubeflow.org/pytorchjob" (Kubeflow's legacy API) is off, as in Kueue's defaults.
KUEUE_FRAMEWORKS = ("batch/job", "jobset.x-k8s.io/jobset", "trainer.kubeflow.org/trainjob")
# The API groups of the kinds those integrations and Kueue's own API cover: webhooks on other groups stay out.
KUEUE_WEBHOOK_GROUPS = frozenset({"batch", "jobset.x-k8s.io", "trainer.kubeflow.org", "kueue.x-k8s.io"})
KUEUE_FAIR_SHARING_STRATEGIES = ("LessThanOrEqualToFinalShare", "LessThanInitialShare")
KUEUE_NAMESPACE = "kueue-system"
TRAINER_NAMESPACE = "kubeflow-system"
JOBSET_NAMESPACE = "jobset-system"


@dataclass(frozen=True)
class BatchController:
    """One controller: its binary (versions.toml), where its module keeps CRDs and webhooks, how it starts."""

    name: str  # the binary's name in versions.toml
    namespace: str
    crds: tuple[str, ...]  # directories or files in the module source
    webhooks: str  # the kubebuilder webhook manifests in the module source
    keep_webhook: Callable[[dict[str, Any]], bool]
    configuration: Callable[[int, int, int, Path], dict[str, Any]]  # (webhook, health, metrics ports, cert dir)
    extra_args: tuple[str, ...] = ()
    # A directory the binary reads its metrics certificate from whatever its configuration says (root only).
    fixed_metrics_cert_dir: Path | None = None


def _jobset_configuration(webhook: int, health: int, metrics: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
    }


def _trainer_configuration(webhook: int, health: int, metrics: int, cert_dir: Path) -> dict[str, Any]:
    del cert_dir  # Trainer's configuration has no certDir: TMPDIR places controller-runtime's default
    return {
        "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}", "readinessEndpointName": "readyz"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}", "secureServing": False},
        "webhook": {"port": webhook, "host": "127.0.0.1"},
        "leaderElection": {"leaderElect": False},
        "certManagement": {"enable": False},
        "statusServer": {"port": processes.free_port()},
    }


def _kueue_configuration(webhook: int, health: int, metrics: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics}"},
        "webhook": {"port": webhook, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(KUEUE_FRAMEWORKS)},
        # Fair sharing between the ClusterQueues of a cohort by their weights (e2e/fair_sharing.py). In v1beta2 the
        # section's presence turns it on and the strategies are required: these are v1beta1's defaults (preempt
        # while the preemptor's share stays at most the target's after it; failing that, below the target's now).
        # A ClusterQueue without a cohort has no share, so the other scenarios' queues behave as before.
        "fairSharing": {"preemptionStrategies": list(KUEUE_FAIR_SHARING_STRATEGIES)},
    }


def _kueue_webhook_kept(webhook: dict[str, Any]) -> bool:
    groups = {group for rule in webhook.get("rules") or [] for group in rule.get("apiGroups") or []}
    return bool(groups) and groups <= KUEUE_WEBHOOK_GROUPS


CONTROLLERS = (
    BatchController(
        name="jobset",
        namespace=JOBSET_NAMESPACE,
        crds=("config/components/crd/bases",),
        webhooks="config/components/webhook/manifests.yaml",
        keep_webhook=lambda webhook: True,
        configuration=_jobset_configuration,
    ),
    BatchController(
        name="trainer-controller-manager",
        namespace=TRAINER_NAMESPACE,
        crds=("manifests/base/crds",),
        webhooks="manifests/base/webhook/manifests.yaml",
        keep_webhook=lambda webhook: True,
        configuration=_trainer_configuration,
    ),
    BatchController(
        name="kueue",
        namespace=KUEUE_NAMESPACE,
        crds=("config/components/crd/bases",),
        webhooks="config/components/webhook/manifests.yaml",
        keep_webhook=_kueue_webhook_kept,
        configuration=_kueue_configuration,
        # The on-demand visibility API is an aggregated API server of its own; nothing here reads it.
        extra_args=("--feature-gates=VisibilityOnDemand=false",),
        # Kueue v0.19 with its own cert management off reads its metrics certificate from this fixed path
        # (cmd/kueue/main.go), which only root can create: without root the cluster runs without Kueue.
        fixed_metrics_cert_dir=Path("/etc/kueue/metrics/certs"),
    ),
)
# Marks a fixed directory this module created, so `down` removes it and nothing else.
CREATED_MARKER = ".created-by-kubemaas-local-cluster"


def runnable(controller: BatchController) -> bool:
    return controller.fixed_metrics_cert_dir is None or os.geteuid() == 0


def remove_fixed_directories() -> None:
    """Put the host back: the fixed certificate directories `prepare` created (not ones it found)."""
    for controller in CONTROLLERS:
        directory = controller.fixed_metrics_cert_dir
        if directory is None or not (directory / CREATED_MARKER).exists():
            continue
        top = directory
        while (top.parent / CREATED_MARKER).exists():
            top = top.parent
        shutil.rmtree(top, ignore_errors=True)


def crd_files(source: Path, paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        target = source / path
        files += (
            sorted(p for p in target.glob("*.yaml") if p.name != "kustomization.yaml") if target.is_dir() else [target]
        )
    return files


def webhook_configurations(
    manifests: str, controller: BatchController, port: int, ca_bundle: bytes
) -> Iterator[dict[str, Any]]:
    """Upstream's webhook configurations, pointed at the local process: `url` instead of `service` (the path
    kept), our CA, a name unique to the controller (kubebuilder names every module's the same)."""
    for document in yaml.safe_load_all(manifests):
        if not document or document.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        configuration = copy.deepcopy(document)
        suffix = "mutating" if document["kind"].startswith("Mutating") else "validating"
        configuration["metadata"] = {"name": f"{controller.name}-{suffix}"}
        kept = []
        for webhook in configuration.get("webhooks") or []:
            if not controller.keep_webhook(webhook):
                continue
            service = webhook["clientConfig"].get("service") or {}
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{service.get('path', '/')}",
                "caBundle": base64.b64encode(ca_bundle).decode(),
            }
            kept.append(webhook)
        if kept:
            configuration["webhooks"] = kept
            yield configuration


Kubectl = Callable[..., str]


@dataclass(frozen=True)
class Launch:
    args: list[str]
    env: dict[str, str]
    ports: list[int]
    probe: processes.Probe
    webhook_port: int


def prepare(controller: BatchController, kubeconfig: Path, root: Path, ca: CertificateAuthority) -> Launch:
    """Write the controller's configuration and serving certificate under `root`; return how to start it."""
    webhook, health, metrics = processes.free_port(), processes.free_port(), processes.free_port()
    directory = root / controller.name
    # controller-runtime's default certificate directory is under TMPDIR: one per controller.
    tmp = directory / "tmp"
    cert_dir = tmp / "k8s-webhook-server" / "serving-certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    pair: KeyPair = ca.issue(f"{controller.name}-webhook", controller.name, server_ips=("127.0.0.1",))
    (cert_dir / "tls.crt").write_bytes(pair.cert.read_bytes())
    (cert_dir / "tls.key").write_bytes(pair.key.read_bytes())
    (cert_dir / "tls.key").chmod(0o600)
    if controller.fixed_metrics_cert_dir is not None:
        _write_fixed(controller.fixed_metrics_cert_dir, pair)
    config = directory / "config.yaml"
    config.write_text(json.dumps(controller.configuration(webhook, health, metrics, cert_dir)))
    args = [f"--config={config}", *controller.extra_args]
    env = {"KUBECONFIG": str(kubeconfig), "TMPDIR": str(tmp), "POD_NAMESPACE": controller.namespace}
    probe = processes.http_probe(f"http://127.0.0.1:{health}/readyz")
    return Launch(args, env, [webhook, health, metrics], probe, webhook)


def crd_names(source: Path, paths: Iterable[str]) -> list[str]:
    return [yaml.safe_load(path.read_text())["metadata"]["name"] for path in crd_files(source, paths)]


def _write_fixed(directory: Path, pair: KeyPair) -> None:
    """Write the pair into a fixed host directory, marking each directory level this call created."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for created in missing:
        (created / CREATED_MARKER).touch()
    (directory / "tls.crt").write_bytes(pair.cert.read_bytes())
    (directory / "tls.key").write_bytes(pair.key.read_bytes())
    (directory / "tls.key").chmod(0o600)
