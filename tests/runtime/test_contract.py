"""The runtime contract's one definition: what the operator renders is what the pod parses."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from kubemaas import contract
from kubemaas.api.trainingjob import RESERVED_ENV, Quantization
from kubemaas.contract import ContractError, Rendezvous, Settings, launch_command, parse, render

from .trainer_launch import REPO, expand, kubelet_env


def torchrun_worker_env(pod_env: Mapping[str, str], local_rank: int) -> dict[str, str]:
    """The variables torchrun overrides for the worker it starts as ``local_rank`` (static rendezvous)."""
    nproc = int(pod_env[contract.PET_NPROC_PER_NODE])
    return {
        **pod_env,
        contract.RANK: str(int(pod_env[contract.PET_NODE_RANK]) * nproc + local_rank),
        contract.LOCAL_RANK: str(local_rank),
        contract.WORLD_SIZE: str(int(pod_env[contract.PET_NNODES]) * nproc),
        contract.MASTER_ADDR: pod_env[contract.PET_MASTER_ADDR],
        contract.MASTER_PORT: pod_env[contract.PET_MASTER_PORT],
    }


SETTINGS = Settings(
    model_name="digits",
    model_version="digits-3f2a",
    output_uri="pvc://models/store",
    data_uri="pvc://datasets/digits",
    quantization=Quantization.DynamicInt8,
    checkpoint_every=25,
)
RENDEZVOUS = Rendezvous(master_addr="digits-workers-0.digits-workers", master_port=29500, nnodes=2, nproc_per_node=2)


def test_render_then_parse_round_trips_every_process() -> None:
    entries = render(SETTINGS, RENDEZVOUS)
    seen = set()
    for node in range(RENDEZVOUS.nnodes):
        pod_env = kubelet_env(entries, node)
        for local_rank in range(RENDEZVOUS.nproc_per_node):
            parsed = parse(torchrun_worker_env(pod_env, local_rank))
            assert parsed.settings == SETTINGS
            process = parsed.process
            assert (process.world_size, process.local_rank) == (4, local_rank)
            assert process.master_addr == RENDEZVOUS.master_addr
            seen.add(process.rank)
    assert seen == {0, 1, 2, 3}


def test_render_without_torchrun_is_one_process_per_pod() -> None:
    """nprocPerNode 1: the pod's own RANK (its index) and WORLD_SIZE are the process's."""
    one = Rendezvous(master_addr="m", master_port=23456, nnodes=3, nproc_per_node=1)
    parsed = parse(kubelet_env(render(SETTINGS, one), 2))
    assert (parsed.process.rank, parsed.process.world_size, parsed.process.master_port) == (2, 3, 23456)


def test_render_for_pytorchjob_leaves_rendezvous_to_kubeflow() -> None:
    names = [entry["name"] for entry in render(SETTINGS)]
    assert all(name.startswith(contract.PREFIX) for name in names)
    assert contract.MODEL_NAME in names and contract.CHECKPOINT_EVERY in names
    assert contract.KEY_DIR not in names  # not given: the runtime's default applies


def test_render_parse_round_trip_of_defaults() -> None:
    minimal = Settings(model_name="m", model_version="v1", output_uri="file:///srv/store")
    parsed = parse(kubelet_env(render(minimal), 0))
    assert parsed.settings == minimal
    assert parsed.settings.key_dir == contract.DEFAULT_KEY_DIR
    assert parsed.settings.checkpoint_every == contract.DEFAULT_CHECKPOINT_EVERY
    assert (parsed.process.rank, parsed.process.world_size) == (0, 1)


def test_paths_use_the_mount_root_of_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mapping passed in is the environment: the process's own is never consulted below the entry point."""
    monkeypatch.setenv(contract.MOUNT_ROOT, str(tmp_path / "not-this-one"))
    env = {
        contract.MODEL_NAME: "digits",
        contract.MODEL_VERSION: "v3",
        contract.OUTPUT_URI: "pvc://models/store/",
        contract.MOUNT_ROOT: str(tmp_path),
    }
    settings = parse(env).settings
    assert settings.output_root == tmp_path / "models/store"
    assert settings.checkpoint_path == tmp_path / "models/store/digits/.checkpoints/v3"
    assert settings.termination_log == Path("/dev/termination-log")
    assert (settings.checkpoint_every, settings.quantization) == (100, Quantization.NONE)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (contract.MODEL_VERSION, "../x", "KUBEMAAS_MODEL_VERSION"),
        (contract.MODEL_NAME, "Latest", "KUBEMAAS_MODEL_NAME"),
        (contract.MODEL_NAME, "Digits", "KUBEMAAS_MODEL_NAME"),  # the API's rule: lower-case
        (contract.OUTPUT_URI, "s3://b/x", "KUBEMAAS_OUTPUT_URI"),
        (contract.OUTPUT_URI, "pvc://models/../etc", "KUBEMAAS_OUTPUT_URI"),
        (contract.QUANTIZATION, "Int4", "KUBEMAAS_QUANTIZATION"),
        (contract.CHECKPOINT_EVERY, "0", "KUBEMAAS_CHECKPOINT_EVERY"),
        (contract.CHECKPOINT_KEEP, "two", "KUBEMAAS_CHECKPOINT_KEEP"),
        (contract.LOG_LEVEL, "LOUD", "KUBEMAAS_LOG_LEVEL"),
        (contract.MASTER_PORT, "70000", "MASTER_PORT"),
        (contract.RANK, "-1", "RANK"),
        (contract.RANK, "4", "RANK=4 is outside WORLD_SIZE=4"),
        (contract.LOCAL_RANK, "x", "LOCAL_RANK"),
    ],
)
def test_invalid_values_are_refused_naming_the_variable(name: str, value: str, expected: str) -> None:
    env = {**kubelet_env(render(SETTINGS, RENDEZVOUS), 1), name: value}
    with pytest.raises(ContractError) as caught:
        parse(env)
    assert expected in str(caught.value)


def test_missing_variables_are_all_named() -> None:
    with pytest.raises(ContractError) as caught:
        parse({contract.TERMINATION_LOG: "/tmp/t"})
    message = str(caught.value)
    for name in (contract.MODEL_NAME, contract.MODEL_VERSION, contract.OUTPUT_URI):
        assert f"{name} is required" in message
    assert caught.value.termination_log == Path("/tmp/t")


def test_unknown_rank_names_both_sources_and_is_not_reported_as_zero() -> None:
    env = {contract.MODEL_NAME: "m", contract.MODEL_VERSION: "v", contract.OUTPUT_URI: "file:///s", "WORLD_SIZE": "2"}
    with pytest.raises(ContractError) as caught:
        parse(env)
    assert "RANK" in str(caught.value) and "JOB_COMPLETION_INDEX" in str(caught.value)
    assert caught.value.rank is None
    assert parse({**env, contract.JOB_COMPLETION_INDEX: "1"}).process.rank == 1
    assert parse({**env, contract.RANK: "0", contract.JOB_COMPLETION_INDEX: "1"}).process.rank == 0


def test_rendezvous_names_are_the_ones_the_api_reserves() -> None:
    rendered = {entry["name"] for entry in render(SETTINGS, RENDEZVOUS)}
    assert {name for name in rendered if not name.startswith(contract.PREFIX)} <= set(RESERVED_ENV)


def test_launch_command_wraps_the_program_under_torchrun() -> None:
    command = launch_command(["python", "/opt/train.py"], ["--steps", "10"], 4)
    pod_env = kubelet_env(render(SETTINGS, RENDEZVOUS), 1)
    expanded = expand(command, pod_env)
    assert expanded == [
        "python", "-m", "kubemaas.runtime.launch",
        "--nnodes=2", "--nproc-per-node=4", "--node-rank=1",
        "--master-addr=digits-workers-0.digits-workers", "--master-port=29500",
        "--no-python", "python", "/opt/train.py", "--steps", "10",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="entrypoint"):
        launch_command([], ["--steps", "10"], 1)


OPERATOR_ONLY = ("torch", "kopf", "kubernetes", "aiohttp", "prometheus_client")


@pytest.mark.parametrize(
    "module", ["kubemaas.contract", "kubemaas.contract.termination", "kubemaas.runtime.loader", "kubemaas.cli"]
)
def test_the_model_loader_image_needs_no_operator_or_torch_dependencies(module: str) -> None:
    """The contract is imported by every image; the loader image installs only the base dependencies."""
    code = f"import sys, {module}; print(sorted({set(OPERATOR_ONLY)!r} & {{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_base_dependencies_leave_the_operators_to_its_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert base.isdisjoint({"kopf", "kubernetes", "aiohttp", "prometheus-client", "torch"})
    operator = {
        re.split(r"[<>=\[ ]", dep, maxsplit=1)[0].lower() for dep in project["optional-dependencies"]["operator"]
    }
    assert {"kopf", "kubernetes", "aiohttp"} <= operator


@pytest.mark.parametrize("environ", [{}, {contract.MOUNT_ROOT: "/data/claims"}])
def test_the_trainer_and_the_loader_resolve_pvc_uris_under_the_same_mount_root(environ: dict[str, str]) -> None:
    from kubemaas.runtime import loader

    store = "pvc://models/store"
    trainer = parse(
        {**environ, contract.MODEL_NAME: "digits", contract.MODEL_VERSION: "v1", contract.OUTPUT_URI: store}
    ).settings
    args = loader.build_parser().parse_args(
        [f"--store-uri={store}", "--model=digits", "--key-dir=/k", "--repository=/r"]
    )
    request = loader._request_from_args(args, environ)
    assert request.mount_root == trainer.mount_root == Path(environ.get(contract.MOUNT_ROOT, "/mnt/kubemaas"))
    explicit = loader.build_parser().parse_args(
        [f"--store-uri={store}", "--model=digits", "--key-dir=/k", "--repository=/r", "--mount-root=/elsewhere"]
    )
    assert loader._request_from_args(explicit, environ).mount_root == Path("/elsewhere")


def test_store_uris_are_parsed_in_one_place() -> None:
    from kubemaas.contract.store import ArtifactStoreError, StoreUri, claim_of

    uri = StoreUri.parse("pvc://models/store/digits/")
    assert (uri.scheme, uri.claim, uri.path) == ("pvc", "models", "store/digits")
    assert uri.resolve(Path("/mnt/kubemaas")) == Path("/mnt/kubemaas/models/store/digits")
    assert uri.mount(Path("/mnt/kubemaas")) == Path("/mnt/kubemaas/models")
    assert StoreUri.parse("file:///srv/store").resolve(Path("/ignored")) == Path("/srv/store")
    assert claim_of("pvc://datasets") == "datasets"
    bucket = StoreUri.parse("s3://models.example-1/teams/vision/")
    assert (bucket.scheme, bucket.bucket, bucket.path, bucket.claim) == ("s3", "models.example-1", "teams/vision", None)
    assert bucket.key("digits", "LATEST") == "teams/vision/digits/LATEST"
    assert StoreUri.parse("s3://models").key("digits") == "digits"
    for no_path in (bucket.resolve, bucket.mount):
        with pytest.raises(ArtifactStoreError, match="object store"):
            no_path(Path("/mnt/kubemaas"))
    with pytest.raises(ArtifactStoreError, match="not an s3"):
        uri.key("x")
    for bad in (
        "file://relative",
        "pvc://c/../x",
        "pvc://Upper/x",
        "s3://Bucket/x",
        "s3://ab/x",
        "s3://-bucket/x",
        "s3://bucket/./x",
        "s3://bucket/a/../b",
        "s3://bucket//x",
        "gs://bucket/x",
    ):
        with pytest.raises(ArtifactStoreError):
            StoreUri.parse(bad)


def test_s3_settings_come_from_the_environment_the_operator_renders() -> None:
    from kubemaas.contract.store import ArtifactStoreError, S3Settings

    assert S3Settings.from_env({}) == S3Settings()  # AWS itself: the SDK's endpoint and credential chain
    environ = {
        "KUBEMAAS_S3_ENDPOINT": "https://s3.internal:9000",
        "KUBEMAAS_S3_REGION": "eu-west-3",
        "KUBEMAAS_S3_PATH_STYLE": "True",
        "KUBEMAAS_S3_CA_BUNDLE": "/etc/kubemaas/s3-ca/ca.crt",
        "KUBEMAAS_S3_CREDENTIALS_DIR": "/var/run/kubemaas/s3",
    }
    assert S3Settings.from_env(environ) == S3Settings(
        endpoint_url="https://s3.internal:9000",
        region="eu-west-3",
        path_style=True,
        ca_bundle=Path("/etc/kubemaas/s3-ca/ca.crt"),
        credentials_dir=Path("/var/run/kubemaas/s3"),
    )
    with pytest.raises(ArtifactStoreError, match="KUBEMAAS_S3_PATH_STYLE must be true or false"):
        S3Settings.from_env({"KUBEMAAS_S3_PATH_STYLE": "yes"})
