"""The nightly hardware-in-the-loop workflow, executed: its ``run:`` steps for the matrix's ``host``
entry run here (tests/actions.py plays the runner) against the loopback board (a real sshd), with a
temporary results database and a tiny recipe. Then the regression gate is shown to fail the job on
a regression, to pass within the band, and to say plainly when there is no baseline yet."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.actions import load_workflow, run_job
from tests.targets.conftest import with_

ROOT = Path(__file__).resolve().parents[2]
NIGHTLY = ROOT / ".github" / "workflows" / "nightly-hil.yml"
TINY_RECIPE = "img_size: 64\nprune_method: none\nworkers: 0\ncalib_images: 8\nbench_duration: 0.3\n"


def host_entry(workflow: dict) -> dict:
    entries = [e for e in workflow["jobs"]["hil"]["strategy"]["matrix"]["include"] if e["target"] == "host"]
    assert len(entries) == 1, "the nightly matrix needs exactly one 'host' (loopback) entry"
    return entries[0]


@pytest.fixture
def lab(device, tmp_path):
    """What the lab host has: an inventory naming the loopback board as the matrix's host device,
    a local results database, the repository variables and a process environment with edgeyolo."""
    workflow = load_workflow(NIGHTLY)
    entry = host_entry(workflow)
    d = with_(device, target="host")
    fields = {k: getattr(d, k) for k in ("target", "host", "port", "user", "key_file", "known_hosts", "workdir", "python")}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"devices": {entry["device"]: fields}}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    db = tmp_path / "lab" / "results.sqlite"
    variables = {
        "EDGEYOLO_INVENTORY": str(inventory), "EDGEYOLO_RESULTS_DB": str(db), "EDGEYOLO_NIGHTLY_RECIPE": str(recipe),
        "EDGEYOLO_BENCH_DURATION": "0.3", "EDGEYOLO_BENCH_WARMUP": "0.1", "EDGEYOLO_BENCH_REPEATS": "2",
        "EDGEYOLO_GATE_RUNS": "2", "EDGEYOLO_GATE_METRICS": "fps",
    }
    workspace = tmp_path / "workspace"
    contexts = {
        "github": {"workspace": str(workspace), "run_id": "4242", "event_name": "schedule", "ref": "refs/heads/main"},
        "vars": variables, "secrets": {}, "inputs": {}, "runner": {"temp": str(tmp_path / "runner-temp")},
    }
    bindir = str(Path(sys.executable).parent)  # the installed edgeyolo and python, as the install step would give
    base_env = {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "CI": "true",
                "RUNNER_TEMP": str(tmp_path / "runner-temp"), "GITHUB_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1",
                "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT)}  # this checkout's edgeyolo, whatever pip installed
    (tmp_path / "runner-temp").mkdir()
    assert shutil.which("edgeyolo", path=base_env["PATH"]), "edgeyolo is not installed next to this python"

    def run(scratch: str, **kwargs):
        inputs = kwargs.pop("inputs", {})
        ctx = {**contexts, "inputs": inputs,
               "github": {**contexts["github"], "event_name": "workflow_dispatch" if inputs else "schedule"}}
        return run_job(workflow, "hil", entry, ctx, cwd=ROOT, scratch=tmp_path / scratch, base_env=base_env, **kwargs)

    return {"run": run, "db": db, "entry": entry, "out": workspace / "nightly-out" / entry["device"]}


def runs_in(db: Path, **filters):
    from edgeyolo.bench.results import ResultsStore

    with ResultsStore(db, create=False) as store:
        return store.runs(**filters)


def fake_baseline(db: Path, candidates, factor: float, label: str) -> None:
    """Baseline runs measured under the candidates' board state, all at factor x their median fps."""
    import statistics

    from edgeyolo.bench.results import ResultsStore

    fps = factor * statistics.median(r.metrics["fps"] for r in candidates)
    c = candidates[0]
    with ResultsStore(db) as store:
        for _ in candidates:
            store.add_run({"kind": "board", "target": c.target, "device": c.device, "artifact": c.artifact,
                           "artifact_sha256": c.artifact_sha256, "board_state": c.board_state, "toolchain": c.toolchain,
                           "metrics": {"fps": fps}, "started": "2000-01-01T00:00:00Z"}, label=label)


def test_the_nightly_runs_on_the_loopback_board_and_gates_regressions(lab) -> None:
    # night 1: no baseline yet -- the gate says so (annotation + job summary) and passes
    night = lab["run"]("night1", skip=("install",))
    outcome = {s.id: s.outcome for s in night.steps}
    failed = [s for s in night.steps if s.outcome == "failure"]
    assert night.status == "success", failed[0].output[-3000:] if failed else night
    assert outcome == {"step0": "skipped", "settings": "success", "install": "skipped", "doctor": "success", "build": "success",
                       "compile": "skipped", "bench": "success", "gate": "success", "step8": "skipped"}, outcome
    gate = night.step("gate")
    assert "::warning title=regression gate not applied::no baseline yet" in gate.output
    assert "0 of 2 complete runs labelled 'nightly-baseline'" in gate.summary

    out, entry = lab["out"], lab["entry"]
    assert (out / "build" / "report.md").is_file() and "| deploy | done |" in (out / "build" / "report.md").read_text()
    artifact = Path(night.env["ARTIFACT"])
    assert artifact.is_file() and artifact.suffix == ".onnx"
    runs = runs_in(lab["db"], device=entry["device"])
    assert len(runs) == 2 and {r.status for r in runs} == {"complete"}
    from edgeyolo.bench.results import sha256_file

    for r in runs:
        assert r.kind == "board" and r.target == "host" and r.label is None
        assert r.artifact_name == artifact.name and r.artifact_sha256 == sha256_file(artifact)
        assert r.metrics["fps"] > 0 and r.metrics["streams.1.fps"] == r.metrics["fps"] and r.metrics["latency_ms.p99"] > 0
        assert r.toolchain["backend"] == "onnxruntime" and r.board_state["cpus"] >= 1
    assert [r for r in runs if "map50" in r.metrics] == [runs[-1]]  # the board's mAP on the first run only
    bench = json.loads((out / "bench-1.json").read_text())
    assert bench["recorded_run"]["id"] == runs[-1].id and bench["phases"][0]["fps"] > 0

    # a baseline 10x faster than tonight: the gate step fails the job
    fake_baseline(lab["db"], runs, 10.0, "fast")
    slow = lab["run"]("regression", only=("gate",), env={"ARTIFACT": str(artifact)}, inputs={"baseline": "fast"})
    assert slow.status == "failure" and slow.step("gate").code == 1
    assert "REGRESSION fps" in slow.step("gate").output and "-90.00 %" in slow.step("gate").output
    assert "REGRESSION" in (out / "gate-fps.txt").read_text()

    # tonight within the band of a baseline (2 % faster, band 5 %): it passes
    fake_baseline(lab["db"], runs, 1.02, "close")
    ok = lab["run"]("within", only=("gate",), env={"ARTIFACT": str(artifact)}, inputs={"baseline": "close"})
    assert ok.status == "success", ok.step("gate").output
    assert "PASS fps" in ok.step("gate").output and "PASS fps" in ok.summary

    # a dispatch that records a baseline does not gate
    record = lab["run"]("record", only=("gate",), env={"ARTIFACT": str(artifact)},
                        inputs={"record_baseline": True, "baseline": "fast"})
    assert record.status == "success" and "::notice title=baseline recorded::" in record.step("gate").output


def test_the_nightly_refuses_a_results_database_path_that_is_not_absolute(lab, tmp_path) -> None:
    job = lab["run"]("settings", only=("settings",), env={"EDGEYOLO_RESULTS_DB": "results.sqlite"})
    assert job.status == "failure"
    assert "EDGEYOLO_RESULTS_DB must be an absolute path" in job.step("settings").output
