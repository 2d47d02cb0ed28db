"""The ModelService reconcile core: observed state in, desired children and status out. Pure.

``reconcile(ms, observed)`` decides, from the ModelService, the TrainingJobs it may serve and the
children that exist (Deployments, their ReplicaSets and pods), which model version each Deployment
serves, which children to apply or delete, and the status. No API calls and no clock: the kopf
handlers in ``controllers/modelservice.py`` gather ``Observed`` from kopf indexes, apply the result
and patch the status.

The stages, in order, one module each: ``source``, ``gate``, ``observation``, ``plan``, ``report`` (the
types they share are in ``model``). What each decides:

1. Source: ``model.uri`` + ``version`` (a pin, or ``Latest``), ``trainingJobRef``, or
   ``trainingJobSelector`` (the newest Succeeded TrainingJob with those labels, by completionTime).
   The newest source version is the *candidate*.
2. Version pinning: every pod of a Deployment serves one version. A TrainingJob gives an exact
   version. ``uri`` + ``Latest`` cannot be resolved by the operator (the store is a volume only pods
   mount): the first pods load ``Latest``; each loader reports the version it resolved in its
   termination message, and the next reconcile pins the template to that version (one extra rolling
   update, zero unavailable). A pin stays until the source in the spec changes.
3. Promotion gate: ``promotion.requireMetrics`` against the candidate's ``status.model.metrics``. A
   failing candidate is not rolled out; ``PromotionBlocked`` names metric, value and threshold; the
   current version keeps serving.
4. Safe rollout: a version whose pods do not become ready within the Deployment's progress deadline,
   or crash-loop, is recorded in ``status.lastFailure`` and ``Degraded``; the stable Deployment goes
   back to ``status.lastGoodVersion`` (the template of the ReplicaSet that served it, so no new
   ReplicaSet is made). That version is not retried until the source offers another one.
5. Canary: with ``rollout.strategy: Canary`` a new version first runs in ``<name>-canary`` (same
   Service selector, ``canaryReplicas`` pods); once that Deployment is available the stable
   Deployment is moved to the version, and the canary is removed when the stable rollout completed.
   With ``rollout.canary`` the canary goes through steps, each judged on the pods' live Triton metrics
   (``steps``, ``verdict``); a failed step is a failed version, as in 4.
"""

from __future__ import annotations

from datetime import datetime

from kubemaas.api.modelservice import ModelService
from kubemaas.controllers.modelservice_core.gate import gate_failures, spec_thresholds
from kubemaas.controllers.modelservice_core.model import (
    WARNINGS,
    Candidate,
    ChildKey,
    Cond,
    ConditionDecision,
    Event,
    Observed,
    Outcome,
    Plan,
    Previous,
    Reason,
    ScrapeTarget,
    parse_metric,
)
from kubemaas.controllers.modelservice_core.observation import template_ref
from kubemaas.controllers.modelservice_core.plan import (
    choose_candidate,
    choose_target,
    desired_children,
    detect_failures,
    plan_canary,
)
from kubemaas.controllers.modelservice_core.report import report
from kubemaas.controllers.modelservice_core.source import required_secrets, resolve_source
from kubemaas.manifests.modelservice import Parent, ServingOptions

__all__ = [
    "WARNINGS",
    "Candidate",
    "ChildKey",
    "Cond",
    "ConditionDecision",
    "Event",
    "Observed",
    "Outcome",
    "Previous",
    "Reason",
    "ScrapeTarget",
    "gate_failures",
    "parse_metric",
    "reconcile",
    "required_secrets",
    "resolve_source",
]


def reconcile(
    ms: ModelService,
    previous: Previous,
    observed: Observed,
    parent: Parent,
    options: ServingOptions,
    now: datetime,
) -> Outcome:
    plan = Plan(
        resolution=resolve_source(ms, observed.training_jobs),
        current=template_ref(observed.stable),
        canary_current=template_ref(observed.canary),
        thresholds=spec_thresholds(ms),
    )
    plan.bad_version = (
        previous.last_failure.version if previous.last_failure is not None and previous.degraded else None
    )
    choose_candidate(plan, observed)
    detect_failures(plan, ms, observed, previous)
    choose_target(plan, observed, previous)
    plan_canary(plan, ms, observed, previous, now)
    apply, delete = desired_children(plan, ms, observed, parent, options)
    return report(plan, ms, previous, observed, parent, apply, delete, now)
