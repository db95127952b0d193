"""``edgeyolo bench suite``: every row is a CLI command, measured alike; failures stay in their row."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from edgeyolo.bench.suite import PRESETS, Preset, Suite, get_preset
from edgeyolo.cli.app import main
from edgeyolo.errors import UsageError

MICRO = Preset(
    "micro", False, img_size=64, train_images=16, val_images=8, base_epochs=1, sparse_epochs=1, finetune_epochs=1,
    qat_epochs=1, percent=0.3, percents=(("normal", "0.99"),), methods=("normal", "slim"), kd_strategies=(1,),
    ptq_methods=("minmax",), qat=(("pow2", 8),), calib_images=8, latency_runs=3, workers=0,
)


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("suite")
    Suite(MICRO, out, run=main, echo=lambda _: None).run()
    return out, json.loads((out / "suite.json").read_text())


def test_rows_are_commands_measured_alike(suite_run: tuple[Path, dict]) -> None:
    out, doc = suite_run
    rows = {r["name"]: r for r in doc["rows"]}
    assert list(rows) == [
        "baseline", "sparse", "prune-normal", "ft-normal", "prune-slim", "ft-slim", "kd-1",
        "ptq-minmax", "ptq-minmax-pow2", "qat-pow2-w8a8",
    ]
    for name in ("baseline", "sparse", "prune-slim", "ft-slim", "kd-1", "ptq-minmax", "ptq-minmax-pow2", "qat-pow2-w8a8"):
        r = rows[name]
        assert r["status"] == "ok", (name, r["status"])
        assert r["command"].startswith("edgeyolo ")
        assert r["params"] > 0 and r["bflops"] > 0 and 0.0 <= r["map50"] <= 1.0
        assert r["latency_ms"] > 0 and r["latency_p90_ms"] >= r["latency_ms"]  # quantized rows: their QDQ int8 ONNX
    # slim at 0.3 removes channels: fewer parameters and FLOPs than the sparse model it came from
    assert rows["prune-slim"]["params"] < rows["sparse"]["params"] and rows["prune-slim"]["bflops"] < rows["sparse"]["bflops"]
    assert rows["kd-1"]["params"] == rows["prune-slim"]["params"]
    assert "--KDstr 1" in rows["kd-1"]["command"] and "--t-weights" in rows["kd-1"]["command"]
    table = (out / "suite.md").read_text()
    assert "Not representative" in table and "| prune-slim | ok |" in table


def test_a_failed_command_is_its_row_and_dependents_say_why(suite_run: tuple[Path, dict]) -> None:
    _, doc = suite_run
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["prune-normal"]["status"] == "failed (exit 2)"  # 0.99 is above the largest safe percent
    assert rows["ft-normal"]["status"] == "skipped: needs prune-normal"


def test_a_row_command_reruns_as_printed(suite_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, doc = suite_run
    row = next(r for r in doc["rows"] if r["name"] == "prune-slim")
    argv = shlex.split(row["command"])[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv) == 0
    assert (tmp_path / "again" / "model.cfg").read_text() == (out / "prune" / "slim" / "model.cfg").read_text()


def test_presets() -> None:
    assert PRESETS["full"].representative and not PRESETS["smoke"].representative
    with pytest.raises(UsageError, match="smoke, full"):
        get_preset("fast")


def test_a_second_run_reuses_finished_rows_and_reruns_what_changed(suite_run: tuple[Path, dict]) -> None:
    out, doc = suite_run
    calls: list[list[str]] = []

    def counting(argv: list[str]) -> int:
        calls.append(argv)
        return main(argv)

    first = {r["name"]: r for r in doc["rows"]}
    # every row finished before: nothing runs again, the numbers come back from the records
    rows = {r.name: r for r in Suite(MICRO, out, run=counting, echo=lambda _: None).run()}
    assert calls == []
    for name in ("baseline", "prune-slim", "kd-1", "ptq-minmax-pow2", "qat-pow2-w8a8"):
        assert rows[name].notes.get("reused") and rows[name].map50 == first[name]["map50"]
        assert rows[name].latency_ms > 0  # timing is always measured again
    assert rows["prune-normal"].status == "failed (exit 2)" and rows["ft-normal"].status == "skipped: needs prune-normal"
    assert "rows reused from an earlier one" in (out / "suite.md").read_text()
    # a row whose output is gone runs again, and so does every row after it (its inputs may have changed)
    (out / "prune" / "slim" / "model.safetensors").unlink()
    Suite(MICRO, out, run=counting, echo=lambda _: None).run()
    ran = [argv[0] if argv[0] != "prune" else f"prune-{argv[1]}" for argv in calls]
    assert ran[0] == "prune-slim" and "train" in ran and "quantize" in ran and "prune-normal" not in ran
    assert (out / "prune" / "slim" / "model.safetensors").exists()
