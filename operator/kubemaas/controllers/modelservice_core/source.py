"""Stage 1, the source: which model versions the spec offers, newest first (``model.uri`` + ``version``,
``trainingJobRef``, or the Succeeded TrainingJobs ``trainingJobSelector`` matches, by completionTime), and the
key Secrets they need."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kubemaas.api.base import ConditionStatus
from kubemaas.api.modelservice import (
    ModelService,
)
from kubemaas.api.storage import S3Storage
from kubemaas.contract.published import published_model_name, version_uri
from kubemaas.contract.store import ArtifactStoreError, validate_name
from kubemaas.controllers.conditions import true_condition
from kubemaas.controllers.modelservice_core.model import (
    Candidate,
    Cond,
    ConditionDecision,
    Reason,
    Resolution,
    field_at,
    parse_metric,
)
from kubemaas.manifests.modelservice import ModelRef


def _succeeded(job: Mapping[str, Any]) -> bool:
    ok = true_condition(job, "Succeeded") is not None
    return ok and bool(field_at(job, "status", "model", "uri")) and bool(field_at(job, "status", "model", "version"))


class InvalidPublishedModel(ValueError):
    """A Succeeded TrainingJob's status.model is not the version directory its spec names."""


def _candidate_from_job(job: Mapping[str, Any]) -> Candidate:
    """The version a Succeeded job published, located from the job's spec and version: a status that points
    anywhere else (written by hand, or by an older operator that trusted rank 0) is refused, not followed."""
    name = str(field_at(job, "metadata", "name"))
    store = str(field_at(job, "spec", "output", "uri") or "")
    model = published_model_name(field_at(job, "spec", "output", "modelName"), name)
    version = str(field_at(job, "status", "model", "version"))
    reported = str(field_at(job, "status", "model", "uri"))
    try:
        validate_name(version, "version")
    except ArtifactStoreError:
        raise InvalidPublishedModel(f"TrainingJob {name!r} reports an invalid model version") from None
    expected = version_uri(store, model, version)
    if reported.rstrip("/") != expected:
        raise InvalidPublishedModel(
            f"TrainingJob {name!r} reports model {reported[:200]!r}, not {expected!r} (its spec.output and version)"
        )
    metrics = {
        k: v
        for k, raw in (field_at(job, "status", "model", "metrics") or {}).items()
        if (v := parse_metric(raw)) is not None
    }
    return Candidate(
        model=ModelRef(
            store_uri=store.rstrip("/"),
            model=model,
            version=version,
            key_secret=str(field_at(job, "spec", "encryption", "keySecretRef", "name")),
            source=f"trainingjob/{name}",
            s3=_output_s3(job),
        ),
        job=name,
        metrics=metrics,
    )


def _output_s3(job: Mapping[str, Any]) -> S3Storage | None:
    """How the job's rank 0 reached its s3:// output store: the serving pods reach it the same way."""
    s3 = field_at(job, "spec", "output", "storage", "s3")
    if s3 is None:
        return None
    try:
        return S3Storage.model_validate(s3)
    except ValidationError:  # the CRD validated it: only a hand-written object gets here
        raise InvalidPublishedModel(
            f"TrainingJob {field_at(job, 'metadata', 'name')!r} has an invalid spec.output.storage"
        ) from None


def _candidates_from_jobs(jobs: Sequence[Mapping[str, Any]]) -> Resolution:
    """Each job's version, newest first; one whose status points elsewhere is left out, and when none is
    left that is the condition."""
    out: list[Candidate] = []
    invalid: list[str] = []
    for job in jobs:
        try:
            out.append(_candidate_from_job(job))
        except InvalidPublishedModel as error:
            invalid.append(str(error))
    if out or not invalid:
        return Resolution(out)
    return Resolution([], _problem(Reason.INVALID_PUBLISHED_MODEL, "; ".join(invalid)[:1024]))


def _completion_key(job: Mapping[str, Any]) -> tuple[str, str]:
    # RFC 3339 timestamps in UTC sort as strings; the name breaks ties deterministically.
    return (str(field_at(job, "status", "completionTime") or ""), str(field_at(job, "metadata", "name")))


def resolve_source(ms: ModelService, jobs: Sequence[Mapping[str, Any]]) -> Resolution:
    source = ms.spec.model
    if source.uri is not None:
        uri = source.uri.rstrip("/")
        store, model = uri.rsplit("/", 1)
        key = source.encryption.key_secret_ref.name if source.encryption else ""
        s3 = source.storage.s3 if source.storage is not None else None
        ref = ModelRef(
            store_uri=store,
            model=model,
            version=source.version,
            key_secret=key,
            source=f"{uri}@{source.version}",
            s3=s3,
        )
        return Resolution([Candidate(model=ref)])
    if source.training_job_ref is not None:
        name = source.training_job_ref.name
        job = next((j for j in jobs if field_at(j, "metadata", "name") == name), None)
        if job is None:
            return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, f"TrainingJob {name!r} not found"))
        if not _succeeded(job):
            return Resolution([], _problem(Reason.WAITING_FOR_MODEL, f"TrainingJob {name!r} has not succeeded yet"))
        return _candidates_from_jobs([job])
    selector = source.training_job_selector
    if selector is not None:
        matching = [j for j in jobs if selector.matches(field_at(j, "metadata", "labels"))]
        text = selector.describe()
        if not matching:
            return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, f"no TrainingJob matches the selector {text}"))
        done = sorted((j for j in matching if _succeeded(j)), key=_completion_key, reverse=True)
        if not done:
            return Resolution(
                [], _problem(Reason.WAITING_FOR_MODEL, f"no TrainingJob matching {text} has succeeded yet")
            )
        return _candidates_from_jobs(done)
    return Resolution([], _problem(Reason.SOURCE_NOT_FOUND, "spec.model names no source"))


def _problem(reason: Reason, message: str) -> ConditionDecision:
    return ConditionDecision(Cond.READY, ConditionStatus.FALSE, reason, message)


def required_secrets(ms: ModelService, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Key and store-credentials Secrets the handler must look up before calling reconcile (their existence
    only)."""
    models = [c.model for c in resolve_source(ms, jobs).candidates]
    return sorted({name for m in models for name in (m.key_secret, m.credentials_secret) if name})
