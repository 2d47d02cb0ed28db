"""Training progress, served by rank 0 for the operator to read (docs/runtime-contract.md §10).

The program reports once per step (``harness.report_progress(step, total_steps, loss=..., samples=...)``);
rank 0 keeps the newest report with what it derives (steps and samples per second over a sliding window,
the ETA, the last checkpoint) and answers ``GET /progress`` on ``KUBEMAAS_PROGRESS_PORT`` with it as JSON.

Why the operator pulls instead of the pod pushing: a pull needs no credentials in the pod (no token, no
write access to the API, nothing to authenticate), the operator alone decides how often it writes the status
(at most once per 10 s per job, whatever the step rate), and after an operator restart the next pull reads
the pod's current state, so nothing is lost or stale. The endpoint answers nothing but this document: a
step counter, a loss, the program's own metric names and values.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/progress"
# Throughput over the last steps of this window: recent enough to follow a change of pace, long enough
# to smooth a step's jitter.
WINDOW_SECONDS = 60.0
MAX_METRICS = 16


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Progress:
    """Rank 0's view of the run, updated by the training thread and read by the server's threads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int, int]] = deque()  # (time, step, samples so far)
        self._samples = 0
        self._document: dict[str, Any] = {}
        self._checkpoint: dict[str, Any] | None = None

    def report(
        self,
        step: int,
        total_steps: int,
        *,
        loss: float | None = None,
        samples: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        now = self._clock()
        with self._lock:
            self._samples += samples
            if self._window and step < self._window[-1][1]:
                self._window.clear()  # the step went back (a restart from a checkpoint): a new pace
            self._window.append((now, step, self._samples))
            while len(self._window) > 2 and now - self._window[0][0] > WINDOW_SECONDS:
                self._window.popleft()
            document: dict[str, Any] = {"step": step, "totalSteps": total_steps, "updateTime": _iso(now)}
            if loss is not None and math.isfinite(loss):
                document["loss"] = float(loss)
            kept = {k: float(v) for k, v in sorted((metrics or {}).items()) if math.isfinite(v)}
            if kept:
                document["metrics"] = dict(list(kept.items())[:MAX_METRICS])
            first_time, first_step, first_samples = self._window[0]
            elapsed = now - first_time
            if elapsed > 0 and step > first_step:
                steps_per_second = (step - first_step) / elapsed
                document["stepsPerSecond"] = steps_per_second
                document["samplesPerSecond"] = (self._samples - first_samples) / elapsed
                document["etaSeconds"] = max(0.0, (total_steps - step) / steps_per_second)
            if self._checkpoint is not None:
                document["lastCheckpoint"] = self._checkpoint
            self._document = document

    def checkpointed(self, step: int, at: float | None = None) -> None:
        """A checkpoint of ``step`` was written (at ``at``, default now; a resumed run names the one it read)."""
        with self._lock:
            self._checkpoint = {"step": step, "time": _iso(self._clock() if at is None else at)}
            if self._document:
                self._document["lastCheckpoint"] = self._checkpoint

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._document)


class ProgressServer:
    """``GET /progress`` on ``port`` (all interfaces: the operator reaches the pod by its IP), in a daemon thread."""

    def __init__(self, progress: Progress, port: int, host: str = "0.0.0.0") -> None:
        snapshot = progress.snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != PATH:
                    self.send_error(404)
                    return
                body = json.dumps(snapshot(), separators=(",", ":"), sort_keys=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per poll would drown the training log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kubemaas-progress", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProgressServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
