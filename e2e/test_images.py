"""The node's images without a cluster: each built image's contract, in a private containerd.

A containerd of the test's own (its own root, state and socket; CRI disabled) imports the archives that
e2e/cluster/images.py builds, exactly as the node does, and runs them with `ctr`. Needs root and
Debian's containerd and runc (the node's packages); skips, saying so, without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import images, processes

CONTAINERD_CONFIG = """version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages; the real node installs them)")


@pytest.fixture(scope="module")
def ctr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """`ctr` talking to a private containerd; yields the command prefix the node code passes too."""
    _need("containerd", "ctr", "runc")
    root = tmp_path_factory.mktemp("containerd")
    (root / "config.toml").write_text(CONTAINERD_CONFIG.format(root=root))
    prefix = ["ctr", "--address", str(root / "containerd.sock")]
    containerd = shutil.which("containerd")
    assert containerd is not None
    running, process = processes.start(
        "containerd", Path(containerd), ["--config", str(root / "config.toml")], root, []
    )

    def answers() -> bool:
        return subprocess.run([*prefix, "version"], capture_output=True).returncode == 0

    try:
        processes.wait_ready(running, process, answers, timeout=30)
        yield prefix
    finally:
        processes.stop(running)
        # A container a failed test left behind keeps its rootfs mounted; a lazy unmount frees the directory.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _catches(pid: int, *signals: signal.Signals) -> bool:
    """True once the process has installed handlers for all these signals (SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return all(caught & (1 << (s - 1)) for s in signals)


def _pause_binary(tmp_path: Path) -> Path:
    """The /pause program out of the built image's layer."""
    import tarfile

    archive = images.ensure_image("pause")
    with tarfile.open(archive) as tar:
        layers = [m for m in tar.getmembers() if m.name.startswith("blobs/") and m.size > 100_000]
        assert len(layers) == 1, "the pause image is one layer holding one static binary"
        layer = tar.extractfile(layers[0])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            inner.extract("pause", tmp_path, filter="data")
    return tmp_path / "pause"


@pytest.mark.parametrize("init", ["pause", "sleep"])
def test_pause_as_pid_1_reaps_orphans(tmp_path: Path, init: str) -> None:
    """Orphans of a pod's PID namespace become pause's children; pause reaps them (control: sleep does not)."""
    _need("unshare", "nsenter")
    program = [str(_pause_binary(tmp_path))] if init == "pause" else ["sleep", "600"]
    running, process = processes.start(
        f"{init}-init", Path("/usr/bin/unshare"), ["--pid", "--fork", "--kill-child", *program], tmp_path, []
    )
    try:
        processes.wait_ready(running, process, lambda: len(_children(process.pid)) == 1, timeout=10)
        (init_pid,) = _children(process.pid)
        if init == "pause":
            processes.wait_ready(
                running, process, lambda: _catches(init_pid, signal.SIGTERM, signal.SIGCHLD), timeout=10
            )
        # Three short-lived processes whose parent exits first: the kernel re-parents them to PID 1.
        orphans = "for i in 1 2 3; do /bin/sleep 0 & done; exit 0"
        subprocess.run(["nsenter", "--target", str(init_pid), "--pid", "--", "sh", "-c", orphans], check=True)

        def zombies() -> int:
            return sum(_state(c) == "Z" for c in _children(init_pid))

        if init == "pause":
            processes.wait_ready(running, process, lambda: not _children(init_pid), timeout=10)
        else:
            processes.wait_ready(running, process, lambda: zombies() == 3, timeout=10)
        os.kill(init_pid, signal.SIGTERM)
        if init == "pause":
            assert process.wait(timeout=10) == 0, "pause exits 0 on SIGTERM"
    finally:
        processes.stop(running, grace=2)


def test_pause_image_runs_in_containerd_and_stops_on_sigterm(ctr: list[str]) -> None:
    names = images.import_images([images.ensure_image("pause")], ctr)
    assert names == [images.PAUSE_IMAGE]
    k8s = [*ctr, "-n", images.CRI_NAMESPACE]
    run = subprocess.Popen(
        [*k8s, "run", "--rm", images.PAUSE_IMAGE, "pause-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def task_pid() -> int | None:
            listed = subprocess.run([*k8s, "task", "ls"], capture_output=True, text=True).stdout.split()
            return int(listed[listed.index("pause-test") + 1]) if "pause-test" in listed else None

        running = processes.Running("ctr run", run.pid, "ctr", "/dev/null", [])
        try:
            processes.wait_ready(
                running, run, lambda: (p := task_pid()) is not None and _catches(p, signal.SIGTERM), timeout=30
            )
        except processes.ComponentError as error:
            output = run.stdout.read() if run.stdout and run.poll() is not None else b""
            pytest.fail(f"{error}\n{output.decode(errors='replace')}")
        pid = task_pid()
        assert pid is not None
        uid_line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
        assert uid_line.split()[1:] == ["65535"] * 4, "the image's numeric non-root user"
        subprocess.run([*k8s, "task", "kill", "--signal", "SIGTERM", "pause-test"], check=True)
        output, _ = run.communicate(timeout=30)
        assert run.returncode == 0, output.decode(errors="replace")
    finally:
        if run.poll() is None:
            subprocess.run([*k8s, "task", "kill", "--signal", "SIGKILL", "pause-test"], capture_output=True)
            run.wait(timeout=30)
