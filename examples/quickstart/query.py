"""Ask the quickstart's ModelService for predictions over KServe v2 and print the held-out accuracy.

    python examples/quickstart/query.py [--namespace default] [--name digits]

(`make query` runs it with the project's virtualenv and the local cluster's kubeconfig.) It reaches the
ModelService's Service through `kubectl port-forward` (any cluster, no Ingress needed), sends the digits the
trainer held out (examples/training/digits_mlp.py's own split, so the accuracy is comparable with the
`heldOutAccuracy` the TrainingJob published) in batches with tritonclient, and prints the first predictions
and the accuracy over all of them. Exit status 1 when the model does not answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from sklearn.datasets import load_digits

EXAMPLE = Path(__file__).resolve().parent.parent / "training" / "digits_mlp.py"
BATCH = 8  # within the quickstart model's maxBatchSize
HTTP_PORT = 8000


def held_out() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The images digits_mlp.py held out from training (its own split function), scaled as it scales them."""
    spec = importlib.util.spec_from_file_location("digits_mlp", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    images, labels = load_digits(return_X_y=True)
    _, holdout = example.split(len(images))
    return (images[holdout] / 16.0).astype(np.float32), labels[holdout]


def kubectl(*args: str) -> str:
    binary = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True).stdout


@contextmanager
def port_forward(namespace: str, service: str, port: int) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local = int(probe.getsockname()[1])
    binary = os.environ.get("KUBECTL") or shutil.which("kubectl") or "kubectl"
    command = [binary, "-n", namespace, "port-forward", f"svc/{service}", f"{local}:{port}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # kubectl prints "Forwarding from" once the tunnel is up
        if "Forwarding from" not in first:
            raise SystemExit(f"kubectl port-forward svc/{service} failed: {first}{process.stdout.read()}")
        yield local
    finally:
        process.terminate()
        process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--name", default="digits", help="the ModelService")
    parser.add_argument("--model", default="digits", help="the model's name (the TrainingJob's output.modelName)")
    arguments = parser.parse_args(argv)
    ms = json.loads(kubectl("-n", arguments.namespace, "get", "modelservice", arguments.name, "-o", "json"))
    version = (ms.get("status") or {}).get("servedVersion")
    if not version:
        print(
            f"ModelService {arguments.name} serves no version yet: `kubectl get ms {arguments.name}`", file=sys.stderr
        )
        return 1
    x, y = held_out()
    with port_forward(arguments.namespace, arguments.name, HTTP_PORT) as local:
        triton = httpclient.InferenceServerClient(f"127.0.0.1:{local}")
        batches = []
        for start in range(0, len(x), BATCH):
            chunk = x[start : start + BATCH]
            request = httpclient.InferInput("pixels", list(chunk.shape), "FP32")
            request.set_data_from_numpy(chunk)
            batches.append(triton.infer(arguments.model, [request]).as_numpy("logits"))
    predicted = np.argmax(np.concatenate(batches), axis=1)
    accuracy = float((predicted == y).mean())
    print(f"ModelService {arguments.namespace}/{arguments.name}, version {version}, over KServe v2 (HTTP)")
    print(f"predicted: {' '.join(str(int(p)) for p in predicted[:20])} ...")
    print(f"labels:    {' '.join(str(int(t)) for t in y[:20])} ...")
    print(f"held-out accuracy: {accuracy:.4f} ({int((predicted == y).sum())} of {len(y)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
