"""One ``edgeyolo build``: the source model, then each registered stage run or reused, then the manifest."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from edgeyolo.fileio import atomic_write_text
from edgeyolo.pipeline import stages as _built_in  # noqa: F401  (registers the built-in stages, in order)
from edgeyolo.pipeline.core import (
    MANIFEST_FILE,
    MODEL_CFG,
    MODEL_WEIGHTS,
    REPORT_FILE,
    STAGE_FILE,
    Artifact,
    BuildRequest,
    StageRecord,
    stage_key,
)
from edgeyolo.pipeline.evaluation import fp16_rounded, size_metrics
from edgeyolo.pipeline.recipe import DEMO_CFG
from edgeyolo.pipeline.report import report_markdown
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage

HEARTBEAT_S = 25.0  # at most this long without a line while a stage runs


class Build:
    """One ``edgeyolo build``: plans the stages, runs or reuses each, writes the manifest."""

    def __init__(self, request: BuildRequest, echo: Callable[[str], None] = lambda _: None):
        from edgeyolo.targets.profiles import get_target

        self.request = request
        self.recipe = request.recipe
        self._echo = echo
        self._last_echo = time.monotonic()
        self.profile = get_target(request.target)
        self.precision = self.profile.check_precision(request.precision or self.profile.default_precision).value
        self.out = Path(request.out)
        self.records: list[StageRecord] = []
        self.commands: dict[str, str] = {}
        self._dataset_cache: dict[str, Any] = {}
        self._data_checked = False
        self.weights = request.weights
        if self.weights is None and request.demo:
            from edgeyolo.model.zoo import demo_checkpoint

            self.weights = str(demo_checkpoint())

    def echo(self, line: str) -> None:
        self._last_echo = time.monotonic()
        self._echo(line)

    @contextlib.contextmanager
    def _heartbeat(self, stage: str, every: float = HEARTBEAT_S):
        """While a stage runs, say so whenever ``every`` seconds pass without a line (a log file or CI
        shows no progress bar, and a silent 5-minute stage looks hung)."""
        start, done = time.monotonic(), threading.Event()

        def beat() -> None:
            while not done.wait(1.0):
                if time.monotonic() - self._last_echo >= every:
                    self.echo(f"  [{stage}] running, {time.monotonic() - start:.0f} s")

        thread = threading.Thread(target=beat, name=f"heartbeat-{stage}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    # ------------------------------------------------------------------ plan

    def plan(self) -> list[tuple[str, str | None]]:
        """(stage, reason it is skipped or None) for every stage."""
        return [(name, reason) for name, _, reason in self._planned()]

    def _planned(self) -> list[tuple[str, Stage, str | None]]:
        stages = [(name, cls()) for name, cls in BUILD_STAGES.in_order()]
        return [(name, stage, stage.skip_reason(self)) for name, stage in stages]

    @property
    def has_data(self) -> bool:
        """A dataset to train, calibrate and score on: ``--data`` or the demo's synthetic set."""
        return self.request.data is not None or self.request.demo

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        upstream = stage_key("source", {"cfg": str(self.cfg_path()), "seed": self.recipe.seed, "size": self.recipe.img_size}, "", self._source_inputs())
        with self._heartbeat("source"):
            if self.request.demo:
                self.echo("[data] the synthetic set (data synth defaults: 12 classes, 2000 train / 300 val, seed 0)")
                self.data()
            art = self._source(upstream)
        for name, stage, reason in self._planned():
            if reason is not None:
                self.records.append(StageRecord(name, "skipped", reason=reason))
                self.echo(f"[{name}] skipped: {reason}")
                continue
            folder = self.stage_folder(name)
            key = stage_key(name, stage.params(self), upstream, self._inputs(art))
            cached = self._cached(folder, key, art)
            if cached is not None:
                record, art = cached
                self.echo(f"[{name}] cached ({key[:12]})")
            else:
                self.echo(f"[{name}] running")
                t0 = time.perf_counter()
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                try:
                    with self._heartbeat(name):
                        art, metrics = stage.run(self, art, folder)
                except BaseException:
                    self.records.append(StageRecord(name, "failed", key=key))
                    self._write_manifest(time.perf_counter() - start, failed=name)
                    raise
                record = StageRecord(name, "done", key, wall_s=round(time.perf_counter() - t0, 2), metrics=metrics)
                record.outputs = self._outputs(art, folder)
                atomic_write_text(folder / STAGE_FILE, json.dumps(asdict(record), indent=1, sort_keys=True))
            self.records.append(record)
            for k, v in record.metrics.items():
                if k.startswith("command."):
                    self.commands[k[len("command."):]] = v
            upstream = key
        return self._write_manifest(time.perf_counter() - start, final=art)

    def stage_folder(self, name: str) -> Path:
        """``stages/NN-name``, numbered by the stage's place in the registry."""
        index = [n for n, _ in BUILD_STAGES.in_order()].index(name)
        return self.out / "stages" / f"{index:02d}-{name}"

    def _cached(self, folder: Path, key: str, upstream: Artifact) -> tuple[StageRecord, Artifact] | None:
        """The stage's record and artifact when its folder holds a finished run with this key; a stage
        that wrote no model passes on the model it was given, as it did when it ran."""
        path = folder / STAGE_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        outputs = data.get("outputs", {})
        if not all((folder / rel).exists() for rel in outputs.values()):
            return None
        record = StageRecord(**{**data, "status": "cached"})
        art = Artifact(folder if "model" in outputs else None, {k: str(folder / v) for k, v in outputs.items() if k != "model"})
        if art.folder is None:
            art.folder = upstream.folder
        return record, art

    def _outputs(self, art: Artifact, folder: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        if art.folder is not None and art.folder.resolve() == folder.resolve():
            out["model"] = "."
        for role, path in art.files.items():
            p = Path(path)
            if p.resolve().is_relative_to(folder.resolve()):
                out[role] = str(p.resolve().relative_to(folder.resolve()))
        return out

    # ------------------------------------------------------------------ inputs

    def cfg_path(self) -> Path:
        from edgeyolo.model.zoo import resolve_cfg

        return resolve_cfg(self.request.cfg or DEMO_CFG)

    def _source_inputs(self) -> list[Path]:
        paths = [self.cfg_path()]
        if self.weights:
            paths.append(Path(self.weights))
        return paths

    def _source(self, key: str) -> Artifact:
        """The starting model as a model folder (cfg + safetensors) inside the build folder; written
        once per key, so the stages after it see the same bytes."""
        from edgeyolo.model.cfg import format_cfg
        from edgeyolo.model.checkpoint import load_model, save_checkpoint

        folder = self.out / "stages" / "source"
        marker = folder / STAGE_FILE
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("key") == key:
                self.records.append(StageRecord("source", "cached", key, metrics=done.get("metrics", {})))
                return Artifact(folder)
        t0 = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        model = load_model(self.cfg_path(), self.weights)
        if self.weights is None:
            from edgeyolo.contract import Contract, channel_order_for
            from edgeyolo.model.init import calibration_batch, random_init, synthetic_images

            size = self.recipe.img_size
            contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
            random_init(model, calibration_batch(contract, synthetic_images(8, size, size, self.recipe.seed)), seed=self.recipe.seed)
        atomic_write_text(folder / MODEL_CFG, format_cfg(model.cfg))
        save_checkpoint(model, folder / MODEL_WEIGHTS)
        self.echo("[source] scoring the starting model" if self.evaluating() else "[source] written")
        metrics = {"weights": Path(self.weights).name if self.weights else "random init", **self.evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}
        self.records.append(StageRecord("source", "done", key, wall_s=round(time.perf_counter() - t0, 2), metrics=metrics))
        atomic_write_text(marker, json.dumps({"key": key, "metrics": metrics}))
        return Artifact(folder)

    def _inputs(self, art: Artifact) -> list[Path]:
        paths = [art.cfg, art.weights] if art.folder is not None else []
        return paths + [Path(p) for p in art.files.values() if Path(p).is_file()]

    def multiple(self) -> int:
        """The channel multiple pruning keeps: the recipe's, or the target's at the build's precision."""
        return self.recipe.multiple or self.profile.channel_multiples[self.profile.check_precision(self.precision)]

    def quantizes_at_export(self) -> bool:
        """True when the target's int8 layout is written from the float model at export (host)."""
        from edgeyolo.export.int8_layouts import INT8_LAYOUTS

        return self.precision == "int8" and self.profile.int8_layout is not None and INT8_LAYOUTS.get(self.profile.int8_layout).quantizes_at_export

    def data(self) -> str:
        if self.request.data:
            return self.request.data
        return str(self._demo_data())

    def _demo_data(self) -> Path:
        from edgeyolo.data.synth import make_synthetic
        from edgeyolo.model.checkpoint import load_model

        folder = self.out / "demo-data"
        if not (folder / "data.yaml").exists():  # the set the demo checkpoint was trained on: synth's defaults
            classes = load_model(self.cfg_path()).num_classes
            make_synthetic(folder, classes=classes, seed=0, workers=max(1, self.recipe.workers))
        return folder / "data.yaml"

    def check_data(self) -> None:
        """Check the training split's labels once per build, strictly (broken labels fail before training)."""
        if not self._data_checked:
            from edgeyolo.data.check import check_dataset

            check_dataset(self.data(), split="train", decode=False, hash_images=False, strict=True)
            self._data_checked = True

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, cfg: Path, weights: Path) -> dict[str, Any]:
        """mAP and size of a model folder's model, or nothing when the build does not score."""
        from edgeyolo.model.checkpoint import load_model

        return self.evaluate_model(load_model(cfg, weights)) if self.evaluating() else {}

    def evaluating(self) -> bool:
        return self.recipe.evaluate and bool(self.request.data or self.request.demo)

    def evaluate_model(self, model, backend: str = "onnxruntime") -> dict[str, Any]:
        """mAP on the val split (the test command's evaluation), with the model's size."""
        from edgeyolo.runtime.evaluate import evaluate_model

        result = evaluate_model(model, self._val_dataset(), img_size=self.recipe.img_size, backend=backend).result
        return {"map50": round(float(result.map50), 4), "map50_95": round(float(result.map50_95), 4), **size_metrics(model, self.recipe.img_size)}

    def _val_dataset(self):
        from edgeyolo.data.formats import load_dataset

        key = self.data()
        if key not in self._dataset_cache:
            dataset = load_dataset(key, "val")
            if self.recipe.max_val_images:
                dataset = dataclasses.replace(dataset, samples=dataset.samples[: self.recipe.max_val_images])
            self._dataset_cache[key] = dataset
        return self._dataset_cache[key]

    def evaluate_onnx(self, path: Path, channels: int, fp16: bool) -> dict[str, Any]:
        """mAP of an exported ONNX file in onnxruntime, as ``edgeyolo test --backend onnxruntime`` scores it.
        ``fp16``: the weights are rounded to fp16 first (activations stay fp32): the host's stand-in for
        TensorRT's fp16 engine, labelled as such in the report."""
        import tempfile

        from edgeyolo.runtime.evaluate import evaluate_runner, evaluation_contract
        from edgeyolo.runtime.runners import OnnxRuntimeRunner

        contract = evaluation_contract(self.recipe.img_size, channels)
        with tempfile.TemporaryDirectory() as tmp:
            run_path = fp16_rounded(path, Path(tmp) / path.name) if fp16 else path
            with OnnxRuntimeRunner(run_path, contract) as runner:
                result = evaluate_runner(runner, contract, self._val_dataset()).result
        label = "onnxruntime, fp16-rounded weights (fp32 activations)" if fp16 else "onnxruntime"
        return {"map50": round(float(result.map50), 4), "map50_95": round(float(result.map50_95), 4), "scored_with": label}

    # ------------------------------------------------------------------ manifest

    def _write_manifest(self, wall_s: float, final: Artifact | None = None, failed: str | None = None) -> dict[str, Any]:
        from edgeyolo import __version__

        manifest = {
            "edgeyolo": __version__,
            "target": self.profile.name,
            "precision": self.precision,
            "demo": self.request.demo,
            "request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.request).items() if k != "recipe"},
            "recipe": self.recipe.to_dict(),
            "stages": [asdict(r) for r in self.records],
            "commands": self.commands,
            "artifact": (final.files.get("onnx") or final.files.get("vitis")) if final else None,
            "failed": failed,
            "wall_s": round(wall_s, 1),
        }
        atomic_write_text(self.out / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True, default=str))
        atomic_write_text(self.out / REPORT_FILE, report_markdown(manifest))
        return manifest
