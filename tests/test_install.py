"""The install a new user runs: every import is declared, the lock file agrees with pyproject.toml, and
CI installs with the README's line.

A dependency missing from ``pyproject.toml`` passes on a machine that already has it and breaks every
fresh install (typer 0.29 stopped pulling click in while ``cli/app.py`` imported it). So every import
in ``edgeyolo/``, at module level or inside a function, must resolve to a declared distribution:

- a module-level import to a core dependency;
- an import inside a function (a lazy, optional backend) to a core dependency or an extra;
- or its top-level name is on ``BOARD_ONLY``: installed by the board's vendor image, never from PyPI.

``tests/`` is held to the core dependencies plus the ``dev`` extra, which the README's install line
adds.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeyolo"
CONSTRAINTS = ROOT / "constraints.txt"

# Imported lazily by board-side code; the board's image provides them (JetPack, Vitis AI, PetaLinux).
BOARD_ONLY = {"tensorrt", "pycuda", "vart", "xir", "pytorch_nndct", "vai_q_onnx"}
# Import names whose distribution is named otherwise, for when the distribution is not installed here.
KNOWN_DISTRIBUTIONS = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "scipy": "scipy", "click": "click"}


@dataclass(frozen=True)
class ImportSite:
    name: str  # top-level module name
    path: Path
    line: int
    lazy: bool  # inside a function body

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def import_sites(folder: Path) -> list[ImportSite]:
    """Every absolute import under ``folder`` that is not the standard library or the project itself."""
    sites = []
    local = {"edgeyolo", "tests"}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        lazy_nodes: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy_nodes.update(id(child) for child in ast.walk(node) if child is not node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "__future__":
                    continue
                sites.append(ImportSite(top, path, node.lineno, id(node) in lazy_nodes))
    return sites


def declared(pyproject: dict) -> tuple[dict[str, Requirement], dict[str, dict[str, Requirement]]]:
    """Core requirements and each extra's, keyed by canonical distribution name."""
    project = pyproject["project"]
    core = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"]}
    extras = {
        extra: {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs}
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    return core, extras


def distributions_of(name: str) -> set[str]:
    found = importlib.metadata.packages_distributions().get(name, [])
    if not found and name in KNOWN_DISTRIBUTIONS:
        found = [KNOWN_DISTRIBUTIONS[name]]
    return {canonicalize_name(d) for d in found}


def undeclared_imports(sites: list[ImportSite], pyproject: dict, extras_allowed: tuple[str, ...] | None = None) -> list[str]:
    """One line per import that no declared dependency provides; ``extras_allowed`` None: any extra,
    for lazy imports only; a tuple: those extras count as core (the test suite's view)."""
    core, extras = declared(pyproject)
    if extras_allowed is not None:
        for extra in extras_allowed:
            core = {**core, **extras.get(extra, {})}
        extras = {}
    optional = {name for reqs in extras.values() for name in reqs}
    problems = []
    for site in sites:
        if site.name in BOARD_ONLY:
            continue
        dists = distributions_of(site.name)
        if not dists:
            problems.append(f"{site.where()}: cannot tell which distribution provides '{site.name}' (not installed here)")
        elif not dists & core.keys():
            if site.lazy and dists & optional:
                continue
            hint = "an extra (it is imported at module level)" if dists & optional else "pyproject.toml"
            problems.append(f"{site.where()}: '{site.name}' ({', '.join(sorted(dists))}) is not declared in {hint}")
    return problems


def load_pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_import_is_declared():
    sites = import_sites(PACKAGE)
    assert {"torch", "click", "typer", "paramiko"} <= {s.name for s in sites}  # the scan sees lazy imports too
    assert undeclared_imports(sites, load_pyproject()) == []


def test_every_test_import_is_declared_with_the_dev_extra():
    assert undeclared_imports(import_sites(ROOT / "tests"), load_pyproject(), extras_allowed=("dev",)) == []


def test_dropping_click_from_pyproject_fails_the_check():
    pyproject = load_pyproject()
    pyproject["project"]["dependencies"] = [r for r in pyproject["project"]["dependencies"] if not r.startswith("click")]
    problems = undeclared_imports(import_sites(PACKAGE), pyproject)
    assert any("edgeyolo/cli/invoke.py" in p and "'click'" in p for p in problems), problems


def test_an_extra_imported_at_module_level_fails_the_check(tmp_path):
    sites = [ImportSite("scipy", ROOT / "edgeyolo" / "x.py", 3, lazy=False)]
    assert undeclared_imports(sites, load_pyproject()) == ["edgeyolo/x.py:3: 'scipy' (scipy) is not declared in an extra (it is imported at module level)"]
    assert undeclared_imports([ImportSite("scipy", ROOT / "edgeyolo" / "x.py", 3, lazy=True)], load_pyproject()) == []


# ------------------------------------------------------------------------------------------ lock file


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, Version]:
    pins = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"{path.name}:{number}: not a 'name==version' pin: {raw!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        pins[name] = Version(match.group(2))
    return pins


def lock_problems(pyproject: dict, pins: dict[str, Version], extras: tuple[str, ...] = ("cpu", "dev")) -> list[str]:
    core, by_extra = declared(pyproject)
    problems = []
    for group, reqs in [("dependencies", core)] + [(f"[{e}]", by_extra[e]) for e in extras]:
        for name, req in reqs.items():
            if name not in pins:
                problems.append(f"{req.name} ({group}) has no pin in constraints.txt")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"constraints.txt pins {req.name}=={pins[name]}, which {group} '{req}' excludes")
    return problems


def test_constraints_pin_every_declared_dependency_within_its_specifier():
    assert lock_problems(load_pyproject(), read_constraints()) == []


def test_a_missing_or_contradicting_pin_fails_the_lock_check():
    pins = read_constraints()
    pyproject = load_pyproject()
    missing = {k: v for k, v in pins.items() if k != "paramiko"}
    assert lock_problems(pyproject, missing) == ["paramiko (dependencies) has no pin in constraints.txt"]
    contradicting = {**pins, "opencv-python-headless": Version("5.0.0")}
    assert any("opencv-python-headless==5.0.0" in p for p in lock_problems(pyproject, contradicting))


def test_constraints_pin_the_cpu_build_of_torch():
    assert read_constraints()["torch"] == Version("2.13.0")


# ------------------------------------------------------------------------------------------ README and CI


def readme_commands() -> list[str]:
    """The commands of the README's first bash block, one per line."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def ci_script() -> str:
    return (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_ci_runs_the_readme_commands_verbatim():
    commands = readme_commands()
    install = next(c for c in commands if c.startswith("pip install"))
    assert "-c constraints.txt" in install and ".[cpu,dev]" in install
    assert "edgeyolo build --target jetson-nano" in install, "the first command is the headline build"
    script_lines = [line.strip() for line in ci_script().splitlines()]
    for command in commands:
        if command.startswith(("python3 -m venv", ". ")):
            continue  # CI makes its own venv (below)
        assert command in script_lines, f".ci/run does not run the README's command verbatim: {command}"


def test_ci_installs_into_a_fresh_venv_and_checks_it():
    script = ci_script()
    assert re.search(r'rm -rf "\$venv"', script) and re.search(r'python3 -m venv "\$venv"', script)
    assert "--system-site-packages" not in script
    assert re.search(r"^\s*pip check\s*$", script, re.M)
    assert "--latest" in script


def test_the_docker_host_image_installs_through_the_lock_file():
    # the host image installs the same extras through the same lock file
    dockerfile = (ROOT / "docker" / "host" / "Dockerfile").read_text(encoding="utf-8")
    assert "constraints.txt" in dockerfile
