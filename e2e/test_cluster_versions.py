"""The local cluster's binaries report the versions they are pinned to, as upstream's release builds do.

A chart with a `kubeVersion` constraint, or any client that checks the server version, fails against
components that call themselves v0.0.0-master.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from e2e.cluster.versions import Component, load_components
from e2e.conftest import E2ECluster

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("KUBEMAAS_E2E_KUBECONFIG")), reason="checks the local control plane's own builds"
)


def pinned(name: str) -> Component:
    return next(c for c in load_components() if c.name == name)


def test_kubectl_version_reports_the_pin_for_client_and_server(cluster: E2ECluster) -> None:
    assert cluster.local is not None
    kubernetes = pinned("kubernetes").version
    major, minor = kubernetes.lstrip("v").split(".")[:2]
    result = subprocess.run(
        [str(cluster.local.bin / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "version", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for side in ("clientVersion", "serverVersion"):
        info = report[side]
        assert info["gitVersion"] == kubernetes, f"{side}: {info}"
        assert (info["major"], info["minor"]) == (major, minor), f"{side}: {info}"
        assert info["gitTreeState"] == "clean", f"{side}: {info}"
        assert info["buildDate"] != "1970-01-01T00:00:00Z", f"{side}: {info}"


def test_helm_version_reports_the_pin(cluster: E2ECluster) -> None:
    assert cluster.local is not None
    result = subprocess.run(
        [str(cluster.local.bin / "helm"), "version", "--template", "{{ .Version }}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pinned("helm").version


def test_etcd_and_kwok_report_the_pin(cluster: E2ECluster) -> None:
    assert cluster.local is not None
    etcd = subprocess.run([str(cluster.local.bin / "etcd"), "--version"], capture_output=True, text=True, timeout=30)
    assert f"etcd Version: {pinned('etcd').version.lstrip('v')}" in etcd.stdout
    kwok = subprocess.run([str(cluster.local.bin / "kwok"), "--version"], capture_output=True, text=True, timeout=30)
    assert pinned("kwok").version in kwok.stdout + kwok.stderr


def test_versitygw_reports_the_pin(cluster: E2ECluster) -> None:
    assert cluster.local is not None
    result = subprocess.run(
        [str(cluster.local.bin / "versitygw"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"versitygw {pinned('versitygw').version} (posix backend only)"
