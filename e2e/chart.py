"""helm and kubectl for the chart tests, and the chart's ServiceAccount as an identity to run the operator with.

`chart_identity` applies only the chart's ServiceAccount and RBAC (watching one namespace) and writes a
kubeconfig holding a token of that ServiceAccount (`kubectl create token`): `kubemaas run` started with it
can do exactly what the installed chart lets the operator do. The `operator` fixture (e2e/conftest.py)
always runs that way, so every TrainingJob and ModelService scenario proves the chart's RBAC by use. No
Deployment is applied: the operator runs as the test's local process.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "kubemaas"
TOKEN_DURATION = "2h"


@dataclass
class Tools:
    helm_bin: Path
    kubectl_bin: Path
    kubeconfig: Path
    home: Path

    @classmethod
    def find(cls, local_bin: Path | None, kubeconfig: Path, home: Path) -> Tools:
        """The local cluster's pinned binaries, or (external cluster) those on PATH; skip without them."""
        home.mkdir(parents=True, exist_ok=True)
        if local_bin is not None:
            return cls(local_bin / "helm", local_bin / "kubectl", kubeconfig, home)
        helm, kubectl = shutil.which("helm"), shutil.which("kubectl")
        if not helm or not kubectl:
            pytest.skip("helm and kubectl must be on PATH to test the chart against an external cluster")
        return cls(Path(helm), Path(kubectl), kubeconfig, home)

    def _run(self, command: list[str], stdin: str | None, check: bool) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            # helm keeps its caches and repositories here, not in the developer's home.
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=180, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.helm_bin), *args], None, check)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.kubectl_bin), *args], stdin, check)


def values_file(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / f"values-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def token_kubeconfig(admin: Path, token: str, out: Path) -> Path:
    """A kubeconfig for the same API server as `admin`, authenticating with a bearer token."""
    config = yaml.safe_load(admin.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])
    out.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "kubemaas-operator", "user": {"token": token}}],
                "contexts": [{"name": "chart", "context": {"cluster": cluster["name"], "user": "kubemaas-operator"}}],
                "current-context": "chart",
            }
        )
    )
    out.chmod(0o600)
    return out


@contextmanager
def chart_identity(tools: Tools, namespace: str, workdir: Path) -> Iterator[Path]:
    """A kubeconfig of the chart's ServiceAccount, with the chart's RBAC for watching `namespace`."""
    release = f"id{uuid.uuid4().hex[:6]}"
    rendered = tools.helm(
        "template", release, str(CHART), "--namespace", namespace,
        "--values", str(values_file(workdir, {"watchNamespaces": [namespace]})),
        "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml",
    ).stdout  # fmt: skip
    account = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ServiceAccount")["metadata"]["name"]
    tools.kubectl("apply", "-f", "-", stdin=rendered)
    try:
        token = tools.kubectl(
            "create", "token", account, "--namespace", namespace, "--duration", TOKEN_DURATION
        ).stdout.strip()
        yield token_kubeconfig(tools.kubeconfig, token, workdir / "chart-operator.kubeconfig")
    finally:
        # The cluster-scoped half (ClusterRole, ClusterRoleBinding) would outlive the namespace.
        tools.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=rendered)
