"""`kubemaas run` against the real API server: it comes up, serves liveness, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import urllib.request

from e2e.conftest import OperatorProcess

STOP_LIMIT_SECONDS = 15
PERMISSION_PROBLEMS = ("Forbidden", "forbidden", "Not enough permissions", " 403")


def test_operator_runs_against_the_cluster_and_stops_cleanly(operator: OperatorProcess) -> None:
    operator.wait_live(timeout=60)
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    for family in ("kubemaas_reconcile_total", "kubemaas_reconcile_duration_seconds", "kubemaas_api_errors_total"):
        assert f"# TYPE {family.removesuffix('_total')}" in metrics, f"{family} missing from /metrics"
    operator.process.send_signal(signal.SIGTERM)
    returncode = operator.process.wait(timeout=STOP_LIMIT_SECONDS)
    log = operator.tail()
    assert returncode == 0, f"kubemaas run exited with {returncode} on SIGTERM:\n{log}"
    assert "Traceback" not in log, f"kubemaas run logged a traceback:\n{log}"
    # The fixture runs the operator as the chart's ServiceAccount: kopf logs refused requests and carries on.
    refused = [line for line in log.splitlines() if any(p in line for p in PERMISSION_PROBLEMS)]
    assert not refused, "the chart's RBAC refused the operator:\n" + "\n".join(refused)
