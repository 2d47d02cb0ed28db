"""The guard against a program the code runs but nothing installs (e2e/cluster/debian.py).

CI runs on the machine the last session used, where a package installed by hand hides a missing install step:
buildah and debootstrap were checked for but never installed, and runc (which buildah runs every RUN step in)
was installed only by the real node, after the images were built. The first run on a new machine failed.
These tests read the code (no machine state): every program it runs must come from a declared package, from
what a new machine has, or from the project's own build; and each step installs what it and the programs it
starts run, before it runs them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import debian
from e2e.cluster.versions import load_components

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("operator", "e2e", "tests")
# Calls whose list arguments are commands: subprocess's, and the project's thin wrappers around it (which take
# a list; a tuple given to a function of that name elsewhere is a key, not a command).
SUBPROCESS_CALLS = {"run", "Popen", "check_output", "check_call", "call"}
WRAPPER_CALLS = {"_run"}
# Programs the project's own code starts, which start other programs in turn (invisible to a reading of the
# code): a step that runs the first needs the others installed too.
STARTS = {"buildah": ("runc",), "containerd": ("runc",)}
# Modules whose programs belong to one step: they must install that step's packages before running any.
STEP_MODULES: dict[debian.Step, tuple[str, ...]] = {
    "images": ("e2e/cluster/images.py",),
    "node": ("e2e/cluster/node.py",),
}
# Not run by `make test` or `make run`: the kind path is for users who have Docker (e2e/kind/README.md).
USER_PROVIDED = {"kind", "docker"}


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _is_subprocess(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "subprocess"


def _program(node: ast.expr, kinds: tuple[type[ast.List | ast.Tuple], ...] = (ast.List, ast.Tuple)) -> str | None:
    """The program of a command literal: the first element of a list (or tuple), when it is a plain string."""
    if isinstance(node, kinds) and node.elts:
        first = node.elts[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("-"):
            return first.value
    return None


def programs_run(source: str) -> set[str]:
    """Programs a module runs or looks up: command literals given to subprocess (or a wrapper), returned by a
    `*_command` function, or asked of `shutil.which`."""
    programs: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name == "which" and node.args and isinstance(node.args[0], ast.Constant):
                programs.add(str(node.args[0].value))
            elif name in SUBPROCESS_CALLS and _is_subprocess(node.func):
                programs.update(p for arg in node.args if (p := _program(arg)) is not None)
            elif name in WRAPPER_CALLS:
                programs.update(p for arg in node.args if (p := _program(arg, (ast.List,))) is not None)
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("_command"):
            returned = (n.value for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None)
            programs.update(p for value in returned if (p := _program(value)) is not None)
    return programs


def steps_ensured(source: str) -> set[str]:
    """The steps a module installs packages for: `debian.ensure("<step>")` calls."""
    return {
        str(node.args[0].value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and _name(node.func) == "ensure"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def _modules() -> Iterator[Path]:
    for top in SCANNED:
        yield from sorted((REPO / top).rglob("*.py"))


def built_programs() -> set[str]:
    """What the project builds itself: the pinned components' binaries and its own console script."""
    return {binary for component in load_components() for binary in component.binaries} | {"kubemaas"}


def provided() -> dict[str, str]:
    """Program -> where it comes from, for everything the project may run."""
    sources = {program: f"new machine ({origin})" for program, origin in debian.NEW_MACHINE_PROGRAMS.items()}
    sources.update({program: "the project's build" for program in built_programs()})
    for step in debian.PACKAGES:
        sources.update({program: f"Debian {name}" for program, name in debian.programs_of(step).items()})
    return sources


def unprovided(programs: set[str], sources: dict[str, str]) -> list[str]:
    return sorted(programs - set(sources) - USER_PROVIDED)


def missing_for_step(step: debian.Step, module_source: str) -> list[str]:
    """Programs a step's module runs (and what those start) that the step does not install or find."""
    runs = programs_run(module_source)
    runs |= {started for program in runs for started in STARTS.get(program, ())}
    available = set(debian.programs_of(step)) if step in steps_ensured(module_source) else set()
    available |= set(debian.NEW_MACHINE_PROGRAMS) | built_programs()
    return sorted(runs - available)


def test_every_program_the_code_runs_is_installed_by_the_project_or_on_a_new_machine() -> None:
    sources = provided()
    problems = {
        str(path.relative_to(REPO)): missing
        for path in _modules()
        if (missing := unprovided(programs_run(path.read_text()), sources))
    }
    assert not problems, f"programs run but neither declared in e2e/cluster/debian.py nor built: {problems}"


@pytest.mark.parametrize(("step", "module"), [(s, m) for s, modules in STEP_MODULES.items() for m in modules])
def test_each_step_installs_what_it_runs_before_running_it(step: debian.Step, module: str) -> None:
    missing = missing_for_step(step, (REPO / module).read_text())
    assert not missing, f"{module} runs {', '.join(missing)} without debian.ensure({step!r}) providing them"


def test_the_guard_sees_a_step_that_checks_for_its_tools_but_never_installs_them() -> None:
    """Today's defect in miniature: the image build looked buildah and debootstrap up, never installed them, and
    needed runc for buildah's RUN steps."""
    source = 'import shutil, subprocess\nshutil.which("debootstrap")\nsubprocess.run(["buildah", "build", "."])\n'
    assert missing_for_step("images", source) == ["buildah", "debootstrap", "runc"]
    installed = 'from e2e.cluster import debian\ndebian.ensure("images")\n' + source
    assert missing_for_step("images", installed) == []


def test_the_guard_finds_commands_in_wrappers_and_command_builders() -> None:
    source = (
        "def ctr_command(p):\n    return ['ctr', '--address', p]\n"
        "_run('debootstrap', ['debootstrap', '--variant=minbase'], log)\n"
        "subprocess.Popen(('conntrack', '-F'))\n"
        "subprocess.run([*prefix, 'version'])\n"
        "_run(('namespace', 'name'), memo)\n"
    )
    assert programs_run(source) == {"ctr", "debootstrap", "conntrack"}


def test_every_package_says_why_and_provides_what_it_is_declared_for() -> None:
    for step, packages in debian.PACKAGES.items():
        assert packages, step
        for package in packages:
            assert package.why and package.name.islower(), package
    assert debian.provider("runc") == "runc"
    assert debian.provider("ctr") == "containerd"
    assert debian.provider("no-such-program") is None
