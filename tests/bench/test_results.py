"""Results store (SQLite) and the regression gate: crash safety, schema, CLI and the gate's verdicts."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeyolo.bench.results import (
    SCHEMA_VERSION,
    NotEnoughRuns,
    ResultsStore,
    check_regression,
    default_db_path,
    infer_direction,
    numeric_metrics,
    record_run,
    state_differences,
)
from edgeyolo.cli.app import main
from edgeyolo.errors import InputFileError, UsageError

REPO = Path(__file__).resolve().parents[2]
NANO = {"power_mode": "MAXN", "clocks": {"gpu_hz": 921600000, "emc_hz": 1600000000}, "jetpack": "4.6.1", "tensorrt": "8.2.1"}


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.sqlite"


def _record(target="jetson-nano", device="nano-01", artifact="yolov4-tiny-fp16.engine", fps=30.0, label=None,
            state=None, started=None, **metrics) -> dict:
    rec = {"kind": "board", "target": target, "device": device, "artifact": artifact,
           "metrics": {"fps": fps, **metrics}, "board_state": NANO if state is None else state,
           "toolchain": {"python": "3.6.9", "agent": "1"}}
    if label is not None:
        rec["label"] = label
    if started is not None:
        rec["started"] = started
    return rec


def _fill(store: ResultsStore, fps: list[float], label=None, day: int = 1, **kw) -> list[int]:
    return [store.add_run(_record(fps=v, label=label, started=f"2024-05-{day:02d}T0{i}:00:00Z", **kw)) for i, v in enumerate(fps)]


# ------------------------------------------------------------------ location and schema


def test_default_db_path_follows_env_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EDGEYOLO_RESULTS_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "edgeyolo" / "results.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == Path.home() / ".local" / "share" / "edgeyolo" / "results.sqlite"
    monkeypatch.setenv("EDGEYOLO_RESULTS_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"


def test_schema_is_versioned_and_journal_is_not_wal(db: Path) -> None:
    with ResultsStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    with ResultsStore(db) as store:  # reopening migrates nothing and keeps the version
        assert store.schema_version() == SCHEMA_VERSION
    assert not Path(f"{db}-wal").exists()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(InputFileError, match="newer than this edgeyolo"):
        ResultsStore(db)


def test_readers_do_not_create_a_database(db: Path) -> None:
    with pytest.raises(InputFileError, match="no results database"):
        ResultsStore(db, create=False)
    assert not db.exists()
    db.write_text("not sqlite at all " * 100)
    with pytest.raises(InputFileError, match="not a usable"):
        ResultsStore(db)


def test_metrics_accept_numbers_units_and_nesting() -> None:
    got = numeric_metrics({"fps": 30, "latency_ms": {"p50": 9.5, "p90": {"value": 11.0, "unit": "ms"}},
                           "note": "x", "ok": True, "bad": float("nan")})
    assert got == {"fps": (30.0, None), "latency_ms.p50": (9.5, None), "latency_ms.p90": (11.0, "ms")}


# ------------------------------------------------------------------ writers and crash safety


def test_record_run_commits_running_first_then_complete(db: Path, tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    with ResultsStore(db) as store:
        with record_run(store, kind="board", target="jetson-nano", artifact=engine, rev="abc1234def", toolchain={"trt": "8.2.1"}) as rec:
            seen = ResultsStore(db)  # another connection sees the committed 'running' row mid-run
            assert seen.get(rec.id).status == "running"
            seen.close()
            rec.metric("fps", 31.5)
            rec.metric("latency_ms", 30.1, unit="ms")
            rec.board_state["power_mode"] = "MAXN"
        run = store.get(rec.id)
    assert run.status == "complete" and run.finished is not None
    assert run.metrics == {"fps": 31.5, "latency_ms": 30.1} and run.units == {"latency_ms": "ms"}
    assert run.artifact_name == "m.engine" and len(run.artifact_sha256) == 64
    assert run.board_state == {"power_mode": "MAXN"} and run.git_rev == "abc1234def"


def test_record_run_marks_failures(db: Path) -> None:
    with pytest.raises(RuntimeError):
        with record_run(db, kind="host", target="host", rev="") as rec:
            rec.metric("fps", 1.0)
            raise RuntimeError("trtexec crashed")
    with ResultsStore(db) as store:
        run = store.get(rec.id)
    assert run.status == "failed" and "trtexec crashed" in run.error


_WRITER = textwrap.dedent(
    """
    import sys, time
    from edgeyolo.bench.results import ResultsStore
    store = ResultsStore(sys.argv[1])
    run_id = store.begin_run(kind="board", target="jetson-nano", device="nano-01", board_state={"power_mode": "MAXN"})
    if sys.argv[2] == "in-final-transaction":
        # the last transaction, open and half written when the kill comes
        store.conn.execute("BEGIN IMMEDIATE")
        store.conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, NULL)", [(run_id, f"m{i}", float(i)) for i in range(500)])
        store.conn.execute("UPDATE runs SET status = 'complete' WHERE id = ?", (run_id,))
    print(run_id, flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("when", ["mid-run", "in-final-transaction"])
def test_killed_writer_leaves_an_intact_db_and_an_incomplete_row(db: Path, when: str) -> None:
    with ResultsStore(db) as store:
        before = _fill(store, [30.0, 31.0])
        live = store.begin_run(kind="host", target="host")  # this test process: alive, must stay running
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), when], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        victim = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)  # reaped: a zombie would still answer kill(pid, 0)
        proc.stdout.close()
    with ResultsStore(db) as store:
        assert store.reaped == [victim]
        assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run = store.get(victim)
        assert run.status == "incomplete" and run.metrics == {} and f"pid {proc.pid}" in run.error
        assert store.get(live).status == "running"
        for run_id, fps in zip(before, (30.0, 31.0)):
            assert store.get(run_id).status == "complete" and store.get(run_id).metrics == {"fps": fps}
    with ResultsStore(db) as store:
        assert store.reaped == []  # reaped once


# ------------------------------------------------------------------ the gate


def test_gate_fails_a_regression_beyond_the_band(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0, 30.2, 29.9, 30.1, 30.0], label="main", day=1)
        _fill(store, [27.0, 27.1, 26.9, 27.0, 27.2], day=2)  # -10 %
        result = check_regression(store, "main", metric="fps", runs=5, band_pct=5.0)
    assert result.verdict == "regression" and result.exit_code == 1
    assert result.change_pct == pytest.approx(-10.0) and result.band_pct == pytest.approx(5.0)


def test_gate_passes_within_the_band(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0, 30.2, 29.9, 30.1, 30.0], label="main", day=1)
        _fill(store, [29.0, 29.2, 28.9, 29.1, 29.0], day=2)  # -3.3 %
        result = check_regression(store, "main", runs=5, band_pct=5.0)
    assert result.verdict == "pass" and result.exit_code == 0 and -4 < result.change_pct < -3


def test_noisy_baseline_widens_the_band(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0, 27.0, 33.0, 28.5, 31.5], label="main", day=1)  # MAD 1.5 -> 3·1.4826·1.5/30 = 22 %
        _fill(store, [27.0] * 5, day=2)  # -10 %: beyond 5 %, inside the noise
        result = check_regression(store, "main", runs=5, band_pct=5.0)
    assert result.verdict == "pass" and result.noise_band_pct == pytest.approx(22.239, abs=1e-2)


def test_lower_is_better_for_latency(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0] * 3, label="main", day=1, latency_ms=10.0)
        _fill(store, [30.0] * 3, day=2, latency_ms=11.0)
        assert check_regression(store, "main", metric="latency_ms", runs=3).verdict == "regression"
        assert check_regression(store, "main", metric="latency_ms", runs=3, higher_is_better=True).verdict == "pass"
    assert infer_direction("fps") and infer_direction("map50") and infer_direction("img_per_s")
    assert infer_direction("latency_ms.p50") is False and infer_direction("gpu_compute_ms") is False
    assert infer_direction("score") is None


def test_gate_refuses_differing_board_state(db: Path) -> None:
    five_w = {**NANO, "power_mode": "5W", "clocks": {**NANO["clocks"], "gpu_hz": 640000000}}
    with ResultsStore(db) as store:
        base = _fill(store, [30.0] * 3, label="main", day=1)
        cand = _fill(store, [20.0] * 3, day=2, state=five_w)
        result = check_regression(store, "main", runs=3)
    assert result.verdict == "refused" and result.exit_code == 2
    fields = {d.field for d in result.differences}
    assert fields == {"board_state.power_mode", "board_state.clocks.gpu_hz"}
    text = result.describe()
    assert f'board_state.power_mode: "MAXN" (baseline runs {", ".join(map(str, base))}) vs "5W" (candidate runs {", ".join(map(str, cand))})' in text


def test_toolchain_versions_and_missing_fields_differ_too(db: Path) -> None:
    with ResultsStore(db) as store:
        a = store.get(store.add_run(_record(state={"power_mode": "MAXN", "temperature_c": 40})))
        b = store.get(store.add_run({**_record(state={"temperature_c": 60}), "toolchain": {"python": "3.6.9", "agent": "2"}}))
    fields = {d.field for d in state_differences([a, b])}
    assert fields == {"board_state.power_mode", "toolchain.agent"}  # temperature is an observation
    assert {d.field for d in state_differences([a, b], ignore=["agent", "power_mode"])} == set()


def test_too_few_runs_is_a_clear_error(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0] * 5, label="main", day=1)
        _fill(store, [29.0] * 2, day=2)
        with pytest.raises(NotEnoughRuns, match=r"found 2 complete candidate runs .* --runs 5 needs 5"):
            check_regression(store, "main", runs=5)
        with pytest.raises(NotEnoughRuns, match="baseline 'v9'"):
            check_regression(store, "v9", runs=2)
        with pytest.raises(UsageError, match="--higher-better or --lower-better"):
            check_regression(store, "main", metric="score", runs=2)


def test_gate_keeps_to_the_candidates_group(db: Path) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0] * 3, label="main", day=1)
        _fill(store, [30.0] * 3, day=2)
        _fill(store, [5.0] * 3, day=3, artifact="yolov4-fp32.engine", label="main")  # other artifact: ignored
        other = _fill(store, [5.0] * 3, day=4, target="zcu104", device="zcu-01", artifact="yolov4.xmodel")
        assert check_regression(store, "main", runs=3, target="jetson-nano").verdict == "pass"
        with pytest.raises(NotEnoughRuns, match="baseline 'main'"):  # the newest run is a zcu104 one
            check_regression(store, "main", runs=3)
        with pytest.raises(NotEnoughRuns, match="baseline"):
            check_regression(store, "main", runs=3, candidate=other[-1])


# ------------------------------------------------------------------ the command line


def _cli(db: Path, *args: str) -> int:
    return main(["results", *args[:1], "--db", str(db), *args[1:]])


def test_cli_add_list_show_compare_check(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"runs": [_record(fps=30.0 + i / 10, started=f"2024-05-01T0{i}:00:00Z") for i in range(3)]}))
    assert _cli(db, "add", "--json", str(base), "--label", "main") == 0
    for i, fps in enumerate((26.0, 26.5, 26.2)):
        one = tmp_path / f"c{i}.json"
        one.write_text(json.dumps({**_record(fps=fps, started=f"2024-05-02T0{i}:00:00Z"), "extra_field": {"kept": True}}))
        assert _cli(db, "add", "--json", str(one)) == 0
    assert "recorded run 6" in capsys.readouterr().out

    assert _cli(db, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == [6, 5, 4, 3, 2, 1] and listed[0]["extra"] == {"extra_field": {"kept": True}}
    assert _cli(db, "list", "--ref", "main") == 0 and "3 runs" in capsys.readouterr().out
    assert _cli(db, "show", "6") == 0 and "board_state.clocks.gpu_hz" in capsys.readouterr().out
    assert _cli(db, "compare", "1", "6") == 0 and "-12.7 %" in capsys.readouterr().out
    assert _cli(db, "check", "--baseline", "main", "--runs", "3") == 1
    assert "REGRESSION fps" in capsys.readouterr().err
    assert _cli(db, "check", "--baseline", "main", "--runs", "3", "--band", "20") == 0
    assert _cli(db, "check", "--baseline", "main", "--runs", "4") == 2
    assert "--runs 4 needs 4" in capsys.readouterr().err
    assert _cli(db, "check", "--baseline", "main", "--runs", "3", "--json") == 1
    assert json.loads(capsys.readouterr().out)["verdict"] == "regression"


def test_cli_check_refusal_exits_2_and_names_fields(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0] * 2, label="main", day=1)
        _fill(store, [30.0] * 2, day=2, state={**NANO, "tensorrt": "8.0.1"})
    assert _cli(db, "check", "--baseline", "main", "--runs", "2") == 2
    err = capsys.readouterr().err
    assert "REFUSED" in err and "board_state.tensorrt" in err and '"8.0.1"' in err
    assert _cli(db, "check", "--baseline", "main", "--runs", "2", "--ignore-field", "tensorrt") == 0


def test_cli_add_rejects_bad_records_whole(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([_record(), {"target": "x", "metrics": {"note": "no numbers"}}]))
    assert _cli(db, "add", "--json", str(bad)) == 2
    assert "at least one number" in capsys.readouterr().err
    assert not db.exists()  # nothing stored, not even the valid first record
    bad.write_text("{nope")
    assert _cli(db, "add", "--json", str(bad)) == 2
    assert _cli(db, "list") == 2 and "no results database" in capsys.readouterr().err


def test_cli_plot_writes_a_png(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsStore(db) as store:
        _fill(store, [30.0, 31.0], label="main", day=1)
        _fill(store, [29.0, 28.0], day=2, target="zcu104", artifact="m.xmodel")
    out = tmp_path / "plot" / "fps.png"
    assert _cli(db, "plot", "--metric", "fps", "--out", str(out)) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 series" in capsys.readouterr().out
    assert _cli(db, "plot", "--metric", "nope", "--out", str(out)) == 2
