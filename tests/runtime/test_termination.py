"""Termination messages: always complete JSON within the kubelet's 4096 bytes, read back strictly."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from kubemaas.contract import termination
from kubemaas.contract.termination import (
    MESSAGE_LIMIT,
    ExitCode,
    FailureMessage,
    InvalidTerminationMessage,
    SuccessMessage,
    encode,
    parse_termination,
)

SHA = "ab" * 32


def success(**metrics: float) -> SuccessMessage:
    return SuccessMessage(
        model="digits", version="v1", uri="pvc://models/store/digits/v1", sha256=SHA, key_id="k1", metrics=metrics
    )


@pytest.mark.parametrize(
    "text",
    [
        "x" * 10_000,
        '"quoted" \\ and\nnewlines\t' * 800,  # JSON escapes make the encoding longer than the text
        "ünïcödé ✓ 漢字 " * 700,  # multi-byte UTF-8
        "\x00\x01" * 3000,  # \u0000 escapes: six bytes per character
    ],
    ids=["ascii", "escapes", "utf-8", "control"],
)
def test_a_long_failure_is_shortened_to_valid_json(text: str) -> None:
    message = FailureMessage(reason="TrainingError", exit_code=ExitCode.FAILED, message=text, rank=3)
    data = encode(message)
    assert len(data) <= MESSAGE_LIMIT
    assert len(data) > MESSAGE_LIMIT - 16  # shortened no more than needed
    read = parse_termination(data)
    assert isinstance(read, FailureMessage)
    assert (read.reason, read.exit_code, read.rank) == ("TrainingError", ExitCode.FAILED, 3)
    assert read.message.endswith(termination.ELLIPSIS) and text.startswith(read.message[: -len(termination.ELLIPSIS)])


def test_many_metrics_are_dropped_until_the_result_fits() -> None:
    metrics = {f"metric{i:04d}WithALongName": float(i) for i in range(400)} | {"heldOutAccuracy": 0.97}
    data = encode(success(**metrics))
    assert len(data) <= MESSAGE_LIMIT
    read = parse_termination(data)
    assert isinstance(read, SuccessMessage)
    assert (read.model, read.version, read.sha256, read.key_id) == ("digits", "v1", SHA, "k1")
    assert read.metrics["heldOutAccuracy"] == 0.97  # short names survive longest
    assert set(read.metrics) < set(metrics)


def test_messages_that_fit_are_written_unchanged(tmp_path: Path) -> None:
    message = success(heldOutAccuracy=0.96, steps=300)
    termination.write(tmp_path / "t", message)
    assert json.loads((tmp_path / "t").read_text()) == {
        "keyId": "k1", "metrics": {"heldOutAccuracy": 0.96, "steps": 300.0}, "model": "digits",
        "sha256": SHA, "uri": "pvc://models/store/digits/v1", "version": "v1",
    }  # fmt: skip
    assert parse_termination((tmp_path / "t").read_text()) == message


def test_the_first_message_wins(tmp_path: Path) -> None:
    """Several workers per pod share one file: the first failure is the cause, the rest its echo."""
    path = tmp_path / "t"
    cause = FailureMessage(reason="ConfigError", exit_code=ExitCode.CONFIG, message="no key", rank=0)
    termination.write(path, cause)
    termination.write(path, FailureMessage(reason="Retryable", exit_code=ExitCode.RETRYABLE, message="peer", rank=1))
    assert parse_termination(path.read_bytes()) == cause


def _write_many(path: Path, rank: int) -> None:
    termination.write(
        path, FailureMessage(reason="Retryable", exit_code=ExitCode.RETRYABLE, message="x" * 5000, rank=rank)
    )


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "t"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(path, rank)) for rank in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    assert isinstance(parse_termination(path.read_bytes()), FailureMessage)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"exitCode":1,"message":"' + "x" * 5000 + '","reason":"TrainingError"}', "more than 4096"),
        ('{"exitCode":1,"message":"xxx', "not JSON"),  # what cutting JSON at 4096 bytes produced
        ("[1, 2]", "not a JSON object"),
        ('{"exitCode":77,"message":"m","reason":"TrainingError"}', "FailureMessage"),
        ('{"exitCode":"78","message":"m","reason":"ConfigError"}', "FailureMessage"),
        ('{"exitCode":78,"message":"m","reason":"config error"}', "FailureMessage"),
        ('{"exitCode":78,"message":"m","reason":"ConfigError","rank":-1}', "FailureMessage"),
        ('{"exitCode":78,"message":"m","reason":"ConfigError","extra":1}', "FailureMessage"),
        ('{"model":"m","version":"v","uri":"u","sha256":"nothex","keyId":"k"}', "SuccessMessage"),
        ('{"model":"m","version":"v","uri":"u","keyId":"k"}', "SuccessMessage"),
    ],
    ids=[
        "too-long", "cut-json", "array", "unknown-code", "string-code", "reason-not-camel", "negative-rank",
        "unknown-field", "bad-sha", "missing-sha",
    ],
)  # fmt: skip
def test_parse_refuses_what_the_runtime_never_writes(text: str, why: str) -> None:
    with pytest.raises(InvalidTerminationMessage, match=why):
        parse_termination(text)


def test_exit_codes_follow_kubeflows_split() -> None:
    assert {c for c in ExitCode if c.retryable} == {ExitCode.RETRYABLE, ExitCode.PREEMPTED}
    assert all(0 <= c <= 127 for c in ExitCode if not c.retryable)
