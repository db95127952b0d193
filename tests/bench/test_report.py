"""``edgeyolo report RUN_DIR``: the report of a bench suite, a build and a training run, rebuilt from their folders."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from edgeyolo.bench.report import NO_POWER, compare_channels, device_points, make_report, pareto_front, plot_channels
from edgeyolo.bench.suite import Preset, Suite
from edgeyolo.cli.app import main
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import parse_cfg_text
from edgeyolo.pipeline import report_markdown
from edgeyolo.train.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the smallest suite that has every figure: baseline, sparse, one pruning method and its fine-tune
MICRO = Preset(
    "micro", False, img_size=64, train_images=16, val_images=8, base_epochs=1, sparse_epochs=1, finetune_epochs=1,
    qat_epochs=1, percent=0.3, methods=("slim",), kd_strategies=(), ptq_methods=(), qat=(), calib_images=8, latency_runs=2, workers=0,
)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def linked_images(markdown: str) -> set[str]:
    return set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown))


# ------------------------------------------------------------------------------------------- pareto


def test_pareto_front_keeps_ties_and_drops_dominated_points() -> None:
    points = [
        (1.0, 0.50),  # 0 fastest
        (2.0, 0.60),  # 1
        (2.0, 0.55),  # 2 same latency as 1, lower mAP: dominated
        (3.0, 0.60),  # 3 slower than 1 for the same mAP: dominated
        (1.0, 0.50),  # 4 identical to 0: neither dominates the other
        (4.0, 0.70),  # 5 slowest, best
        (1.5, 0.40),  # 6 slower and worse than 0: dominated
    ]
    assert pareto_front(points) == [0, 4, 1, 5]
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 0.1)]) == [0]


# -------------------------------------------------------------------------------------------- suite


@pytest.fixture(scope="module")
def suite_dir(one_thread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    Suite(MICRO, out, run=main, echo=lambda _: None).run()
    return out


def test_suite_report(suite_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(suite_dir)]) == 0
    printed = capsys.readouterr().out
    out = suite_dir / "report"
    assert printed.splitlines()[0] == f"suite folder: {suite_dir}"
    names = ("pareto.png", "latency.png", "channels.png", "gamma.png")
    for name in names:
        assert_png(out / name)
        assert f"wrote {out / name}" in printed
    markdown = (out / "report.md").read_text()
    assert linked_images(markdown) == {p.name for p in out.glob("*.png")} == set(names)
    assert "| prune-slim | ok |" in markdown and "## Pareto front" in markdown
    assert "host (onnxruntime, edgeyolo-res @ 64)" in markdown
    rows = {r["name"]: r for r in json.loads((suite_dir / "suite.json").read_text())["rows"]}
    timed = [(r["latency_ms"], r["map50"]) for r in rows.values()]
    front = [list(rows)[i] for i in pareto_front(timed)]
    listed = markdown.split("## Pareto front")[1].split("## Figures")[0]
    assert [line[2:].split(":")[0] for line in listed.splitlines() if line.startswith("- ")] == front


def test_suite_report_without_a_sparse_checkpoint_leaves_gamma_out(suite_dir: Path, tmp_path: Path) -> None:
    # the same suite.json, with only the pruned cfg and the baseline to compare it against
    (tmp_path / "runs" / "baseline").mkdir(parents=True)
    (tmp_path / "prune" / "slim").mkdir(parents=True)
    (tmp_path / "suite.json").write_bytes((suite_dir / "suite.json").read_bytes())
    (tmp_path / "runs" / "baseline" / "best.safetensors").write_bytes((suite_dir / "runs" / "baseline" / "best.safetensors").read_bytes())
    (tmp_path / "prune" / "slim" / "model.cfg").write_bytes((suite_dir / "prune" / "slim" / "model.cfg").read_bytes())
    report = make_report(tmp_path, tmp_path / "elsewhere")
    assert report.kind == "suite" and report.out == tmp_path / "elsewhere"
    assert {p.name for p in report.files} == {"pareto.png", "latency.png", "channels.png", "report.md"}
    markdown = (tmp_path / "elsewhere" / "report.md").read_text()
    assert linked_images(markdown) == {"pareto.png", "latency.png", "channels.png"}
    assert "gamma.png: runs/sparse holds no checkpoint" in markdown


def _conv(filters: str, size: int = 3, stride: int = 1) -> str:
    """One darknet conv section; ``filters`` may be a ``{placeholder}`` filled in by ``str.format``."""
    return f"\n[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation=leaky\n"


_NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"
_CFG = _NET + _conv("{a}") + _conv("{b}", stride=2)
_BLOCK = _conv("{c}", size=1) + _conv("{b}") + "\n[shortcut]\nfrom=-3\nactivation=linear\n"


def test_channels_match_by_order_only_when_the_layer_counts_agree(tmp_path: Path) -> None:
    reference = parse_cfg_text(_CFG.format(a=16, b=32) + _BLOCK.format(b=32, c=16) + _BLOCK.format(b=32, c=16))
    channel_pruned = parse_cfg_text(_CFG.format(a=8, b=24) + _BLOCK.format(b=24, c=4) + _BLOCK.format(b=24, c=12))
    layer_pruned = parse_cfg_text(_CFG.format(a=16, b=32) + _BLOCK.format(b=32, c=16))
    same = compare_channels("prune-slim", reference, channel_pruned)
    assert same.matched and same.before == [16, 32, 16, 32, 16, 32] and same.after == [8, 24, 4, 24, 12, 24]
    assert same.kept == pytest.approx(96 / 144)
    fewer = compare_channels("prune-layer", reference, layer_pruned)
    assert not fewer.matched and fewer.after == [16, 32, 16, 32]
    assert_png(plot_channels([same, fewer], "sparse", tmp_path / "channels.png"))


# -------------------------------------------------------------------------------------------- build


def _manifest() -> dict:
    """What edgeyolo.pipeline.Build._write_manifest writes, for a build deployed to a board whose
    tegrastats reported power for the one-stream phase but not for the four-stream one."""
    return {
        "edgeyolo": "0.0.0", "target": "jetson-nano", "precision": "fp16", "demo": False,
        "request": {"cfg": "edgeyolo-res", "device": "nano1", "out": "build"}, "recipe": {"img_size": 160},
        "stages": [
            {"name": "adapt", "status": "skipped", "key": "", "reason": "jetson-nano runs the cfg as it is", "wall_s": 0.0,
             "metrics": {}, "outputs": {}},
            {"name": "train", "status": "done", "key": "k1", "reason": "", "wall_s": 12.5,
             "metrics": {"epochs": 2, "val_map50_last_epoch": 0.31, "map50": 0.31, "map50_95": 0.12, "params": 1704265, "bflops": 0.7},
             "outputs": {"model": "."}},
            {"name": "prune", "status": "done", "key": "k2", "reason": "", "wall_s": 1.0,
             "metrics": {"map50": 0.22, "map50_95": 0.08, "params": 1293481, "bflops": 0.3}, "outputs": {"model": "."}},
            {"name": "export", "status": "cached", "key": "k3", "reason": "", "wall_s": 2.0,
             "metrics": {"command.trtexec": "trtexec --onnx=model.onnx --fp16"}, "outputs": {"onnx": "model.onnx"}},
            {"name": "deploy", "status": "done", "key": "k4", "reason": "", "wall_s": 40.0,
             "metrics": {"device": "nano1", "partial": False, "fps_1_streams": 20.0, "latency_p50_ms_1_streams": 48.5,
                         "fps_4_streams": 31.0, "latency_p50_ms_4_streams": 120.0},
             "outputs": {"bench": "bench.json"}},
        ],
        "commands": {"trtexec": "trtexec --onnx=model.onnx --fp16"},
        "artifact": "build/stages/06-export/model.onnx", "failed": None, "wall_s": 55.5,
    }


def _phase(streams: int, fps: float, power_w: float | None) -> dict:
    return {"streams": streams, "frames": int(fps * 10), "seconds": 10.0, "latency_ms": {"p50": 1000 * streams / fps, "p90": 60.0, "p99": 70.0, "mean": 50.0},
            "pre_ms": 2.0, "infer_ms": 30.0, "post_ms": 3.0, "complete": True, "power_w": power_w, "errors": [], "fps": fps,
            "fps_per_w": fps / power_w if power_w else None}


def test_build_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _manifest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    deploy = tmp_path / "stages" / "07-deploy"
    deploy.mkdir(parents=True)
    (deploy / "stage.json").write_text(json.dumps({**manifest["stages"][-1]}))
    (deploy / "bench.json").write_text(json.dumps({"device": "nano1", "phases": [_phase(1, 20.0, 5.0), _phase(4, 31.0, None)]}))
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"build folder: {tmp_path}"
    assert_png(tmp_path / "stages.png")
    assert_png(tmp_path / "device.png")
    markdown = (tmp_path / "report.md").read_text()
    assert markdown.startswith(report_markdown(manifest).rstrip("\n"))
    assert linked_images(markdown) == {"stages.png", "device.png"}
    device = markdown.split("## Device")[1].split("## Figures")[0]
    assert "| deploy | nano1 | 1 | 20.00 | 48.50 | 5.00 | 4.00 |" in device
    assert "| deploy | nano1 | 4 | 31.00 | 120.00 |  | no power reading |" in device
    assert f"- deploy, 4 streams: {NO_POWER}" in device and "1 stream:" not in device
    assert NO_POWER == "FPS/W: no power reading (the board's tegrastats did not report a rail)"


def test_a_build_without_board_numbers_has_no_device_section(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest["stages"] = manifest["stages"][:-1]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    report = make_report(tmp_path, tmp_path / "out", build_markdown=report_markdown)
    assert [p.name for p in report.files] == ["stages.png", "report.md"]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Device" not in markdown and linked_images(markdown) == {"stages.png"}


def test_device_points_read_the_results_database_form() -> None:
    stage = {"name": "bench", "metrics": {"device": "orin", "fps": 100.0, "latency_ms": {"p50": 9.5}, "power_w": 10.0,
                                          "streams": {"4": {"fps": 250.0, "latency_ms": {"p50": 16.0}}}}}
    one, four = device_points(stage)
    assert (one.streams, one.fps, one.latency_p50_ms, one.power_w, one.fps_per_w) == (1, 100.0, 9.5, 10.0, 10.0)
    assert (four.streams, four.fps, four.power_w, four.fps_per_w) == (4, 250.0, None, None)
    assert device_points({"name": "train", "metrics": {"map50": 0.3, "latency_target_ms": 5.0}}) == []


# -------------------------------------------------------------------------------------------- train

_EPOCH_KEYS = ["epoch", "lr", "loss_box", "loss_obj", "loss_cls", "map50", "map50_95", "precision", "recall", "seconds", "images_per_s", "data_wait"]
_SPARSE_KEYS = ["count", "frac_lt_1e-2", "frac_lt_1e-3", "max", "mean", "p1", "p25", "p5", "p50", "p75", "p95", "s"]


def _train_run(folder: Path, sparse: bool) -> Path:
    """config.json + metrics.csv laid out as edgeyolo.train.trainer writes them."""
    folder.mkdir(parents=True)
    config = TrainConfig(data="data.yaml", cfg="edgeyolo-res", epochs=3, img_size=64, name="sparse", sparse=sparse, s=0.01, prune=1 if sparse else 0)
    (folder / "config.json").write_text(config.to_json())
    with (folder / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_EPOCH_KEYS + ([f"sparsity.{k}" for k in _SPARSE_KEYS] if sparse else []))
        for epoch, (map50, frac) in enumerate(((0.10, 0.0), (0.30, 0.2), (0.25, 0.6))):
            row = [epoch, 0.01, 0.1 - epoch * 0.01, 3.0 - epoch, 0.2, map50, map50 / 3, 0.5, 0.4, 12.0, 40.0, 0.05]
            if sparse:
                row += [1664, frac, frac / 2, 1.2, 0.5, 0.0, 0.3, 0.1, 0.5, 0.8, 1.1, 0.01 * (1 - epoch / 3)]
            writer.writerow(row)
    return folder


def test_train_report(tmp_path: Path) -> None:
    run = _train_run(tmp_path / "sparse", sparse=True)
    assert main(["report", str(run)]) == 0
    out = run / "report"
    assert_png(out / "curves.png")
    assert_png(out / "sparsity.png")
    markdown = (out / "report.md").read_text()
    assert linked_images(markdown) == {"curves.png", "sparsity.png"}
    assert "epoch   2  lr 0.01000" in markdown and "γ<1e-2 60.0%" in markdown  # the trainer's own epoch line
    assert "data wait 5%" in markdown
    assert "best mAP@0.5: 0.3000 at epoch 1" in markdown


def test_epoch_lines_of_a_run_from_before_the_data_wait_column() -> None:
    from edgeyolo.bench.report import _epoch_line

    row = dict(zip(_EPOCH_KEYS[:-1], [2, 0.01, 0.08, 1.0, 0.2, 0.25, 0.08, 0.5, 0.4, 12.0, 40.0]))
    line = _epoch_line(row)
    assert line.startswith("epoch   2  lr 0.01000") and "(40.0 img/s)" in line and "data wait" not in line


def test_train_report_without_sparsity_columns(tmp_path: Path) -> None:
    run = _train_run(tmp_path / "plain", sparse=False)
    report = make_report(run)
    assert report.kind == "train" and [p.name for p in report.files] == ["curves.png", "report.md"]
    assert linked_images((run / "report" / "report.md").read_text()) == {"curves.png"}


# ---------------------------------------------------------------------------------------- bad input


def test_an_unknown_folder_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert all(name in err for name in ("suite.json", "manifest.json", "config.json + metrics.csv"))
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    (tmp_path / "config.json").write_text("{}")  # a training run cut before its first epoch
    with pytest.raises(UsageError, match="expected suite.json"):
        make_report(tmp_path)


def test_history_report_draws_one_pareto_per_target(tmp_path: Path, capsys) -> None:
    from edgeyolo.bench.report import history_points
    from edgeyolo.bench.results import ResultsStore

    db = tmp_path / "results.sqlite"

    def run(target: str, artifact: str, p50: float, map50: float | None = None, power: float | None = None) -> dict:
        metrics: dict = {"fps": 1000 / p50, "latency_ms": {"p50": p50}}
        if map50 is not None:
            metrics["map50"] = map50
        if power is not None:
            metrics.update(power_w=power, fps_per_w=1000 / p50 / power)
        return {"kind": "board", "target": target, "device": "b1", "artifact": artifact, "metrics": metrics}

    with ResultsStore(db) as store:
        for rec in (
            run("jetson-nano", "full.engine", 40.0, 0.50, 5.0), run("jetson-nano", "full.engine", 44.0),  # mAP on the first run only
            run("jetson-nano", "pruned.engine", 25.0, 0.48, 4.0),
            run("jetson-nano", "worse.engine", 30.0, 0.40),  # slower and less accurate than pruned: dominated
            run("zcu104", "dpu.xmodel", 12.0, 0.45),
            run("zcu104", "no-map.xmodel", 10.0),  # no accuracy recorded: not a point
        ):
            store.add_run(rec)
        points = {(p.target, p.artifact): p for p in history_points(store.runs())}
    assert set(points) == {("jetson-nano", "full.engine"), ("jetson-nano", "pruned.engine"), ("jetson-nano", "worse.engine"), ("zcu104", "dpu.xmodel")}
    full = points[("jetson-nano", "full.engine")]
    assert full.runs == 2 and full.latency_ms == 42.0 and full.map50 == 0.50 and full.fps_per_w == pytest.approx(25 / 5)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "rep")]) == 0
    for name in ("pareto-jetson-nano.png", "pareto-zcu104.png"):
        assert (tmp_path / "rep" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "rep" / "report.md").read_text()
    rows = {line.split("|")[2].strip(): line for line in markdown.splitlines() if line.startswith("| b1 |")}
    assert rows["worse.engine"].rstrip().endswith("|  |") and rows["pruned.engine"].rstrip().endswith("| yes |")
    assert "no power reading" in rows["worse.engine"] and "| 10 |" in rows["pruned.engine"]  # 40 fps / 4 W
    capsys.readouterr()
    assert main(["report"]) == 2 and "not both" in capsys.readouterr().err
    assert main(["report", "--db", str(tmp_path / "none.sqlite")]) == 2
