"""The training harness: what a training program calls inside a TrainingJob pod.

A program hands its training function to :func:`main` (or :func:`run`)::

    def train(h: Harness) -> None:
        shard = h.shard(len(dataset))                  # this rank's indices
        model = h.wrap(make_model())                   # DDP on h.device
        step = h.resume(model, optimizer)              # 0, or the newest checkpoint's step
        while step < total_steps:
            ...one optimizer step on batch_for_step(shard, step, batch_size)...
            step += 1
            h.after_step(step, model, optimizer)       # periodic checkpoint; SIGTERM -> checkpoint + exit
        h.save_checkpoint(step, model, optimizer)
        h.publish(model, example_input, inputs=..., outputs=..., metrics={...})   # rank 0 only

    if __name__ == "__main__":
        kubemaas.runtime.trainer.main(train)

The environment (see docs/runtime-contract.md) says where to write, with which key, and how
often to checkpoint. :func:`run` maps every failure to an exit code that tells the operator
(and Kubeflow's ``ExitCode`` restart policy: 1-127 permanent, 128-255 retryable) whether a
retry can help, and writes a JSON termination message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn, cast

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kubemaas.runtime.artifacts import (
    ArtifactStore,
    ArtifactStoreError,
    Manifest,
    TensorSpec,
    VersionExistsError,
    resolve_uri,
    validate_name,
)
from kubemaas.runtime.checkpoint import CheckpointStore
from kubemaas.runtime.distributed import (
    DistConfigError,
    DistEnv,
    init_process_group,
    pick_device,
    read_dist_env,
    shard_indices,
)
from kubemaas.runtime.errors import ArtifactIntegrityError, KeyringError
from kubemaas.runtime.export import export_torchscript
from kubemaas.runtime.keyring import Keyring

log = logging.getLogger("kubemaas.trainer")

# Exit codes. Kubeflow's `restartPolicy: ExitCode` treats 1-127 as permanent and 128-255 as
# retryable; the Indexed Job backend maps the permanent ones to FailJob in a podFailurePolicy.
EXIT_OK = 0
EXIT_TRAINING_ERROR = 1  # the training program raised: a bug or bad data, retrying will not help
EXIT_CONFIG = 78  # bad environment, missing key directory or mount (EX_CONFIG)
EXIT_INTEGRITY = 79  # the artifact store refused the result (version conflict, integrity)
EXIT_RETRYABLE = 138  # lost a peer, rendezvous or I/O failure: restart all ranks, resume
EXIT_PREEMPTED = 143  # SIGTERM (128 + 15): a checkpoint was written, restart resumes from it

TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
DEFAULT_KEY_DIR = "/var/run/kubemaas/keys"

Quantization = Literal["None", "DynamicInt8"]


class TrainerConfigError(ValueError):
    """A KUBEMAAS_* variable is missing or invalid."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written and the process should exit for a restart."""

    def __init__(self, step: int) -> None:
        super().__init__(f"terminated at step {step}; checkpoint written, a restart resumes from it")
        self.step = step


@dataclass(frozen=True)
class TrainerConfig:
    model_name: str
    version: str
    output_uri: str
    output_root: Path
    key_dir: Path
    checkpoint_dir: Path
    checkpoint_every: int
    checkpoint_keep: int
    quantization: Quantization
    termination_log: Path
    data_path: Path | None
    dist_timeout: timedelta

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerConfig:
        env = os.environ if environ is None else environ
        model = _require(env, "KUBEMAAS_MODEL_NAME")
        version = _require(env, "KUBEMAAS_MODEL_VERSION")
        try:
            validate_name(model, "model name")
            validate_name(version, "version")
            output_uri = _require(env, "KUBEMAAS_OUTPUT_URI")
            output_root = resolve_uri(output_uri)
            data_uri = env.get("KUBEMAAS_DATA_URI")
            data_path = resolve_uri(data_uri) if data_uri else None
        except ArtifactStoreError as exc:
            raise TrainerConfigError(str(exc)) from None
        quantization = env.get("KUBEMAAS_QUANTIZATION", "None")
        if quantization not in ("None", "DynamicInt8"):
            raise TrainerConfigError(f"KUBEMAAS_QUANTIZATION={quantization!r}: use None or DynamicInt8")
        checkpoint_dir = env.get("KUBEMAAS_CHECKPOINT_DIR")
        return cls(
            model_name=model,
            version=version,
            output_uri=output_uri.rstrip("/"),
            output_root=output_root,
            key_dir=Path(env.get("KUBEMAAS_KEY_DIR", DEFAULT_KEY_DIR)),
            checkpoint_dir=(Path(checkpoint_dir) if checkpoint_dir else output_root / model / ".checkpoints" / version),
            checkpoint_every=_positive(env, "KUBEMAAS_CHECKPOINT_EVERY", 100),
            checkpoint_keep=_positive(env, "KUBEMAAS_CHECKPOINT_KEEP", 2),
            quantization=cast(Quantization, quantization),
            termination_log=Path(env.get("KUBEMAAS_TERMINATION_LOG", DEFAULT_TERMINATION_LOG)),
            data_path=data_path,
            dist_timeout=timedelta(seconds=_positive(env, "KUBEMAAS_DIST_TIMEOUT_SECONDS", 1800)),
        )


def _require(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise TrainerConfigError(f"environment variable {name} is required")
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise TrainerConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise TrainerConfigError(f"{name} must be >= 1, got {value}")
    return value


class Harness:
    """One rank's view of the job: process group, shards, checkpoints, publication."""

    def __init__(self, config: TrainerConfig, env: DistEnv) -> None:
        self.config = config
        self.env = env
        self.device = pick_device(env)
        self.checkpoints = CheckpointStore(config.checkpoint_dir, keep=config.checkpoint_keep)
        self.resumed_from_step = 0
        self.published: Manifest | None = None
        self._stop_requested = False
        self._last_saved_step = -1
        self._backend: str | None = None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_primary(self) -> bool:
        return self.env.is_primary

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.is_primary:
            # Fail in seconds, not after hours of training, when rank 0 cannot publish.
            Keyring.from_dir(self.config.key_dir)
            if not self.config.output_root.is_dir():
                raise TrainerConfigError(f"output store {self.config.output_root} is not mounted")
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._backend = init_process_group(self.env, self.config.dist_timeout)
        log.info("rank %d/%d joined (%s) on %s", self.rank, self.world_size, self._backend, self.device)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step loop agrees on it across ranks, so all stop at the same step.
        self._stop_requested = True

    # ------------------------------------------------------------------ data and model

    def shard(self, n: int, *, seed: int = 0) -> list[int]:
        return shard_indices(n, self.rank, self.world_size, seed=seed)

    def wrap(self, module: torch.nn.Module) -> DistributedDataParallel:
        module = module.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    # ------------------------------------------------------------------ checkpoints

    def resume(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load the newest complete checkpoint into ``module``/``optimizer``; return its step (or 0)."""
        checkpoint = self.checkpoints.load_latest(map_location=self.device)
        if checkpoint is None:
            log.info("no checkpoint in %s: starting at step 0", self.checkpoints.directory)
            return 0
        _unwrap(module).load_state_dict(checkpoint.state["model"])
        optimizer.load_state_dict(checkpoint.state["optimizer"])
        self.resumed_from_step = self._last_saved_step = checkpoint.step
        log.info("resumed from checkpoint at step %d", checkpoint.step)
        return checkpoint.step

    def save_checkpoint(self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0 writes (the replicas are identical); the others wait so no rank runs ahead."""
        if step == self._last_saved_step:
            return
        self._last_saved_step = step
        if self.is_primary:
            state = {"model": _unwrap(module).state_dict(), "optimizer": optimizer.state_dict()}
            path = self.checkpoints.save(step, state)
            log.info("checkpoint at step %d: %s", step, path.name)
        dist.barrier()

    def after_step(self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Call after every optimizer step with the number of steps done so far."""
        if self._any_rank_stopping():
            self.save_checkpoint(step, module, optimizer)
            raise Preempted(step)
        if step % self.config.checkpoint_every == 0:
            self.save_checkpoint(step, module, optimizer)

    def _any_rank_stopping(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ publication

    def publish(
        self,
        module: torch.nn.Module,
        example_input: torch.Tensor,
        *,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metrics: Mapping[str, float],
    ) -> Manifest | None:
        """On rank 0: export TorchScript, encrypt, publish, write the termination message."""
        if not self.is_primary:
            return None
        config = self.config
        store = ArtifactStore(config.output_root)
        if store.has_version(config.model_name, config.version):
            # A restart after a publication that completed: finish the job with that version.
            log.info("version %s already published: reusing it", config.version)
            store.point_latest(config.model_name, config.version)
            self.published = store.resolve(config.model_name, config.version).manifest
            return self.published
        keyring = Keyring.from_dir(config.key_dir)
        all_metrics = {**metrics, "resumedFromStep": float(self.resumed_from_step)}
        # Plaintext stays on the pod's scratch disk, never on the shared store.
        with tempfile.TemporaryDirectory(prefix="kubemaas-export-") as scratch:
            plaintext = export_torchscript(
                _unwrap(module), example_input, Path(scratch) / "model.pt", quantization=config.quantization
            )
            version = store.publish(
                plaintext,
                model=config.model_name,
                version=config.version,
                key=keyring.active_key(),
                key_id=keyring.active_id,
                inputs=inputs,
                outputs=outputs,
                quantization=config.quantization,
                frameworks={"torch": torch.__version__, "python": sys.version.split()[0]},
                metrics=all_metrics,
            )
        store.remove_leftovers(config.model_name)
        log.info("published %s version %s (sha256 %s)", config.model_name, config.version, version.manifest.sha256)
        self.published = version.manifest
        return version.manifest

    def result_message(self) -> dict[str, Any] | None:
        if self.published is None:
            return None
        manifest = self.published
        return {
            "model": manifest.model,
            "version": manifest.version,
            "uri": f"{self.config.output_uri}/{manifest.model}/{manifest.version}",
            "sha256": manifest.sha256,
            "keyId": manifest.key_id,
            "metrics": manifest.metrics,
        }


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    assert isinstance(inner, torch.nn.Module)
    return inner


# ---------------------------------------------------------------------- entry point


def classify(exc: BaseException) -> tuple[int, str]:
    """Exit code and termination reason for a failure."""
    if isinstance(exc, Preempted):
        return EXIT_PREEMPTED, "Preempted"
    if isinstance(exc, TrainerConfigError | DistConfigError | KeyringError):
        return EXIT_CONFIG, "ConfigError"
    if isinstance(exc, VersionExistsError | ArtifactIntegrityError):
        return EXIT_INTEGRITY, "ArtifactError"
    if isinstance(exc, ArtifactStoreError):
        return EXIT_CONFIG, "ConfigError"
    if isinstance(exc, dist.DistError | OSError):
        return EXIT_RETRYABLE, "Retryable"
    if isinstance(exc, RuntimeError) and _looks_like_lost_peer(exc):
        return EXIT_RETRYABLE, "Retryable"
    return EXIT_TRAINING_ERROR, "TrainingError"


def _looks_like_lost_peer(exc: RuntimeError) -> bool:
    # gloo reports a dead peer as a plain RuntimeError from its transport layer.
    text = str(exc).lower()
    return any(marker in text for marker in ("gloo", "connection reset", "connection closed", "broken pipe"))


def write_termination_message(path: Path, message: Mapping[str, Any]) -> None:
    """JSON on one line, cut to what the kubelet keeps; never fails the process."""
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(data) > TERMINATION_MESSAGE_LIMIT and "message" in message:
        excess = len(data) - TERMINATION_MESSAGE_LIMIT + 3
        shortened = {**message, "message": str(message["message"])[:-excess] + "..."}
        data = json.dumps(shortened, separators=(",", ":"), sort_keys=True).encode("utf-8")
    try:
        path.write_bytes(data[:TERMINATION_MESSAGE_LIMIT])
    except OSError as exc:
        log.warning("cannot write termination message to %s: %s", path, exc)


def run(train: Callable[[Harness], None], environ: Mapping[str, str] | None = None) -> int:
    """Run ``train`` under the harness and return the process exit code."""
    env_map = os.environ if environ is None else environ
    termination_log = Path(env_map.get("KUBEMAAS_TERMINATION_LOG", DEFAULT_TERMINATION_LOG))
    rank = env_map.get("RANK") or env_map.get("JOB_COMPLETION_INDEX") or "0"
    harness: Harness | None = None
    try:
        harness = Harness(TrainerConfig.from_env(env_map), read_dist_env(env_map))
        harness.start()
        train(harness)
        result = harness.result_message()
        if result is not None:
            write_termination_message(termination_log, result)
        return EXIT_OK
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        code, reason = classify(exc)
        log_fn = log.warning if code in (EXIT_PREEMPTED, EXIT_RETRYABLE) else log.error
        log_fn("rank %s exits %d (%s): %s", rank, code, reason, exc, exc_info=code == EXIT_TRAINING_ERROR)
        write_termination_message(
            termination_log,
            {"reason": reason, "exitCode": code, "rank": int(rank) if rank.isdigit() else -1, "message": str(exc)},
        )
        return code
    finally:
        if harness is not None:
            harness.close()


def main(train: Callable[[Harness], None]) -> NoReturn:
    rank = os.environ.get("RANK") or os.environ.get("JOB_COMPLETION_INDEX") or "0"
    logging.basicConfig(
        level=os.environ.get("KUBEMAAS_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(run(train))
