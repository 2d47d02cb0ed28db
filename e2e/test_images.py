"""The node's images without Kubernetes: each built image's contract, run with `ctr`.

The containers run in the local real node's containerd when the run has one (`make e2e`: its images are
imported there already, and a second containerd would hold a second copy of ~13 GB), else in a containerd of
the test's own (its own root, state and socket; CRI disabled) that imports the images e2e/cluster/images.py
builds, exactly as the node does. Needs root and Debian's containerd and runc (the node's packages); skips,
saying so, without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import control_plane, images, node, processes
from e2e.conftest import SERIAL_NODE_CONTAINERS

# Containers by fixed names in the node's containerd, and one module-scoped `ctr`: one worker runs them all.
pytestmark = SERIAL_NODE_CONTAINERS

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


# The names this module's containers run under, so that cleaning up in the node's containerd ends only these
# and never a pod's container.
TEST_CONTAINERS = ("pause-test", "contract-", "trainer-rank-", "serving-")


def _end_test_containers(prefix: list[str]) -> None:
    """End the containers a failed test left running (each keeps a shim process alive)."""
    k8s = [*prefix, "-n", images.CRI_NAMESPACE]
    tasks = subprocess.run([*k8s, "task", "ls", "-q"], capture_output=True, text=True).stdout.split()
    for task in (t for t in tasks if t.startswith(TEST_CONTAINERS)):
        subprocess.run([*k8s, "task", "delete", "--force", task], capture_output=True)
        subprocess.run([*k8s, "container", "delete", task], capture_output=True)


def _local_node_ctr() -> list[str] | None:
    """`ctr` against the local real node's containerd, when this run started one and it answers."""
    cluster = control_plane.load()
    if cluster is None or not cluster.node_ip:
        return None
    prefix = node.ctr_command(node.NodePaths(cluster.root))
    return prefix if subprocess.run([*prefix, "version"], capture_output=True).returncode == 0 else None


@pytest.fixture(scope="module")
def ctr(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """`ctr` talking to the real node's containerd or a private one; yields the command prefix the node code
    passes too."""
    _need("containerd", "ctr", "runc")
    if os.environ.get("KUBEMAAS_E2E_REAL_NODE") == "1":
        request.getfixturevalue("node_images")  # the session's cluster with its node, images imported
    shared = _local_node_ctr()
    if shared is not None:
        try:
            yield shared
        finally:
            _end_test_containers(shared)
        return
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
        _end_test_containers(prefix)
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

    layout = images.ensure_image("pause")
    (layer,) = images.layout_layers(layout)
    with tarfile.open(images.layout_blob(layout, layer[0])) as tar:
        assert tar.getnames() == ["pause"], "the pause image is one layer holding one static binary"
        tar.extract("pause", tmp_path, filter="data")
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


# ---------------------------------------------------------------------------------------------------------------
# The images built from images/*/Dockerfile: their contract, run as the node runs them


_imported: set[tuple[str, Path]] = set()


def run_image(
    ctr: list[str],
    name: str,
    args: list[str],
    *,
    entrypoint: list[str] | None = None,
    mounts: tuple[str, ...] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the built image `name` like a restricted pod: its own user, read-only root, /tmp a tmpfs.

    args replace the image's CMD and keep its ENTRYPOINT (unless `entrypoint` replaces it), as a container's
    `args` and `command` do in Kubernetes.
    """
    layout = images.ensure_image(name)
    (ref,) = images.layout_refs(layout)
    if (ctr[-1], layout) not in _imported:
        images.import_images([layout], ctr)
        _imported.add((ctr[-1], layout))
    if entrypoint is None:
        entrypoint = images.layout_config(layout)["config"].get("Entrypoint", [])
    tmpfs = "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777"
    mount_flags = [flag for m in (tmpfs, *mounts) for flag in ("--mount", m)]
    command = [*ctr, "-n", images.CRI_NAMESPACE, "run", "--rm", "--read-only", *mount_flags, ref]
    return subprocess.run(
        [*command, f"contract-{name}", *entrypoint, *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", list(images.DOCKERFILE_IMAGES))
def test_image_config_is_what_the_chart_and_pod_security_expect(name: str) -> None:
    image = images.DOCKERFILE_IMAGES[name]
    layout = images.ensure_image(name)
    assert images.layout_refs(layout) == [images.normalize_ref(image.ref)]
    config = images.layout_config(layout)["config"]
    assert config["User"] == "65532:65532", "numeric non-root user: runAsNonRoot can check it without /etc/passwd"
    assert config["WorkingDir"] == "/tmp"
    assert "HOME=/tmp" in config["Env"] and "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    # Every image starts from the same base layer, stored once by containerd.
    base_layer = images.layout_layers(images.ensure_image("base"))[0]
    assert images.layout_layers(layout)[0] == base_layer


def test_operator_image_runs_its_cli_read_only_as_65532(ctr: list[str]) -> None:
    done = run_image(ctr, "operator", ["run", "--help"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--standalone" in done.stdout
    # The controllers import (kopf, kubernetes, aiohttp) with no bytecode written to the read-only root.
    probe = "import os, kopf, kubernetes, kubemaas.controllers; print(os.getuid(), os.getgid())"
    done = run_image(ctr, "operator", ["-c", probe], entrypoint=["python"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["65532", "65532"]


def test_model_loader_image_decrypts_a_real_artifact_read_only(ctr: list[str], tmp_path: Path) -> None:
    import hashlib
    import json

    from kubemaas.runtime.artifacts import ArtifactStore, TensorSpec
    from kubemaas.runtime.keyring import generate_key, write_keyring_dir
    from kubemaas.runtime.termination import SuccessMessage, parse_termination

    plaintext = tmp_path / "model.pt"
    plaintext.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # not a multiple of any chunk size
    key = generate_key()
    store = ArtifactStore(tmp_path / "store")
    spec = [TensorSpec(name="pixels", datatype="FP32", dims=[64])]
    store.publish(plaintext, model="digits", version="v1", key=key, key_id="k1", inputs=spec, outputs=spec)
    keys = write_keyring_dir(tmp_path / "keys", {"k1": key}, "k1")
    models = tmp_path / "models"
    models.mkdir()
    termination = tmp_path / "termination-log"
    termination.touch()
    # What a pod gets: a store the trainer (the same uid) wrote, the key Secret readable by the pod's user
    # (fsGroup), an emptyDir it owns.
    for path in (*store.root.rglob("*"), store.root, keys, *keys.iterdir(), models, termination):
        os.chown(path, 65532, 65532)
    done = run_image(
        ctr,
        "model-loader",
        [
            "--store-uri=file:///store",
            "--model=digits",
            "--key-dir=/keys",
            "--repository=/models",
            "--termination-log=/termination-log",
            "--backend=python",
            "--instance-kind=CPU",
        ],
        mounts=(
            f"type=bind,src={store.root},dst=/store,options=rbind:ro",
            f"type=bind,src={keys},dst=/keys,options=rbind:ro",
            f"type=bind,src={models},dst=/models,options=rbind:rw",
            f"type=bind,src={termination},dst=/termination-log,options=rbind:rw",
        ),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = json.loads((store.root / "digits" / "v1" / "manifest.json").read_text())
    loaded = (models / "digits" / "1" / "model.pt").read_bytes()
    assert (
        hashlib.sha256(loaded).hexdigest() == manifest["sha256"] == hashlib.sha256(plaintext.read_bytes()).hexdigest()
    )
    assert (models / "digits" / "1" / "model.pt").stat().st_uid == 65532
    result = parse_termination(termination.read_bytes())
    assert isinstance(result, SuccessMessage) and result.version == "v1"


def test_trainer_image_trains_two_gloo_ranks_and_publishes_read_only(ctr: list[str], tmp_path: Path) -> None:
    """The example as the Job backend runs it: 2 pods x 1 process, the operator's env, read-only root."""
    import json

    from kubemaas.contract import Rendezvous, Settings, render
    from kubemaas.runtime.keyring import write_keyring_dir
    from tests.runtime.trainer_launch import KEY, example_args, kubelet_env

    store = tmp_path / "store"
    store.mkdir()
    keys = write_keyring_dir(tmp_path / "keys", {"k1": KEY}, "k1")
    terminations = [tmp_path / f"termination-{rank}" for rank in range(2)]
    for path in terminations:
        path.touch()  # the kubelet's per-container termination-message file
    # The pods' uid owns the store (a PVC the trainer writes) and reads the key Secret (fsGroup).
    for path in (store, keys, *keys.iterdir(), *terminations):
        os.chown(path, 65532, 65532)
    settings = Settings(
        model_name="digits",
        model_version="v1",
        output_uri="file:///store",
        key_dir=Path("/keys"),
        termination_log=Path("/termination-log"),
        dist_timeout_seconds=120,
    )
    rendezvous = Rendezvous(master_addr="127.0.0.1", master_port=processes.free_port(), nnodes=2, nproc_per_node=1)
    layout = images.ensure_image("trainer")
    (ref,) = images.layout_refs(layout)
    images.import_images([layout], ctr)
    entrypoint = images.layout_config(layout)["config"]["Entrypoint"]
    tmpfs = "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:mode=1777"
    procs = []
    try:
        for rank in range(2):
            env = kubelet_env(render(settings, rendezvous), rank)
            env["OMP_NUM_THREADS"] = "1"
            mounts = [
                tmpfs,
                f"type=bind,src={store},dst=/store,options=rbind:rw",
                f"type=bind,src={keys},dst=/keys,options=rbind:ro",
                f"type=bind,src={terminations[rank]},dst=/termination-log,options=rbind:rw",
            ]
            command = [*ctr, "-n", images.CRI_NAMESPACE, "run", "--rm", "--read-only", "--net-host"]
            command += [flag for m in mounts for flag in ("--mount", m)]
            command += [flag for k, v in sorted(env.items()) for flag in ("--env", f"{k}={v}")]
            command += [ref, f"trainer-rank-{rank}", *entrypoint, *example_args()]
            procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    finally:
        for rank, proc in enumerate(procs):
            if proc.poll() is None:
                kill = [*ctr, "-n", images.CRI_NAMESPACE, "task", "kill", "--signal", "SIGKILL", f"trainer-rank-{rank}"]
                subprocess.run(kill, capture_output=True)
                proc.wait(timeout=60)
    assert [proc.returncode for proc in procs] == [0, 0], "\n\n".join(outputs)
    result = json.loads(terminations[0].read_text())
    assert result["metrics"]["heldOutAccuracy"] >= 0.90, result
    assert (store / "digits" / "v1" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Serving: the operator's own pod template, run container by container as a kubelet would


def _kubelet_argv(container: dict[str, Any], image_config: dict[str, Any]) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT, `args` replace CMD (and CMD goes when command is set)."""
    command = container.get("command") or image_config.get("Entrypoint") or []
    args = container.get("args") if "args" in container or "command" in container else image_config.get("Cmd")
    return [*command, *(args or [])]


def _pod_container_command(
    ctr: list[str], pod: dict[str, Any], container: dict[str, Any], volumes: dict[str, Path], task: str
) -> list[str]:
    """`ctr run` for one container of a pod template: its image, argv, env, volume mounts and read-only root.

    volumes: host directories for the pod's volumes by name; the others (emptyDirs) become tmpfs mounts.
    """
    layout = images.ensure_image(next(n for n, i in images.DOCKERFILE_IMAGES.items() if i.ref == container["image"]))
    (ref,) = images.layout_refs(layout)
    if (ctr[-1], layout) not in _imported:
        images.import_images([layout], ctr)
        _imported.add((ctr[-1], layout))
    config = images.layout_config(layout)["config"]
    # ctr runs the image's USER; the pod's runAsUser must be that user for this to be the pod's process.
    security = pod["spec"]["securityContext"]
    assert config["User"] == f"{security['runAsUser']}:{security['runAsGroup']}", "image user != pod user"
    command = [*ctr, "-n", images.CRI_NAMESPACE, "run", "--rm"]
    if container["securityContext"].get("readOnlyRootFilesystem"):
        command.append("--read-only")
    for mount in container.get("volumeMounts", []):
        options = "rbind:ro" if mount.get("readOnly") else "rbind:rw"
        if mount["name"] in volumes:
            command += ["--mount", f"type=bind,src={volumes[mount['name']]},dst={mount['mountPath']},options={options}"]
        else:
            command += ["--mount", f"type=tmpfs,src=tmpfs,dst={mount['mountPath']},options=rw:nosuid:nodev:mode=1777"]
    for entry in container.get("env", []):
        command += ["--env", f"{entry['name']}={entry['value']}"]
    return [*command, ref, task, *_kubelet_argv(container, config)]


def test_serving_pod_loads_and_triton_python_answers_kserve_v2(ctr: list[str], tmp_path: Path) -> None:
    """The operator's ModelService pod on CPU: the loader decrypts, tritonserver (python backend) answers."""
    import json

    import torch
    import yaml

    from kubemaas.api import ModelService
    from kubemaas.controllers.modelservice import parent_for, serving_options
    from kubemaas.manifests import modelservice as m
    from kubemaas.runtime.artifacts import ArtifactStore
    from kubemaas.runtime.keyring import generate_key, write_keyring_dir
    from tests.serving.conftest import INPUTS, OUTPUTS, make_mlp, save_torchscript

    # A real TorchScript model (the digits signature), encrypted into a store as the trainer publishes it.
    model = make_mlp(seed=0)
    plaintext = save_torchscript(model, tmp_path / "model.pt")
    key = generate_key()
    store = ArtifactStore(tmp_path / "claim" / "store")
    store.publish(plaintext, model="digits", version="v1", key=key, key_id="k1", inputs=INPUTS, outputs=OUTPUTS)
    keys = write_keyring_dir(tmp_path / "keys", {"k1": key}, "k1")
    repository = tmp_path / "repository"
    repository.mkdir()
    for path in (*(tmp_path / "claim").rglob("*"), tmp_path / "claim", keys, *keys.iterdir(), repository):
        os.chown(path, 65532, 65532)

    # The pod template the operator builds for the example, served on CPU by the python backend.
    body = yaml.safe_load((images.REPO / "examples" / "modelservice-digits.yaml").read_text())
    body["metadata"].update(namespace="default", uid="uid-1")
    body["spec"]["runtime"] = {"backend": "python", "image": "kubemaas/triton-python:24.10",
                               "instanceGroup": {"count": 1, "kind": "CPU"}}  # fmt: skip
    body["spec"]["resources"] = {"cpu": "1", "memory": "2Gi"}
    ms = ModelService.parse(body)
    ref = m.ModelRef(store_uri="pvc://models/store", model="digits", version="v1", key_secret="k", source="s")
    pod = m.pod_template(ms.spec, parent_for(body), ref, serving_options(ms), m.Track.STABLE)
    volumes = {"model-store": tmp_path / "claim", "model-key": keys, "model-repository": repository}
    (loader,) = pod["spec"]["initContainers"]
    (server,) = pod["spec"]["containers"]

    done = subprocess.run(
        _pod_container_command(ctr, pod, loader, volumes, "serving-loader"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (repository / "digits" / "1" / "model.pt").read_bytes() == plaintext.read_bytes()

    k8s = [*ctr, "-n", images.CRI_NAMESPACE]
    triton = subprocess.Popen(
        _pod_container_command(ctr, pod, server, volumes, "serving-triton"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    probes = iter(range(1_000_000))

    def in_pod(code: str, *, prints: bool = False) -> subprocess.CompletedProcess[str]:
        """Run Python in the server's container (its network namespace: the pod's localhost). With `prints`, a
        run that succeeded without any output is run again: `ctr task exec` can exit before it has copied the
        process's output from its FIFO (seen once in a cold CI run: exit 0, empty stdout)."""
        for _ in range(3):
            exec_id = f"probe-{next(probes)}"
            done = subprocess.run(
                [*k8s, "task", "exec", "--exec-id", exec_id, "serving-triton", "python", "-c", code],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if not prints or done.returncode != 0 or done.stdout.strip():
                break
        return done

    ready = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{m.HTTP_PORT}/v2/health/ready')"
    try:
        running = processes.Running("ctr run triton", triton.pid, "ctr", "/dev/null", [])
        try:
            processes.wait_ready(running, triton, lambda: in_pod(ready).returncode == 0, timeout=240)
        except processes.ComponentError as error:
            output = triton.stdout.read() if triton.stdout and triton.poll() is not None else b""
            pytest.fail(f"{error}\n{output.decode(errors='replace')}")
        x = torch.rand(3, 64)
        request = {"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": x.flatten().tolist()}]}
        infer = (
            "import json, sys, urllib.request; "
            f"r = urllib.request.Request('http://127.0.0.1:{m.HTTP_PORT}/v2/models/digits/infer', "
            f"data={json.dumps(request)!r}.encode(), headers={{'Content-Type': 'application/json'}}); "
            "print(urllib.request.urlopen(r).read().decode())"
        )
        answer = in_pod(infer, prints=True)
        assert answer.returncode == 0, answer.stderr
        (output,) = json.loads(answer.stdout)["outputs"]
        assert output["name"] == "logits" and output["shape"] == [3, 10]
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.tensor(output["data"]).reshape(3, 10), expected, rtol=1e-4, atol=1e-5)
        # The server (pid 1: the pod's command execs it) holds the decrypted model: it may not dump core.
        limits = in_pod("print(open('/proc/1/limits').read()); print(open('/proc/1/comm').read())", prints=True)
        assert limits.returncode == 0, limits.stderr
        assert limits.stdout.split()[-1] == "tritonserver", limits.stdout
        (core,) = [line.split()[-3:-1] for line in limits.stdout.splitlines() if line.startswith("Max core file size")]
        assert core == ["0", "0"], limits.stdout
    finally:
        subprocess.run([*k8s, "task", "kill", "--signal", "SIGTERM", "serving-triton"], capture_output=True)
        try:
            triton.wait(timeout=60)
        except subprocess.TimeoutExpired:
            subprocess.run([*k8s, "task", "kill", "--signal", "SIGKILL", "serving-triton"], capture_output=True)
            triton.wait(timeout=60)
