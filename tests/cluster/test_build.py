"""The component build (e2e/cluster/build.py) as `make test` drives it: started with the system Python before the
venv exists, then asked again by `prepare`. A fake `go` on PATH records each build it is asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from e2e.cluster import build
from e2e.cluster.versions import load_components

REPO = Path(__file__).resolve().parents[2]

FAKE_GO = f"""\
#!{sys.executable}
# `go env GOVERSION` for the cache key; `go build ... -o DIR/ PKG...` writes one file per package, slowly.
import os, pathlib, sys, time
args = sys.argv[1:]
if args[0] == "env":
    print("go1.99")
    sys.exit(0)
module = pathlib.Path.cwd().name
log = open(os.environ["FAKE_GO_LOG"], "a")
log.write(f"start {{module}} {{time.time()}}\\n"); log.flush()
time.sleep(0.5)
out = pathlib.Path(args[args.index("-o") + 1])
for package in args[args.index("-o") + 2:]:
    parts = package.split("/")
    (out / (parts[-2] if parts[-1][:1] == "v" and parts[-1][1:].isdigit() else parts[-1])).touch()
log.write(f"end {{module}} {{time.time()}}\\n")
"""


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    log = tmp_path / "go.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("KUBEMAAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "check_pins", lambda components: [])
    return log


def _starts(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]


def test_a_second_caller_waits_for_the_first_build_instead_of_compiling_again(fake_go: Path) -> None:
    results: list[Path] = []
    callers = [threading.Thread(target=lambda: results.append(build.ensure_built())) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    modules = {c.module_dir.name for c in load_components()}
    assert sorted(_starts(fake_go)) == sorted(modules)  # each module compiled once, not once per caller
    assert results[0] == results[1] and (results[0] / build.COMPLETE_MARKER).exists()
    for component in load_components():
        for binary in component.binaries:
            assert (results[0] / binary).exists(), binary


def test_modules_compile_side_by_side_longest_first(fake_go: Path) -> None:
    build.ensure_built()
    events = [line.split() for line in fake_go.read_text().splitlines()]
    first_module = load_components()[0].module_dir.name
    ordered = sorted(events, key=lambda event: float(event[2]))
    # Kubernetes, the longest, starts at once (beside one other module), not behind the short ones.
    assert ["start", first_module] in [event[:2] for event in ordered[: build.PARALLEL_MODULES]]
    running = peak = 0
    for kind, _, _ in ordered:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == build.PARALLEL_MODULES


def test_the_build_runs_on_the_standard_library_alone() -> None:
    """`make test` starts it with the system Python, before the venv and its packages exist."""
    probe = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import e2e.cluster.build
        outside = sorted(
            name for name, module in sys.modules.items()
            if getattr(module, "__file__", None) and "site-packages" in module.__file__
        )
        print(outside)
        """
    )
    # -S: no site-packages on the path at all, as in a Python without the venv's packages.
    result = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


LISTING_GO = f"""\
#!{sys.executable}
# `go list -m -f {{{{.Dir}}}} M` prints an empty directory until `go mod download M` has put the source in place.
import os, pathlib, sys
args = sys.argv[1:]
source = pathlib.Path(os.environ["FAKE_GO_SOURCE"])
if args[:2] == ["mod", "download"]:
    source.mkdir()
elif args[:2] == ["list", "-m"]:
    print(source if source.exists() else "")
"""


def test_a_module_source_missing_from_the_module_cache_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "go").write_text(LISTING_GO)
    (bin_dir / "go").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GO_SOURCE", str(tmp_path / "source"))
    component = next(c for c in load_components() if c.name == "kubernetes")
    assert build.module_source_dir(component) == tmp_path / "source"
