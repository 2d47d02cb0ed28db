"""Run the real ``tritonserver`` binary shipped in the nvidia-pytriton wheel against a model repository.

How the binary is found and run (measured on the build machines; README.md, "Serving path"):

* ``pytriton/tritonserver/`` in site-packages holds ``bin/tritonserver`` and ``backends/python/``;
  the Python-backend stub for the running interpreter is in ``python_backend_stubs/<major.minor>/``.
  We assemble a backend directory ``<workdir>/backends/python/`` from copies of both.
* ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries (``site-packages/nvidia_pytriton.libs``) and
  the running Python's ``LIBDIR``; without the latter the stub links Debian's older libpython and dies.
* The stub runs ``model.py`` in an embedded interpreter of the same Python version. It sees this
  virtualenv's packages (torch, numpy) because ``PYTHONPATH`` is set to the venv's site-packages on
  the server process, which the stub inherits. We chose PYTHONPATH over an ``EXECUTION_ENV_PATH``
  conda-pack tarball: the test needs exactly the packages already installed here, and packing a
  multi-GB torch environment per run would dominate the suite's time.

The server runs in its own process group, so stopping it (SIGTERM, then SIGKILL after a grace period)
also ends the stub processes it spawned; no process is left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from e2e.cluster.processes import free_port


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the nvidia-pytriton wheel."""

    root: Path

    @classmethod
    def find(cls) -> TritonInstall:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("nvidia-pytriton is not installed (pip install '.[serving]')")
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        install = cls(root)
        for path in (install.binary, install.python_backend, install.python_stub, install.bundled_libs):
            if not path.exists():
                raise FileNotFoundError(f"nvidia-pytriton wheel lacks {path}")
        return install

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def python_stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"

    @property
    def bundled_libs(self) -> Path:
        # auditwheel puts the wheel's shared libraries next to the package, not inside it.
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def make_backend_directory(self, dest: Path) -> Path:
        """Create ``dest/python`` with the Python backend and the stub for this interpreter."""
        python_dir = dest / "python"
        shutil.copytree(self.python_backend, python_dir, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(self.python_stub, python_dir / "triton_python_backend_stub")
        return dest

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        lib_dirs = [str(self.bundled_libs), str(sysconfig.get_config_var("LIBDIR"))]
        if env.get("LD_LIBRARY_PATH"):
            lib_dirs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
        site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        env["PYTHONPATH"] = os.pathsep.join(sorted(site_packages))
        # The stub must not pick up a venv activation or user site that differs from ours.
        env.pop("PYTHONHOME", None)
        return env


class TritonServer:
    """One tritonserver process serving ``model_repository``; use as a context manager."""

    def __init__(
        self,
        model_repository: Path,
        workdir: Path,
        *,
        install: TritonInstall | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.model_repository = model_repository
        self.workdir = workdir
        self.install = install or TritonInstall.find()
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.log_path = workdir / "tritonserver.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self, backend_directory: Path) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backend_directory}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            # No GPU on CI: skip the pinned/CUDA pools so startup does not warn or wait on CUDA.
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=10",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        backends = self.install.make_backend_directory(self.workdir / "backends")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self.install.environment(), **self.env},
                start_new_session=True,  # own process group: stop() reaches the python stubs too
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with {self._process.returncode} before ready:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise TritonStartError(f"tritonserver not ready after {self.ready_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM to the server alone: it unloads the models and stops its stubs itself.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # The stubs share the group; make sure none outlives the server.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
