"""The at-rest write limits of bench_reconcile (e2e/bench/write_rate.py), and the kwok rule its loopback
TrainingJobs rely on (e2e/cluster/kwok-stages.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2e.bench.write_rate import (
    LOOPBACK_NAMESPACE_PREFIX,
    LOOPBACK_POD_IP,
    Write,
    failures,
    group_writes,
    limit_per_job,
)

STAGES = Path(__file__).resolve().parents[2] / "e2e" / "cluster" / "kwok-stages.yaml"
WINDOW = (1000.0, 1120.0)  # 120 s


def every(seconds: float, start: float = 1000.5, end: float = 1120.0, step: int = 0) -> list[Write]:
    """A write every `seconds` from `start` to `end`, each with a new progress step."""
    out: list[Write] = []
    t = start
    while t <= end:
        out.append((t, step))
        t, step = t + seconds, step + 50
    return out


def test_one_write_per_interval_allows_one_at_the_start_and_one_after_each_full_interval() -> None:
    assert limit_per_job(120.0, 10.0) == 13
    assert limit_per_job(9.9, 10.0) == 1
    assert limit_per_job(120.0, None) == 0


def test_a_reporting_job_read_every_ten_seconds_is_within_its_limit() -> None:
    writes = {"ns/a": every(10.3), "ns/b": every(10.1, start=1004.0)}
    group = group_writes("reporting", ["ns/a", "ns/b"], writes, WINDOW, 10.0, must_write=True)
    assert group.met, group
    assert (group.jobs, group.limit_per_job, group.max_per_job) == (2, 13, 12)
    assert group.min_interval_s is not None and group.mean_interval_s is not None
    assert 10.0 <= group.min_interval_s <= group.mean_interval_s <= 10.3
    assert group.distinct_steps_per_job == group.mean_per_job  # every write carried a new step
    assert failures([group]) == []


def test_two_writes_per_read_exceed_the_limit_and_name_the_job() -> None:
    writes = {"ns/a": every(10.0), "ns/twice": every(5.0)}
    group = group_writes("reporting", ["ns/a", "ns/twice"], writes, WINDOW, 10.0, must_write=True)
    assert not group.met
    assert (group.over_limit, group.max_per_job, group.examples) == (1, 24, ["ns/twice"])
    [line] = failures([group])
    assert "reporting: 1 of 2 written more than 13 times" in line and "ns/twice" in line


def test_writes_outside_the_window_do_not_count() -> None:
    writes = {"ns/done": [(990.0, 10), (999.9, None), (1120.5, None)]}
    group = group_writes("finished", ["ns/done"], writes, WINDOW, None)
    assert group.met and group.writes == 0 and group.min_interval_s is None


def test_a_finished_job_written_once_fails_its_zero_limit() -> None:
    writes = {"ns/done": [(1060.0, None)], "ns/quiet": []}
    group = group_writes("finished", ["ns/done", "ns/quiet", "ns/never-seen"], writes, WINDOW, None)
    assert (group.jobs, group.writes, group.over_limit, group.examples) == (3, 1, 1, ["ns/done"])
    assert "finished: 1 of 3 written more than 0 times" in failures([group])[0]


def test_a_reporting_job_never_written_fails_the_measurement() -> None:
    # Its rank 0 was never read (unreachable): the window would show no progress writes at all for it.
    writes = {"ns/a": every(10.0)}
    group = group_writes("reporting", ["ns/a", "ns/silent"], writes, WINDOW, 10.0, must_write=True)
    assert (group.under_minimum, group.examples) == (1, ["ns/silent"])
    assert "fewer than 1 times" in failures([group])[0]


def test_writes_of_parents_outside_the_group_are_not_counted() -> None:
    writes = {"ns/a": every(10.0), "ns/other": every(1.0)}
    group = group_writes("reporting", ["ns/a"], writes, WINDOW, 10.0, must_write=True)
    assert group.met and group.writes == 12


def test_kwok_gives_loopback_namespaces_pods_the_benchmarks_address() -> None:
    # bench_reconcile serves rank 0 on LOOPBACK_POD_IP for pods in LOOPBACK_NAMESPACE_PREFIX namespaces: the
    # stage that sets a pod's IP must say the same, or every reporting job's rank 0 is out of reach.
    stages = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(STAGES.read_text()) if doc}
    template = stages["pod-ready"]["spec"]["next"]["statusTemplate"]
    rule = f'{{{{ if hasPrefix "{LOOPBACK_NAMESPACE_PREFIX}" ( or .metadata.namespace "" ) }}}}'
    assert rule in template
    loopback, _, others = template.partition(rule)[2].partition("{{ else }}")
    assert loopback.split() == ["podIP:", f'"{LOOPBACK_POD_IP}"']
    assert others.split("{{ end }}")[0].strip().startswith("podIP: {{ PodIPWith ")
