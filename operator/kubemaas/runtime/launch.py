"""``python -m kubemaas.runtime.launch``: torchrun, keeping the runtime contract's exit codes.

A training pod runs ``nprocPerNode`` processes under this launcher (see
:func:`kubemaas.contract.launch_command` and docs/runtime-contract.md §1). It takes torchrun's
own arguments and runs torchrun's own launcher (``torch.distributed.run``: one agent per pod,
static rendezvous on ``--master-addr``/``--master-port``, node rank ``--node-rank``); every
argument not given falls back to torchrun's ``PET_*`` variable, which Kubeflow and the Job
backend set.

What it adds is the exit code. torchrun exits 1 whenever a worker fails, which Kubeflow's
``ExitCode`` restart policy and the Job backend's podFailurePolicy read as permanent, so a lost
peer (138) or a preemption (143) would never be retried. The launcher exits with the code of the
first worker's failure instead: the one its termination message names (the first message written
wins, see kubemaas.contract.termination), else the first failure torchrun saw (a signal N becomes
128 + N). A failure of the agent itself (rendezvous with the other pods timed out, the master
pod gone) is retryable.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args
from torch.distributed.run import run as torchrun

from kubemaas import contract
from kubemaas.contract import termination
from kubemaas.contract.termination import ExitCode, FailureMessage, InvalidTerminationMessage
from kubemaas.runtime import coredumps
from kubemaas.runtime.trainer import REASONS

log = logging.getLogger("kubemaas.launch")


def exit_code_of(failed: ChildFailedError, termination_log: Path) -> int:
    """The first worker failure's exit code: its termination message's, else torchrun's record of it."""
    try:
        message = termination.parse_termination(termination_log.read_bytes())
    except (OSError, InvalidTerminationMessage):
        message = None
    if isinstance(message, FailureMessage):
        return int(message.exit_code)
    _, first = failed.get_first_failure()
    return 128 - first.exitcode if first.exitcode < 0 else first.exitcode


def _unexpanded(argv: Sequence[str]) -> list[str]:
    # Kubernetes leaves $(VAR) as written when VAR is not in the container's env.
    return [arg for arg in argv if "$(" in arg]


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    coredumps.disable_core_dumps()  # inherited by every worker torchrun starts: they hold the key and the weights
    termination_log = contract.termination_log(environ)
    if unexpanded := _unexpanded(argv):
        return _fail(
            termination_log,
            ExitCode.CONFIG,
            f"launcher arguments name variables the pod does not set: {' '.join(unexpanded)}",
        )
    try:
        args = parse_args(list(argv))  # type: ignore[no-untyped-call]
    except SystemExit as exited:  # argparse already printed why
        return _fail(termination_log, ExitCode.CONFIG, f"invalid launcher arguments (exit {exited})")
    try:
        torchrun(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as failed:
        code = exit_code_of(failed, termination_log)
        log.warning("a worker failed: exiting %d", code)
        return code
    except SignalException as signalled:
        # The agent forwarded the signal to the workers and waited for them: on SIGTERM they agreed
        # on a step, rank 0 wrote a checkpoint, and each wrote its termination message.
        return 128 + int(signalled.sigval)
    except Exception as error:  # the agent's own rendezvous or store: the other pods are not (yet) there
        return _fail(termination_log, ExitCode.RETRYABLE, f"{type(error).__name__}: {error}")
    return ExitCode.OK


def _fail(termination_log: Path, code: ExitCode, text: str) -> int:
    log.error("kubemaas launch: %s", text)
    termination.write(termination_log, FailureMessage(reason=REASONS[code], exit_code=code, message=text))
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:], os.environ))
