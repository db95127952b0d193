"""The compression table end to end: ``edgeyolo bench suite --preset smoke|full``.

Every row is an edgeyolo command line, run exactly as printed (the CLI hands this module its own
``main``), and the model it writes is then measured the same way: parameters, BFLOPs at the preset's
size, onnxruntime latency (median and p90 of the inference stage), mAP@0.5 and mAP@0.5:0.95 on the
synthetic val split. Rows, in order:

    baseline        train from scratch
    sparse          sparse training of the baseline (polarization, --prune 1)
    prune-M         each pruning method on the sparse model, and ft-M: that model fine-tuned
    kd-K            the slim-pruned model fine-tuned with --KDstr K, the sparse model as teacher
    ptq-*           post-training quantization of the baseline (each calibration method; pow2)
    qat-*           quantization-aware fine-tuning of the baseline (affine, pow2; 8 and 4 bit)

A failed command is a row with its exit code, and the rows that need its output say so; the suite
goes on. ``smoke`` is a plumbing check that fits in minutes on two cores and is labelled not
representative; ``full`` gives the numbers worth publishing.

A ``full`` run takes hours on a small machine, so the suite resumes: each finished row leaves a
record under ``steps/`` (its command and measurements), and running the same preset into the same
folder again reuses every row whose recorded command is unchanged and whose outputs still exist.
A row cut off mid-way has no record and runs again from its start; so does every row after a
changed one, since its inputs changed. Timing is never reused: all rows are re-timed together.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgeyolo.errors import UsageError

SUITE_FILE = "suite.json"
TABLE_FILE = "suite.md"
STEPS_DIR = "steps"
_MEASURED = ("params", "bflops", "map50", "map50_95")


@dataclass(frozen=True)
class Preset:
    name: str
    representative: bool
    cfg: str = "edgeyolo-res"
    img_size: int = 160
    train_images: int = 2000
    val_images: int = 300
    base_epochs: int = 20
    sparse_epochs: int = 10
    finetune_epochs: int = 3
    qat_epochs: int = 2
    s: float = 0.05
    percent: float = 0.6
    percents: tuple[tuple[str, str], ...] = ()  # per-method overrides of percent ("auto": the largest safe)
    methods: tuple[str, ...] = ("normal", "regular", "shortcut", "slim", "group", "layer", "layer-channel")
    kd_strategies: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    ptq_methods: tuple[str, ...] = ("minmax", "percentile", "entropy", "mse")
    qat: tuple[tuple[str, int], ...] = (("affine", 8), ("pow2", 8), ("affine", 4), ("pow2", 4))
    calib_images: int = 200
    latency_runs: int = 30
    batch_size: int = 16
    workers: int = 2
    seed: int = 0


PRESETS = {
    "smoke": Preset(
        "smoke", False, img_size=96, train_images=48, val_images=16, base_epochs=1, sparse_epochs=1,
        finetune_epochs=1, qat_epochs=1, percent=0.3, methods=("normal", "regular", "slim", "layer"),
        percents=(("normal", "auto"), ("regular", "auto")),  # one epoch leaves γ unsparse: 0.3 is not safe there
        kd_strategies=(1, 6), ptq_methods=("minmax", "percentile"), qat=(("affine", 8), ("pow2", 8)),
        calib_images=16, latency_runs=5, workers=0,
    ),
    "full": Preset("full", True),
}


@dataclass
class Row:
    name: str
    command: str
    status: str = "ok"  # ok | failed (exit N) | skipped: why
    params: Optional[int] = None
    bflops: Optional[float] = None
    latency_ms: Optional[float] = None
    latency_p90_ms: Optional[float] = None
    map50: Optional[float] = None
    map50_95: Optional[float] = None
    epochs: int = 0
    seed: int = 0
    wall_s: float = 0.0
    notes: dict = field(default_factory=dict)


@dataclass
class _Model:
    """Where a row's model lives: a cfg + weights pair, or a quantized folder."""

    cfg: Optional[Path] = None
    weights: Optional[Path] = None
    quantized: Optional[Path] = None


class Suite:
    """Runs a preset's commands through ``run`` (the CLI's ``main``) and measures what they write."""

    def __init__(self, preset: Preset, out: Path, run: Callable[[list[str]], int], echo: Callable[[str], None] = print):
        self.p = preset
        self.out = Path(out)
        self.run_cli = run
        self.echo = echo
        self.rows: list[Row] = []
        self.models: dict[str, _Model] = {}
        self.onnx: dict[str, Path] = {}
        self._val = None
        self._rerun = False  # once a row runs again, every later row does too (its inputs may differ)

    # ------------------------------------------------------------------ driver

    def run(self) -> list[Row]:
        p = self.p
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.data = self._dataset()
        runs = self.out / "runs"
        common = ["--data", str(self.data), "--img-size", str(p.img_size), "--batch-size", str(p.batch_size),
                  "--workers", str(p.workers), "--seed", str(p.seed), "--out", str(runs)]
        self._train("baseline", ["--cfg", p.cfg, "--epochs", str(p.base_epochs), *common, "--name", "baseline"], p.base_epochs, best=True)
        self._train(
            "sparse", [*self._start("baseline"), "--epochs", str(p.sparse_epochs), "-sr", "--s", str(p.s), "--prune", "1",
                       "--sr-penalty", "polar", *common, "--name", "sparse"], p.sparse_epochs, needs="baseline", best=False,
        )
        for method in p.methods:
            folder = self.out / "prune" / method
            percent = dict(p.percents).get(method, str(p.percent))
            extra = ["--shortcuts", "1"] if method == "layer" else ["--percent", percent]
            if method == "layer-channel":
                extra += ["--shortcuts", "1"]
            self._step(f"prune-{method}", ["prune", method, *self._weights("sparse"), *extra, "--out", str(folder)],
                       _Model(folder / "model.cfg", folder / "model.safetensors"), needs="sparse")
            self._train(f"ft-{method}", [*self._start(f"prune-{method}"), "--epochs", str(p.finetune_epochs), *common, "--name", f"ft-{method}"],
                        p.finetune_epochs, needs=f"prune-{method}", best=True)
        student = "prune-slim" if "slim" in p.methods else f"prune-{p.methods[0]}"
        for k in p.kd_strategies:
            teacher = self.models.get("sparse")
            kd = ["--t-weights", str(teacher.weights), "--KDstr", str(k)] if teacher else []
            self._train(f"kd-{k}", [*self._start(student), *kd, "--epochs", str(p.finetune_epochs), *common, "--name", f"kd-{k}"],
                        p.finetune_epochs, needs=student, best=True, also="sparse")
        for method in p.ptq_methods:
            for pow2 in (False, True):
                name = f"ptq-{method}" + ("-pow2" if pow2 else "")
                folder = self.out / "quant" / name
                self._step(name, ["quantize", *self._weights("baseline"), "--calib", str(self.data), "--images", str(p.calib_images),
                                  "--method", method, *(["--pow2"] if pow2 else []), "--img-size", str(p.img_size), "--out", str(folder)],
                           _Model(quantized=folder), needs="baseline")
        for scheme, bits in p.qat:
            name = f"qat-{scheme}-w{bits}a{bits}"
            self._train(name, [*self._start("baseline"), "--quantized", scheme, "--w-bit", str(bits), "--a-bit", str(bits),
                               "--epochs", str(p.qat_epochs), *common, "--name", name], p.qat_epochs, needs="baseline", best=True, quant=True)
        self.echo("timing every row's ONNX in onnxruntime, interleaved")
        self._time_all()
        self._write(time.perf_counter() - start)
        return self.rows

    # ------------------------------------------------------------------ steps

    def _dataset(self) -> Path:
        from edgeyolo.data.synth import make_synthetic
        from edgeyolo.model.checkpoint import load_model
        from edgeyolo.model.zoo import resolve_cfg

        folder = self.out / "data"
        if not (folder / "data.yaml").exists():
            classes = load_model(resolve_cfg(self.p.cfg)).num_classes
            make_synthetic(folder, classes=classes, train=self.p.train_images, val=self.p.val_images, img_size=self.p.img_size, seed=self.p.seed)
        return folder / "data.yaml"

    def _weights(self, name: str) -> list[str]:
        m = self.models.get(name)
        return ["--cfg", str(m.cfg), "--weights", str(m.weights)] if m else []

    def _start(self, name: str) -> list[str]:
        return ["train", *self._weights(name)]

    def _train(self, name: str, argv: list[str], epochs: int, needs: str | None = None, best: bool = True,
               quant: bool = False, also: str | None = None) -> None:
        if argv[0] != "train":
            argv = ["train", *argv]
        run = self.out / "runs" / name
        pick = "best" if best else "last"
        model = _Model(quantized=run / f"{pick}_quant") if quant else _Model(run / "config.json", run / f"{pick}.safetensors")
        self._step(name, argv, model, needs=needs, epochs=epochs, also=also)

    def _step(self, name: str, argv: list[str], model: _Model, needs: str | None = None, epochs: int = 0, also: str | None = None) -> None:
        row = Row(name, "edgeyolo " + shlex.join(argv), epochs=epochs, seed=self.p.seed)
        self.rows.append(row)
        missing = [n for n in (needs, also) if n and n not in self.models]
        if missing:
            row.status = f"skipped: needs {', '.join(missing)}"
            self.echo(f"[{name}] {row.status}")
            return
        if model.cfg is not None and model.cfg.name == "config.json":  # a training run: its checkpoint carries the cfg
            model = _Model(None, model.weights)
        if self._reuse(row, model):
            self.echo(f"[{name}] done before, reused: {row.command}")
            return
        self._rerun = True
        self.echo(f"[{name}] {row.command}")
        t0 = time.perf_counter()
        code = self.run_cli(argv)
        row.wall_s = round(time.perf_counter() - t0, 1)
        if code != 0:
            row.status = f"failed (exit {code})"
            self._record(row, None)
            return
        self.models[name] = model if model.cfg is not None or model.quantized is not None else _Model(self._cfg_of(model.weights), model.weights)
        try:
            self._measure(row, self.models[name])
        except Exception as exc:  # a measurement problem is reported in the row, the suite goes on
            row.status = f"measured partly: {type(exc).__name__}: {exc}"
        self._record(row, self.models[name])

    # ------------------------------------------------------------------ resuming

    def _step_file(self, name: str) -> Path:
        return self.out / STEPS_DIR / f"{name}.json"

    def _record(self, row: Row, model: _Model | None) -> None:
        from edgeyolo.fileio import atomic_write_text

        doc = {
            "command": row.command, "status": row.status, "wall_s": row.wall_s, "notes": row.notes,
            "model": None if model is None else {k: None if v is None else str(v) for k, v in asdict(model).items()},
            "onnx": str(self.onnx[row.name]) if row.name in self.onnx else None,
            **{k: getattr(row, k) for k in _MEASURED},
        }
        atomic_write_text(self._step_file(row.name), json.dumps(doc, indent=1))

    def _reuse(self, row: Row, model: _Model) -> bool:
        """Take a finished row from its record when nothing it depends on ran again."""
        path = self._step_file(row.name)
        if self._rerun or not path.exists():
            return False
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return False
        if doc.get("command") != row.command:
            return False
        if doc.get("model") is None:  # a recorded failure: the same command fails the same way
            row.status, row.wall_s, row.notes = doc["status"], doc["wall_s"], {"reused": True}
            return True
        recorded = _Model(**{k: None if v is None else Path(v) for k, v in doc["model"].items()})
        files = [f for f in (recorded.cfg, recorded.weights, recorded.quantized) if f is not None]
        if not files or not all(f.exists() for f in files):
            return False
        if doc.get("onnx") and not Path(doc["onnx"]).exists():
            return False
        row.status, row.wall_s, row.notes = doc["status"], doc["wall_s"], dict(doc.get("notes") or {}, reused=True)
        for k in _MEASURED:
            setattr(row, k, doc.get(k))
        self.models[row.name] = recorded
        if doc.get("onnx"):
            self.onnx[row.name] = Path(doc["onnx"])
        return True

    @staticmethod
    def _cfg_of(weights: Path) -> Path:
        """Write a checkpoint's cfg next to it, so later commands can take --cfg."""
        from edgeyolo.fileio import atomic_write_text
        from edgeyolo.model.cfg import format_cfg
        from edgeyolo.model.checkpoint import checkpoint_cfg

        path = weights.with_suffix(".cfg")
        atomic_write_text(path, format_cfg(checkpoint_cfg(weights)))
        return path

    # ------------------------------------------------------------------ measuring

    def _load(self, m: _Model):
        if m.quantized is not None:
            from edgeyolo.compress.quant import load_quantized

            return load_quantized(m.quantized), "torch"
        from edgeyolo.model.checkpoint import load_model

        return load_model(m.cfg, m.weights), "onnxruntime"

    def _measure(self, row: Row, m: _Model) -> None:
        from edgeyolo.data.formats import load_dataset
        from edgeyolo.model.cfg import total_bflops
        from edgeyolo.runtime.evaluate import evaluate_model

        model, backend = self._load(m)
        self._export(row, model, backend)
        row.params = model.parameter_count()
        row.bflops = round(total_bflops(model.cfg, self.p.img_size), 3)
        if self._val is None:
            self._val = load_dataset(str(self.data), "val")
        result = evaluate_model(model, self._val, img_size=self.p.img_size, backend=backend).result
        row.map50, row.map50_95 = round(float(result.map50), 4), round(float(result.map50_95), 4)

    def _export(self, row: Row, model, backend: str) -> None:
        """The ONNX file the row is timed with: float export, or the QDQ int8 export of a quantized model."""
        path = self.out / "onnx" / f"{row.name}.onnx"
        if backend == "torch":
            from edgeyolo.export.qdq import export_qdq

            try:
                export_qdq(model, path, img_size=self.p.img_size)
            except Exception as exc:  # e.g. DoReFa has no Q/DQ form: the row says so and keeps its mAP
                row.notes["latency"] = f"no QDQ export: {exc}"
                return
        else:
            from edgeyolo.export.onnx import export_onnx

            export_onnx(model, path, img_size=self.p.img_size)
        self.onnx[row.name] = path

    def _time_all(self) -> None:
        """Every row's ONNX file in onnxruntime, the files interleaved run by run so that a busy
        machine slows them alike; the inference call only (median and p90)."""
        import numpy as np

        from edgeyolo.contract import Contract, channel_order_for
        from edgeyolo.model.init import synthetic_images
        from edgeyolo.runtime.onnxruntime import make_session, run_session

        if not self.onnx:
            return
        size = self.p.img_size
        contract = Contract(size, size, channel_order=channel_order_for(3))
        blobs = [contract.preprocess(img)[0] for img in synthetic_images(4, size, size, self.p.seed)]
        sessions = {name: make_session(path) for name, path in self.onnx.items()}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for k in range(self.p.latency_runs + 3):
            for name, session in sessions.items():
                t0 = time.perf_counter()
                run_session(session, blobs[k % len(blobs)])
                if k >= 3:  # warm-up runs are not timed
                    times[name].append(time.perf_counter() - t0)
        by_name = {r.name: r for r in self.rows}
        for name, samples in times.items():
            ms = np.asarray(samples) * 1e3
            by_name[name].latency_ms = round(float(np.median(ms)), 2)
            by_name[name].latency_p90_ms = round(float(np.percentile(ms, 90)), 2)

    # ------------------------------------------------------------------ output

    def _write(self, wall_s: float) -> None:
        from edgeyolo.fileio import atomic_write_text

        doc = {"preset": asdict(self.p), "wall_s": round(wall_s, 1), "rows": [asdict(r) for r in self.rows]}
        atomic_write_text(self.out / SUITE_FILE, json.dumps(doc, indent=1, default=str))
        atomic_write_text(self.out / TABLE_FILE, table_markdown(self.p, self.rows, wall_s))


def table_markdown(preset: Preset, rows: list[Row], wall_s: float) -> str:
    head = f"# edgeyolo bench suite --preset {preset.name}"
    lines = [head, ""]
    if not preset.representative:
        lines += ["**Not representative**: a smoke run (tiny set, one epoch per stage) that checks the plumbing.", ""]
    lines += [
        f"{preset.cfg} @ {preset.img_size} px, synthetic set ({preset.train_images} train / {preset.val_images} val), seed {preset.seed}; "
        f"wall time {wall_s / 60:.1f} min" + _reused_note(rows) + ".",
        "",
        "| row | status | params | BFLOPs | latency ms (p50 / p90) | mAP@0.5 | mAP@0.5:0.95 | epochs | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat = f"{r.latency_ms} / {r.latency_p90_ms}" if r.latency_ms is not None else ""
        params = f"{r.params / 1e6:.3f}M" if r.params else ""
        lines.append(
            f"| {r.name} | {r.status} | {params} | {r.bflops if r.bflops is not None else ''} | {lat} | "
            f"{'' if r.map50 is None else f'{r.map50:.3f}'} | {'' if r.map50_95 is None else f'{r.map50_95:.3f}'} | {r.epochs} | {r.wall_s} |"
        )
    lines += ["", "## Commands", ""] + [f"- {r.name}: `{r.command}`" for r in rows] + [""]
    return "\n".join(lines)


def _reused_note(rows: list[Row]) -> str:
    reused = [r for r in rows if r.notes.get("reused")]
    if not reused:
        return ""
    total = sum(r.wall_s for r in rows) / 60
    return f" (this invocation; {len(reused)} rows reused from an earlier one; the rows' own commands took {total:.1f} min)"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"--preset must be one of {', '.join(PRESETS)}, got '{name}'")
    return PRESETS[name]
