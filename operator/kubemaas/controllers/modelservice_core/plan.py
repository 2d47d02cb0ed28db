"""Stage 4, the plan: the candidate (pinned where the source says Latest), failed rollouts, what the stable
and canary Deployments serve (a rollback to the last good version when the new one failed), and so the
children to apply and delete."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from kubemaas.api.base import LATEST
from kubemaas.api.modelservice import (
    ModelService,
    RolloutStrategy,
)
from kubemaas.controllers.modelservice_core.gate import gate_failures
from kubemaas.controllers.modelservice_core.model import ChildKey, Observed, Plan, Previous, Reason, field_at
from kubemaas.controllers.modelservice_core.observation import (
    RolloutState,
    available_since,
    failure_of,
    pods_of,
    ref_for_version,
    resolved_version,
    restarted,
    rollout_state,
)
from kubemaas.controllers.modelservice_core.steps import end_trial, plan_steps
from kubemaas.manifests import modelservice as m
from kubemaas.manifests.modelservice import ModelRef, Parent, ServingOptions, Track


def choose_candidate(plan: Plan, observed: Observed) -> None:
    """The newest source version, pinned where the source says Latest, checked against gate and key."""
    candidate = plan.resolution.candidates[0] if plan.resolution.candidates else None
    current = plan.current
    if candidate is not None and candidate.model.version == LATEST:
        if current is not None and current.source == candidate.model.source and current.version != LATEST:
            pin: str | None = current.version
        else:
            pin = resolved_version(observed.pods, candidate.model.source)
        if pin is not None:
            candidate = replace(candidate, model=replace(candidate.model, version=pin))
    plan.candidate = candidate
    if candidate is not None:
        plan.blocked = gate_failures(candidate, plan.thresholds)
        plan.missing_secret = missing_secret(candidate.model, observed.secrets)


def missing_secret(model: ModelRef, secrets: Mapping[str, bool]) -> tuple[Reason, str] | None:
    """The first Secret a version not yet rolled out needs and the namespace lacks: its key, or its store's
    credentials. A pod that mounts a missing Secret would wait in ContainerCreating without a word."""
    wanted = (
        (model.key_secret, Reason.KEY_SECRET_NOT_FOUND, "key Secret"),
        (model.credentials_secret, Reason.CREDENTIALS_SECRET_NOT_FOUND, "storage credentials Secret"),
    )
    for name, reason, what in wanted:
        if name and secrets.get(name) is False:
            return reason, f"{what} {name!r} not found"
    return None


def detect_failures(plan: Plan, ms: ModelService, observed: Observed, previous: Previous) -> None:
    """A failed rollout of the stable or canary Deployment. A rollout of the last good version itself (a
    spec change other than the model) has nothing to go back to: it is only reported (``stuck``)."""
    current, canary_current = plan.current, plan.canary_current
    if observed.stable is not None and current is not None:
        found = failure_of(observed.stable, observed.pods, Track.STABLE)
        if current.version != previous.last_good_version:
            plan.failure = found
        else:
            plan.stuck = found
    if plan.failure is None and observed.canary is not None and canary_current is not None:
        plan.failure = failure_of(observed.canary, observed.pods, Track.CANARY)
        analysed = ms.spec.rollout.canary_analysis_seconds is not None or ms.spec.rollout.canary is not None
        if plan.failure is None and analysed:
            plan.failure = restarted(
                pods_of(observed.pods, Track.CANARY, canary_current.version), canary_current.version
            )
    if plan.failure is not None:
        plan.bad_version = plan.failure.version


def choose_target(plan: Plan, observed: Observed, previous: Previous) -> None:
    """What the stable Deployment serves: the candidate when it may be, else what serves now, else the last
    good version (a rollback), else, with nothing served yet, the newest candidate that passes the gate."""
    candidate, current, bad = plan.candidate, plan.current, plan.bad_version
    last_good = previous.last_good_version
    if candidate is not None and not plan.blocked and plan.missing_secret is None and candidate.model.version != bad:
        plan.target = candidate.model
    elif current is not None and current.version != bad:
        plan.target = current
    else:
        if last_good is not None and last_good != bad:
            # The old ReplicaSet's exact template; else the source still lists that version.
            plan.target = ref_for_version(observed, last_good) or next(
                (c.model for c in plan.resolution.candidates if c.model.version == last_good), None
            )
        if plan.target is None and current is None and candidate is not None and plan.blocked:
            older = next((c for c in plan.resolution.candidates[1:] if not gate_failures(c, plan.thresholds)), None)
            plan.target = older.model if older is not None else None


def plan_canary(plan: Plan, ms: ModelService, observed: Observed, previous: Previous, now: datetime) -> None:
    """With strategy Canary a new version first runs in the canary Deployment; the stable one moves to it
    once the canary is available (and served its analysis window, or passed every step of rollout.canary),
    and the canary stays until then."""
    if ms.spec.rollout.strategy is not RolloutStrategy.Canary:
        return
    end_trial(plan, previous)
    target, current, canary_current = plan.target, plan.current, plan.canary_current
    if target is None or current is None:
        return  # nothing serves yet: the first version goes straight to the stable Deployment
    analysis_seconds = ms.spec.rollout.canary_analysis_seconds
    new_version = (
        target.version != current.version
        and current.version != plan.bad_version
        and plan.candidate is not None
        and target == plan.candidate.model
    )
    if new_version and ms.spec.rollout.canary is not None:
        if not plan_steps(plan, ms, observed, previous, now) and plan.failure is None:
            plan.target = current
    elif new_version:
        canary_ready = (
            observed.canary is not None
            and canary_current is not None
            and canary_current.version == target.version
            and rollout_state(observed.canary) is RolloutState.COMPLETE
        )
        if canary_ready and analysis_seconds is not None and observed.canary is not None:
            # Promote only after the canary served the whole window (restarts fail it, see above).
            since = available_since(observed.canary)
            waited = (now - since).total_seconds() if since is not None else 0.0
            if waited < analysis_seconds:
                canary_ready = False
                plan.requeue_after = analysis_seconds - waited
        plan.canary_target = target
        if not canary_ready:
            plan.target = current
    elif (
        observed.stable is not None
        and canary_current is not None
        and canary_current.version == target.version
        and current.version == target.version
        and rollout_state(observed.stable) is not RolloutState.COMPLETE
    ):
        plan.canary_target = target  # promoted: the canary serves until the stable rollout completed
        if ms.spec.rollout.canary is not None:
            # A promoted stepped canary keeps its last step's pods until the stable rollout completed.
            plan.canary_replicas = field_at(observed.canary, "spec", "replicas")


def desired_children(
    plan: Plan, ms: ModelService, observed: Observed, parent: Parent, options: ServingOptions
) -> tuple[list[dict[str, Any]], list[ChildKey]]:
    spec = ms.spec
    apply: list[dict[str, Any]] = []
    delete: list[ChildKey] = []
    autoscaling = spec.autoscaling
    replicas = spec.fixed_replicas
    if plan.target is not None:
        apply.append(m.deployment(spec, parent, plan.target, options, track=Track.STABLE, replicas=replicas))
    if plan.target is not None or plan.current is not None:
        apply.append(m.service(parent))
        apply.append(m.network_policy(parent, spec.network))
        if autoscaling is not None:
            apply.append(m.horizontal_pod_autoscaler(parent, autoscaling))
        most = autoscaling.max_replicas if autoscaling is not None else replicas or 0
        if most > 1:
            apply.append(m.pod_disruption_budget(parent, options))
    if plan.canary_target is not None:
        canary_replicas = plan.canary_replicas or spec.rollout.canary_replicas or 1
        apply.append(
            m.deployment(spec, parent, plan.canary_target, options, track=Track.CANARY, replicas=canary_replicas)
        )
    elif observed.canary is not None:
        delete.append(ChildKey("apps/v1", "Deployment", m.deployment_name(parent.name, Track.CANARY)))
    if autoscaling is None and observed.hpa is not None:
        delete.append(ChildKey("autoscaling/v2", "HorizontalPodAutoscaler", parent.name))
    if observed.pdb is not None and not any(o["kind"] == "PodDisruptionBudget" for o in apply):
        delete.append(ChildKey("policy/v1", "PodDisruptionBudget", parent.name))
    return apply, delete
