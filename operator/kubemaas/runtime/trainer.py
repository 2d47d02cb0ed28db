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
        compressed = h.compress(model)                 # pruned and quantized as the job says
        ...evaluate compressed.module on held-out data...
        h.publish(compressed, example_input, inputs=..., outputs=..., metrics={...})   # rank 0 only

With distillation configured, ``h.teacher`` is the teacher model on every rank (loaded in start()) and
``h.distillation_loss(student_logits, teacher_logits, targets)`` the loss the job's spec asks for.

    if __name__ == "__main__":
        kubemaas.runtime.trainer.main(train)

The environment (docs/runtime-contract.md, parsed once by :func:`kubemaas.contract.parse`) says
where to write, with which key, and how often to checkpoint. :func:`run` maps every failure to an
:class:`~kubemaas.contract.termination.ExitCode` that tells the operator (and Kubeflow's
``ExitCode`` restart policy: 1-127 permanent, 128-255 retryable) whether a retry can help, and
writes a JSON termination message (kubemaas.contract.termination).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from kubemaas import contract
from kubemaas.contract import ContractError, Environment, termination
from kubemaas.contract.termination import Cause, ExitCode, FailureMessage, SuccessMessage
from kubemaas.runtime import coredumps
from kubemaas.runtime.artifacts import (
    ArtifactStoreError,
    InvalidLatestError,
    InvalidManifestError,
    Manifest,
    TensorSpec,
    UnsafeEntryError,
    VersionExistsError,
)
from kubemaas.runtime.checkpoint import Checkpoint, CheckpointStore
from kubemaas.runtime.compression import Compressed, Pruning, compress, count_parameters
from kubemaas.runtime.dataset import Dataset, open_dataset
from kubemaas.runtime.distill import distillation_loss, load_teacher
from kubemaas.runtime.distributed import init_process_group, pick_device, shard_indices
from kubemaas.runtime.errors import ArtifactIntegrityError, KeyringError, ObjectStoreUnavailableError
from kubemaas.runtime.export import export_torchscript
from kubemaas.runtime.keyring import Keyring
from kubemaas.runtime.output import OutputNotMountedError, open_output
from kubemaas.runtime.progress import Progress, ProgressServer
from kubemaas.runtime.stores import Store

log = logging.getLogger("kubemaas.trainer")

# The termination message's reason for each exit code (docs/runtime-contract.md §6).
REASONS = {
    ExitCode.FAILED: "TrainingError",
    ExitCode.CONFIG: "ConfigError",
    ExitCode.ARTIFACT: "ArtifactError",
    ExitCode.RETRYABLE: "Retryable",
    ExitCode.PREEMPTED: "Preempted",
}


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was written and the process should exit for a restart."""

    def __init__(self, step: int) -> None:
        super().__init__(f"terminated at step {step}; checkpoint written, a restart resumes from it")
        self.step = step


class Harness:
    """One rank's view of the job: process group, shards, checkpoints, publication."""

    def __init__(self, env: Environment) -> None:
        self.settings = env.settings
        self.process = env.process
        self.environment = env
        self.device = pick_device(env.process)
        # Rank 0 only (it alone holds the key): set by start().
        self.keyring: Keyring | None = None
        self.store: Store[Any] | None = None
        self.checkpoints: CheckpointStore | None = None
        self.resumed_from_step = 0
        self.published: Manifest | None = None
        # With distillation (KUBEMAAS_TEACHER_URI): the teacher on every rank, set by start().
        self.teacher: torch.nn.Module | None = None
        # With KUBEMAAS_DATA_URI: its files, decrypted in memory as they are read when encrypted; set by start().
        self.data: Dataset | None = None
        # Rank 0 only: what report_progress() recorded, served to the operator.
        self.progress: Progress | None = None
        self._progress_server: ProgressServer | None = None
        self._stop_requested = False
        self._last_saved_step = -1
        self._backend: str | None = None

    @property
    def rank(self) -> int:
        return self.process.rank

    @property
    def world_size(self) -> int:
        return self.process.world_size

    @property
    def is_primary(self) -> bool:
        return self.process.is_primary

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        settings = self.settings
        if self.is_primary:
            # Fail in seconds, not after hours of training, when rank 0 cannot checkpoint or publish.
            self.keyring = Keyring.from_dir(settings.key_dir)
            self.store, self.checkpoints = open_output(settings, self.environment.output_s3, self.keyring)
        if settings.data_uri is not None:
            # Every rank reads (and decrypts) its own files, so every rank holds the data key.
            data_keys = Keyring.from_dir(settings.data_key_dir) if settings.data_key_dir is not None else None
            self.data = open_dataset(
                settings.data_uri, mount_root=settings.mount_root, s3=self.environment.data_s3, keyring=data_keys
            )
        if self.is_primary:
            self.progress = Progress()
            if settings.progress_port:
                try:
                    self._progress_server = ProgressServer(self.progress, settings.progress_port).start()
                except OSError as error:  # progress is for people watching: it never stops the training
                    log.warning("no progress endpoint on port %d: %s", settings.progress_port, error)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._backend = init_process_group(self.process, self.device, self.settings.dist_timeout)
        log.info("rank %d/%d joined (%s) on %s", self.rank, self.world_size, self._backend, self.device)
        if self.settings.teacher_uri is not None:
            # Before training, so that a missing or tampered teacher fails the job in seconds.
            self.teacher = load_teacher(
                self.settings, primary=self.is_primary, world_size=self.world_size, device=self.device
            )

    def finish(self) -> None:
        """After the program returned on every rank: all ranks leave together, once rank 0 has published.

        A rank that exits while another still holds the process group closes its connections under that one,
        and gloo can abort the survivor (an uncaught IoException: exit 134) instead of raising. The other ranks
        returned right after the last checkpoint's barrier while rank 0 exported and published, and a loaded
        machine saw a two-rank job end that way (docs/runtime-contract.md §7, "Leaving")."""
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self._progress_server is not None:
            self._progress_server.close()
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
        """Load the newest complete checkpoint into ``module``/``optimizer``; return its step (or 0).

        Rank 0 decrypts it (only rank 0 holds the key) and sends it to the other ranks.
        """
        found: list[Checkpoint | None] = [None]
        if self.checkpoints is not None:
            found = [self.checkpoints.load_latest(map_location="cpu")]
        if self.world_size > 1:
            dist.broadcast_object_list(found, src=0)
        checkpoint = found[0]
        if checkpoint is None:
            log.info("no checkpoint to resume from: starting at step 0")
            return 0
        _unwrap(module).load_state_dict(checkpoint.state["model"])
        optimizer.load_state_dict(checkpoint.state["optimizer"])
        self.resumed_from_step = self._last_saved_step = checkpoint.step
        if self.progress is not None and self.checkpoints is not None:
            self.progress.checkpointed(checkpoint.step, at=self.checkpoints.saved_at(checkpoint.step))
        log.info("resumed from checkpoint at step %d", checkpoint.step)
        return checkpoint.step

    def save_checkpoint(self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Rank 0 writes (the replicas are identical); the others wait so no rank runs ahead."""
        if step == self._last_saved_step:
            return
        self._last_saved_step = step
        if self.checkpoints is not None:
            state = {"model": _unwrap(module).state_dict(), "optimizer": optimizer.state_dict()}
            where = self.checkpoints.save(step, state)
            log.info("checkpoint at step %d: %s", step, where)
            if self.progress is not None:
                self.progress.checkpointed(step)
        dist.barrier()

    def after_step(self, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Call after every optimizer step with the number of steps done so far."""
        if self._any_rank_stopping():
            self.save_checkpoint(step, module, optimizer)
            raise Preempted(step)
        if step % self.settings.checkpoint_every == 0:
            self.save_checkpoint(step, module, optimizer)

    def _any_rank_stopping(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def report_progress(
        self,
        step: int,
        total_steps: int,
        *,
        loss: float | None = None,
        samples: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Call once per step on every rank (only rank 0 records): the TrainingJob's status.progress.

        ``samples`` is this rank's batch size; rank 0 counts it for every rank (the ranks step together).
        """
        if self.progress is not None:
            self.progress.report(step, total_steps, loss=loss, samples=samples * self.world_size, metrics=metrics)

    def distillation_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The student's loss with the job's temperature and soft/hard weighting (spec.distillation)."""
        return distillation_loss(
            student_logits,
            teacher_logits,
            targets,
            temperature=self.settings.distill_temperature,
            soft_percent=self.settings.distill_soft_percent,
        )

    # ------------------------------------------------------------------ publication

    def compress(self, module: torch.nn.Module) -> Compressed:
        """A copy of the trained model, pruned and quantized as the job says (output.compression, quantization),
        on CPU in eval mode: what :meth:`publish` exports, so the program can evaluate exactly that."""
        settings = self.settings
        pruning = None
        if settings.pruning is not None and settings.pruning_percent is not None:
            pruning = Pruning(settings.pruning, settings.pruning_percent)
        return compress(_unwrap(module), pruning=pruning, quantization=settings.quantization)

    def compression_metrics(self, compressed: Compressed, size_bytes: int) -> dict[str, float]:
        """What the published metrics say of the model's size (and of the teacher's, when distilling)."""
        metrics = {
            "parameters": float(compressed.parameters),
            "sparsity": compressed.sparsity,
            "sizeBytes": float(size_bytes),
        }
        if self.teacher is not None:
            metrics["teacherParameters"] = float(count_parameters(self.teacher)[0])
        return metrics

    def publish(
        self,
        module: torch.nn.Module | Compressed,
        example_input: torch.Tensor,
        *,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        metrics: Mapping[str, float],
    ) -> Manifest | None:
        """On rank 0: export TorchScript, encrypt, publish, write the termination message.

        A plain module is compressed first (:meth:`compress`); the metrics gain its parameter count, sparsity
        and size on disk (and the teacher's parameter count when distilling).
        """
        store = self.store
        if self.keyring is None or store is None:
            return None
        settings = self.settings
        model, version = settings.model_name, settings.model_version
        if store.has_version(model, version):
            # A restart after a publication that completed: finish the job with that version. LATEST
            # only moves forward, so a late restart of an old job does not take it back.
            log.info("version %s already published: reusing it", version)
            store.advance_latest(model, version)
            self.published = store.resolve(model, version).manifest
            return self.published
        compressed = module if isinstance(module, Compressed) else self.compress(module)
        # Plaintext stays on the pod's scratch disk, never on the shared store.
        with tempfile.TemporaryDirectory(prefix="kubemaas-export-") as scratch:
            plaintext = export_torchscript(compressed, example_input, Path(scratch) / "model.pt")
            all_metrics = {
                **metrics,
                **self.compression_metrics(compressed, plaintext.stat().st_size),
                "resumedFromStep": float(self.resumed_from_step),
            }
            published = store.publish(
                plaintext,
                model=model,
                version=version,
                key=self.keyring.active_key(),
                key_id=self.keyring.active_id,
                inputs=inputs,
                outputs=outputs,
                quantization=settings.quantization,
                frameworks={"torch": torch.__version__, "python": sys.version.split()[0]},
                metrics=all_metrics,
            )
        store.remove_leftovers(model)
        manifest: Manifest = published.manifest
        log.info("published %s version %s (sha256 %s)", model, version, manifest.sha256)
        self.published = manifest
        return manifest

    def result_message(self) -> SuccessMessage | None:
        return None if self.published is None else SuccessMessage.of(self.settings.output_uri, self.published)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    assert isinstance(inner, torch.nn.Module)
    return inner


# ---------------------------------------------------------------------- entry point


def classify(exc: BaseException) -> ExitCode:
    """The exit code of a failure; its termination reason is ``REASONS[code]`` unless it has a cause."""
    cause = cause_of(exc)
    if cause is not None:
        return cause.exit_code
    if isinstance(exc, Preempted):
        return ExitCode.PREEMPTED
    if isinstance(exc, ObjectStoreUnavailableError):  # the endpoint kept failing: a restart may find it back
        return ExitCode.RETRYABLE
    if isinstance(exc, ContractError | OutputNotMountedError | KeyringError):
        return ExitCode.CONFIG
    if isinstance(exc, VersionExistsError | ArtifactIntegrityError):
        return ExitCode.ARTIFACT
    # What the store's (untrusted) writers left: a link or special file, a LATEST or manifest that is not one.
    if isinstance(exc, UnsafeEntryError | InvalidLatestError | InvalidManifestError):
        return ExitCode.ARTIFACT
    if isinstance(exc, ArtifactStoreError):
        return ExitCode.CONFIG
    if isinstance(exc, dist.DistError | OSError):
        return ExitCode.RETRYABLE
    if isinstance(exc, RuntimeError) and _looks_like_lost_peer(exc):
        return ExitCode.RETRYABLE
    return ExitCode.FAILED


def cause_of(exc: BaseException) -> Cause | None:
    """A failure's own cause (e.g. TamperedData), more precise than its exit code's reason."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Cause) else None


def _looks_like_lost_peer(exc: RuntimeError) -> bool:
    # gloo reports a dead peer as a plain RuntimeError from its transport layer.
    text = str(exc).lower()
    return any(marker in text for marker in ("gloo", "connection reset", "connection closed", "broken pipe"))


def _fail(exc: BaseException, termination_log: Path, rank: int | None) -> ExitCode:
    code = classify(exc)
    reason = str(cause_of(exc) or REASONS[code])
    log_fn = log.warning if code.retryable else log.error
    who = "rank ?" if rank is None else f"rank {rank}"
    log_fn("%s exits %d (%s): %s", who, code, reason, exc, exc_info=code is ExitCode.FAILED)
    message = FailureMessage(reason=reason, exit_code=code, message=str(exc), rank=rank)
    termination.write(termination_log, message)
    return code


def run(train: Callable[[Harness], None], environ: Mapping[str, str]) -> int:
    """Run ``train`` under the harness and return the process exit code.

    ``environ`` is parsed here, once (kubemaas.contract); everything below gets typed values.
    """
    coredumps.disable_core_dumps()  # rank 0 holds the key and plaintext checkpoints; every rank holds the weights
    try:
        env = contract.parse(environ)
    except ContractError as error:
        _configure_logging(contract.LogLevel.INFO, None)
        return _fail(error, error.termination_log, error.rank)
    _configure_logging(env.settings.log_level, env.process.rank)
    harness: Harness | None = None
    try:
        harness = Harness(env)
        harness.start()
        train(harness)
        harness.finish()
        result = harness.result_message()
        if result is not None:
            termination.write(env.settings.termination_log, result)
        return ExitCode.OK
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return _fail(exc, env.settings.termination_log, env.process.rank)
    finally:
        if harness is not None:
            harness.close()


def _configure_logging(level: contract.LogLevel, rank: int | None) -> None:
    logging.basicConfig(
        level=level.value,
        format=f"%(asctime)s rank{'?' if rank is None else rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(train: Callable[[Harness], None]) -> NoReturn:
    code = run(train, os.environ)
    # Decided: leave, logs flushed, without the interpreter's finalization, where a native thread torch left behind
    # can std::terminate() and turn a finished rank into exit 134 (docs/runtime-contract.md §7, "Leaving").
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
