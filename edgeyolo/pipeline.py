"""``edgeyolo build``: a target's recipe of stages, each cached by the hash of its inputs.

Stages, in order (a stage that does not apply is recorded as skipped, with the reason):

    adapt     rewrite the cfg for what the target can run (``edgeyolo adapt``)
    source    the starting model: the given weights, the demo's shipped checkpoint, or seeded random init
    train     train from scratch or fine-tune the given weights (``train_epochs`` > 0)
    sparse    sparse training of the prunable BN γ (``sparse_epochs`` > 0)
    prune     channel pruning at the target's channel multiple
    finetune  fine-tune the pruned model (distilled from the unpruned one with ``kd``)
    quantize  int8 post-training quantization (int8 precision only)
    export    the artifact the target runs: ONNX (fp32/fp16: TensorRT builds the engine on the
              board), QDQ ONNX (int8)
    deploy    upload + benchmark (FPS, latency, mAP) on a named device

A stage's key is the sha256 of its name, its parameters, the key of the stage before it and the
sha256 of the files it reads. Its folder ``stages/NN-name/`` holds its outputs and ``stage.json``,
written last; a later build with the same key reuses the folder instead of running the stage. The
build folder gets ``manifest.json`` (every stage: status, key, wall time, metrics, outputs) and
``report.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from edgeyolo.errors import CfgError, EdgeYoloError, UsageError
from edgeyolo.model.io import atomic_write_text
from edgeyolo.model.io import sha256_file as file_sha256

STAGES = ("adapt", "train", "sparse", "prune", "finetune", "quantize", "export", "deploy")
PRECISIONS = ("fp32", "fp16", "int8")
STAGE_FILE = "stage.json"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.md"
MODEL_CFG, MODEL_WEIGHTS = "model.cfg", "model.safetensors"
HEARTBEAT_S = 25.0  # at most this long without a line while a stage runs


@dataclass(frozen=True)
class Recipe:
    """What each stage does; ``recipe.yaml`` overrides any field (unknown keys are errors)."""

    img_size: int = 416  # export and evaluation size
    train_img_size: Optional[int] = None  # the training stages' size (default: img_size)
    batch_size: int = 16
    workers: int = 2
    seed: int = 0
    cache: bool = False
    max_val_images: Optional[int] = None
    train_epochs: int = 0  # > 0: train (or fine-tune the given weights) before sparse training
    sparse_epochs: int = 0  # > 0: sparse training before pruning
    s: float = 0.001
    prune_mode: int = 1
    sr_penalty: str = "polar"
    sr_schedule: str = "constant"
    sr_target: float = 0.5  # dynamic schedule / gradual penalty: fraction of prunable γ to bring below 1e-2
    sr_ramp: float = 0.5  # gradual penalty: fraction of the sparse run by which sr_target is reached
    sr_rank: str = "magnitude"  # gradual penalty: magnitude | taylor
    aug: dict = field(default_factory=dict)  # augmentation strengths for the training stages (train --aug)
    prune_method: str = "slim"  # "none" skips pruning
    percent: Any = 0.5  # a fraction or "auto"
    multiple: Optional[int] = None  # default: the target's channel multiple
    finetune_epochs: int = 0
    kd: Optional[int] = None  # --KDstr for the fine-tune, the unpruned model as teacher
    calib_images: int = 200
    quant_method: str = "percentile"
    evaluate: bool = True  # mAP@0.5 of each stage's model on the val split (needs data)
    bench_duration: float = 10.0

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("img_size", "train_img_size"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 32):
                raise UsageError(f"recipe {name} must be a positive multiple of 32, got {value}")
        for name in ("batch_size", "calib_images"):
            if getattr(self, name) <= 0:
                raise UsageError(f"recipe {name} must be positive, got {getattr(self, name)}")
        for name in ("train_epochs", "sparse_epochs", "finetune_epochs", "workers"):
            if getattr(self, name) < 0:
                raise UsageError(f"recipe {name} must be >= 0, got {getattr(self, name)}")
        if self.prune_mode not in (0, 1, 2):
            raise UsageError(f"recipe prune_mode must be 0, 1 or 2, got {self.prune_mode}")
        if self.kd is not None and self.kd not in range(1, 7):
            raise UsageError(f"recipe kd must be 1..6 (--KDstr), got {self.kd}")
        if not self.s >= 0 or not 0 < self.sr_target <= 1 or not 0 < self.sr_ramp <= 1 or not self.bench_duration > 0:
            raise UsageError(
                f"recipe s must be >= 0, sr_target and sr_ramp in (0, 1], bench_duration positive; got {self.s}, "
                f"{self.sr_target}, {self.sr_ramp}, {self.bench_duration}"
            )
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                raise UsageError(f"recipe {name} must be one of {', '.join(map(str, choices))}; got {getattr(self, name)!r}")
        if self.prune_method != "none":
            from edgeyolo.compress.prune import parse_percent

            parse_percent(str(self.percent), "recipe percent")
        if self.aug:
            from edgeyolo.train.trainer import TrainConfig

            TrainConfig(data="-", aug=dict(self.aug))  # validates the names and strengths

    @property
    def training_size(self) -> int:
        return self.train_img_size or self.img_size

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "Recipe":
        """Read a recipe file; a wrong key or value names ``file:line``."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--recipe {path}: {exc.strerror or exc}") from None
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise CfgError(f"not valid YAML: {getattr(exc, 'problem', exc)}", path, mark.line + 1 if mark else None) from None
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        if root is not None:
            if not isinstance(root, yaml.MappingNode):
                raise CfgError("a recipe is a mapping of field: value", path, root.start_mark.line + 1)
            for key_node, value_node in root.value:
                key, line = key_node.value, key_node.start_mark.line + 1
                if key not in known:
                    raise CfgError(f"unknown recipe key '{key}' (known: {', '.join(known)})", path, line)
                values[key] = yaml.safe_load(yaml.serialize(value_node))
                try:
                    cls(**{key: values[key]})
                except (EdgeYoloError, TypeError) as exc:
                    raise CfgError(f"{key}: {exc}", path, line) from None
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choices() -> dict[str, tuple]:
    """The recipe fields with a closed set of values, from the modules that define them."""
    from edgeyolo.compress.prune.methods import METHODS
    from edgeyolo.compress.quant.calib import METHODS as CALIBRATIONS
    from edgeyolo.train.sparsity import PENALTIES, RANKINGS, SparsitySchedule

    return {
        "sr_penalty": PENALTIES,
        "sr_schedule": tuple(s.value for s in SparsitySchedule),
        "sr_rank": RANKINGS,
        "prune_method": ("none", *METHODS.names()),
        "quant_method": CALIBRATIONS,
    }


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _check_types(recipe: Recipe) -> None:
    """Each field holds its declared type (YAML gives ``2.5`` for an int field, ``maybe`` for a bool)."""
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        declared = str(f.type).replace("Optional[", "").rstrip("]")
        if value is None and "Optional" in str(f.type):
            continue
        if f.name == "percent":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise UsageError(f"recipe percent must be a fraction, 'auto' or 'sparse'; got {value!r}")
            continue
        wanted = _TYPES.get(declared)
        if wanted is None:
            continue
        if isinstance(value, bool) and bool not in wanted or not isinstance(value, wanted):
            kind = {"float": "a number", "int": "an int"}.get(declared, f"a {declared}")
            raise UsageError(f"recipe {f.name} must be {kind}; got {value!r}")


@dataclass(frozen=True)
class BuildRequest:
    target: str
    out: Path
    cfg: Optional[str] = None
    weights: Optional[str] = None
    data: Optional[str] = None
    precision: Optional[str] = None  # default: the target's preferred precision
    recipe: Recipe = field(default_factory=Recipe)
    device: Optional[str] = None  # inventory name: deploy + bench there
    inventory: Optional[str] = None
    train_device: str = "cpu"
    demo: bool = False
    latency_ms: Optional[float] = None  # prune to this onnxruntime latency on this host instead of a percent

    def __post_init__(self) -> None:
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise UsageError(f"--latency-ms must be positive (or --fps), got {self.latency_ms}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if not self.demo and self.cfg is None:
            raise UsageError("give --cfg (and --weights, --data), or --demo for the embedded demo")


@dataclass
class Artifact:
    """What flows from one stage to the next."""

    folder: Path | None = None  # model.cfg + model.safetensors
    files: dict[str, str] = field(default_factory=dict)  # other outputs by role (onnx, quantized, ...)

    @property
    def cfg(self) -> Path:
        assert self.folder is not None
        return self.folder / MODEL_CFG

    @property
    def weights(self) -> Path:
        assert self.folder is not None
        return self.folder / MODEL_WEIGHTS


@dataclass
class StageRecord:
    name: str
    status: str  # done | cached | skipped | failed
    key: str = ""
    reason: str = ""
    wall_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def stage_key(name: str, params: dict[str, Any], upstream: str, inputs: list[Path]) -> str:
    body = {
        "stage": name,
        "params": params,
        "upstream": upstream,
        "inputs": {p.name: file_sha256(p) for p in inputs if p.is_file()},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


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
        r, req = self.recipe, self.request
        has_data = req.data is not None or req.demo
        skip: dict[str, str | None] = {
            "adapt": None if self._adapt_needed() else f"{self.profile.name} runs the cfg as it is",
            "train": None if r.train_epochs > 0 else "recipe train_epochs is 0",
            "sparse": None if r.sparse_epochs > 0 else "recipe sparse_epochs is 0",
            "prune": None if r.prune_method != "none" or req.latency_ms else "recipe prune_method is none",
            "finetune": None if r.finetune_epochs > 0 and r.prune_method != "none" else "recipe finetune_epochs is 0 or nothing pruned",
            "quantize": (f"precision {self.precision}" if self.precision != "int8" else
                         "onnxruntime's quantizer calibrates in the export stage" if self._quantizes_at_export() else None),
            "export": None,
            "deploy": None if req.device else "no --device named",
        }
        if req.device and self.profile.family.value == "zynq":
            skip["deploy"] = "the xmodel is compiled in the Vitis AI image (docker/vitis-ai/run.sh BUNDLE); then edgeyolo deploy"

        for name in ("train", "sparse", "finetune", "quantize"):
            if skip[name] is None and not has_data:
                skip[name] = "needs --data"
        return [(name, skip[name]) for name in STAGES]

    def _adapt_needed(self) -> bool:
        from edgeyolo.model.cfg import parse_cfg
        from edgeyolo.targets.check import check_cfg

        # strict: also numerics the target changes (the DPU's leaky slope), so adapt reports the delta
        return check_cfg(parse_cfg(self._cfg_path()), self.profile).failed(strict=True)

    # ------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        upstream = stage_key("source", {"cfg": str(self._cfg_path()), "seed": self.recipe.seed, "size": self.recipe.img_size}, "", self._source_inputs())
        with self._heartbeat("source"):
            if self.request.demo:
                self.echo("[data] the synthetic set (data synth defaults: 12 classes, 2000 train / 300 val, seed 0)")
                self.data()
            art = self._source(upstream)
        for name, reason in self.plan():
            if reason is not None:
                self.records.append(StageRecord(name, "skipped", reason=reason))
                self.echo(f"[{name}] skipped: {reason}")
                continue
            folder = self._stage_folder(name)
            params = self._params(name)
            key = stage_key(name, params, upstream, self._inputs(art))
            cached = self._cached(folder, key)
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
                        art, metrics = getattr(self, f"_stage_{name}")(art, folder)
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

    def _cached(self, folder: Path, key: str) -> tuple[StageRecord, Artifact] | None:
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
            art.folder = self._last_model_folder()
        return record, art

    def _last_model_folder(self) -> Path | None:
        for record in reversed(self.records):
            if "model" in record.outputs:
                return self._stage_folder(record.name)
        return None

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

    def _cfg_path(self) -> Path:
        from edgeyolo.model.zoo import resolve_cfg

        return resolve_cfg(self.request.cfg or DEMO_CFG)

    def _source_inputs(self) -> list[Path]:
        paths = [self._cfg_path()]
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
        model = load_model(self._cfg_path(), self.weights)
        if self.weights is None:
            from edgeyolo.contract import Contract, channel_order_for
            from edgeyolo.model.init import calibration_batch, random_init, synthetic_images

            size = self.recipe.img_size
            contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
            random_init(model, calibration_batch(contract, synthetic_images(8, size, size, self.recipe.seed)), seed=self.recipe.seed)
        atomic_write_text(folder / MODEL_CFG, format_cfg(model.cfg))
        save_checkpoint(model, folder / MODEL_WEIGHTS)
        self.echo("[source] scoring the starting model" if self._evaluating() else "[source] written")
        metrics = {"weights": Path(self.weights).name if self.weights else "random init", **self._evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}
        self.records.append(StageRecord("source", "done", key, wall_s=round(time.perf_counter() - t0, 2), metrics=metrics))
        atomic_write_text(marker, json.dumps({"key": key, "metrics": metrics}))
        return Artifact(folder)

    def _inputs(self, art: Artifact) -> list[Path]:
        paths = [art.cfg, art.weights] if art.folder is not None else []
        return paths + [Path(p) for p in art.files.values() if Path(p).is_file()]

    def _params(self, name: str) -> dict[str, Any]:
        r, req = self.recipe, self.request
        common = {"img_size": r.img_size, "seed": r.seed, "data": req.data, "demo": req.demo}
        by_stage: dict[str, dict[str, Any]] = {
            "adapt": {"target": self.profile.name},
            "train": {"epochs": r.train_epochs, "batch": r.batch_size, "device": req.train_device, "size": r.training_size, "aug": r.aug},
            "sparse": {
                "epochs": r.sparse_epochs, "s": r.s, "mode": r.prune_mode, "penalty": r.sr_penalty, "batch": r.batch_size,
                "schedule": r.sr_schedule, "target": r.sr_target, "ramp": r.sr_ramp, "rank": r.sr_rank, "size": r.training_size, "aug": r.aug,
            },
            "prune": {
                "method": r.prune_method, "percent": r.percent, "multiple": self._multiple(), "latency_ms": req.latency_ms,
                **({"rank": "loss"} if req.latency_ms else {}),
            },
            "finetune": {"epochs": r.finetune_epochs, "kd": r.kd, "batch": r.batch_size, "size": r.training_size, "aug": r.aug},
            "quantize": {"images": r.calib_images, "method": r.quant_method, "target": self.profile.name},
            "export": {"target": self.profile.name, "precision": self.precision,
                       **({"images": r.calib_images, "method": r.quant_method} if self._quantizes_at_export() else {})},
            "deploy": {"device": req.device, "duration": r.bench_duration, "at": time.time()},  # always re-measured
        }
        return {**common, **by_stage[name]}

    def _multiple(self) -> int:
        return self.recipe.multiple or self.profile.channel_multiples[self.profile.check_precision(self.precision)]

    def data(self) -> str:
        if self.request.data:
            return self.request.data
        return str(self._demo_data())

    def _demo_data(self) -> Path:
        from edgeyolo.data.synth import make_synthetic
        from edgeyolo.model.checkpoint import load_model

        folder = self.out / "demo-data"
        if not (folder / "data.yaml").exists():  # the set the demo checkpoint was trained on: synth's defaults
            classes = load_model(self._cfg_path()).num_classes
            make_synthetic(folder, classes=classes, seed=0, workers=max(1, self.recipe.workers))
        return folder / "data.yaml"

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, cfg: Path, weights: Path) -> dict[str, Any]:
        from edgeyolo.model.checkpoint import load_model

        return self._evaluate_model(load_model(cfg, weights)) if self._evaluating() else {}

    def _evaluating(self) -> bool:
        return self.recipe.evaluate and bool(self.request.data or self.request.demo)

    def _evaluate_model(self, model, backend: str = "onnxruntime") -> dict[str, Any]:
        """mAP on the val split (the test command's evaluation), with the model's size."""
        from edgeyolo.runtime.evaluate import evaluate_model

        result = evaluate_model(model, self._val_dataset(), img_size=self.recipe.img_size, backend=backend).result
        return {"map50": round(float(result.map50), 4), "map50_95": round(float(result.map50_95), 4), **_size_metrics(model, self.recipe.img_size)}

    def _val_dataset(self):
        from edgeyolo.data.formats import load_dataset

        key = self.data()
        if key not in self._dataset_cache:
            dataset = load_dataset(key, "val")
            if self.recipe.max_val_images:
                dataset = dataclasses.replace(dataset, samples=dataset.samples[: self.recipe.max_val_images])
            self._dataset_cache[key] = dataset
        return self._dataset_cache[key]

    def _evaluate_onnx(self, path: Path, channels: int, fp16: bool) -> dict[str, Any]:
        """mAP of an exported ONNX file in onnxruntime, as ``edgeyolo test --backend onnxruntime`` scores it.
        ``fp16``: the weights are rounded to fp16 first (activations stay fp32): the host's stand-in for
        TensorRT's fp16 engine, labelled as such in the report."""
        import tempfile

        from edgeyolo.runtime.evaluate import evaluate_runner, evaluation_contract
        from edgeyolo.runtime.runners import OnnxRuntimeRunner

        contract = evaluation_contract(self.recipe.img_size, channels)
        with tempfile.TemporaryDirectory() as tmp:
            run_path = _fp16_rounded(path, Path(tmp) / path.name) if fp16 else path
            with OnnxRuntimeRunner(run_path, contract) as runner:
                result = evaluate_runner(runner, contract, self._val_dataset()).result
        label = "onnxruntime, fp16-rounded weights (fp32 activations)" if fp16 else "onnxruntime"
        return {"map50": round(float(result.map50), 4), "map50_95": round(float(result.map50_95), 4), "scored_with": label}

    # ------------------------------------------------------------------ stages

    def _stage_adapt(self, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.model.checkpoint import load_model, save_checkpoint
        from edgeyolo.targets.adapt import adapt_model_files

        changes = adapt_model_files(self.profile, art.cfg, art.weights, folder, img_size=self.recipe.img_size)
        save_checkpoint(load_model(folder / MODEL_CFG, folder / "model.weights"), folder / MODEL_WEIGHTS)
        metrics: dict[str, Any] = {"changes": len(changes)}
        before, after = self._evaluate(art.cfg, art.weights), self._evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)
        if before and after:  # the accuracy the rewrite costs, before any fine-tuning
            metrics["map50_before_adapt"] = before["map50"]
        return Artifact(folder), {**metrics, **after}

    def _train(self, art: Artifact, folder: Path, epochs: int, **extra: Any) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.model.cfg import format_cfg
        from edgeyolo.model.checkpoint import checkpoint_cfg
        from edgeyolo.train.trainer import TrainConfig, Trainer

        r = self.recipe
        if not self._data_checked:  # broken labels fail here, not minutes into training
            from edgeyolo.data.check import check_dataset

            check_dataset(self.data(), split="train", decode=False, hash_images=False, strict=True)
            self._data_checked = True
        config = TrainConfig(
            data=self.data(), cfg=str(art.cfg), weights=str(art.weights), img_size=r.training_size, batch_size=r.batch_size,
            epochs=epochs, device=self.request.train_device, out=str(folder), name="run", workers=r.workers, seed=r.seed,
            cache=r.cache, max_val_images=r.max_val_images, aug=dict(r.aug), **extra,
        )
        trainer = Trainer(config, run_dir=folder / "run", on_epoch=lambda rec: self.echo("  " + rec.line()))
        history = trainer.fit()
        best = folder / "run" / ("last.safetensors" if config.sparse else "best.safetensors")
        if not best.exists():
            best = folder / "run" / "last.safetensors"
        atomic_write_text(folder / MODEL_CFG, format_cfg(checkpoint_cfg(best)))
        shutil.copyfile(best, folder / MODEL_WEIGHTS)
        last = history[-1] if history else {}
        metrics: dict[str, Any] = {"epochs": epochs, "val_map50_last_epoch": last.get("map50")}
        return Artifact(folder), {**metrics, **self._evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}

    def _stage_train(self, art: Artifact, folder: Path):
        return self._train(art, folder, self.recipe.train_epochs, pretrained=False)

    def _stage_sparse(self, art: Artifact, folder: Path):
        r = self.recipe
        before = _gamma_fraction(art.cfg, art.weights, r.prune_mode)
        art, metrics = self._train(
            art, folder, r.sparse_epochs, sparse=True, s=r.s, prune=r.prune_mode, sr_penalty=r.sr_penalty,
            sr_schedule=r.sr_schedule, sr_target=r.sr_target, sr_ramp=r.sr_ramp, sr_rank=r.sr_rank,
        )
        after = _gamma_fraction(art.cfg, art.weights, r.prune_mode)
        return art, {"gamma_below_1e-2_before": round(before, 4), "gamma_below_1e-2_after": round(after, 4), **metrics}

    def _stage_finetune(self, art: Artifact, folder: Path):
        extra: dict[str, Any] = {}
        if self.recipe.kd is not None:
            teacher = self._model_before_prune()
            extra = {"t_cfg": str(teacher.cfg), "t_weights": str(teacher.weights), "kd_strategy": self.recipe.kd}
        return self._train(art, folder, self.recipe.finetune_epochs, **extra)

    def _model_before_prune(self) -> Artifact:
        names = [r.name for r in self.records]
        before = self.records[: names.index("prune")] if "prune" in names else self.records
        for record in reversed(before):
            if "model" in record.outputs:
                return Artifact(self._stage_folder(record.name))
        return Artifact(self.out / "stages" / "source")

    def _stage_folder(self, name: str) -> Path:
        return self.out / "stages" / f"{STAGES.index(name):02d}-{name}"

    def _stage_prune(self, art: Artifact, folder: Path):
        from edgeyolo.compress.prune import PruneConfig, parse_percent, prune
        from edgeyolo.compress.prune.artifacts import write_artifacts
        from edgeyolo.model.checkpoint import load_model

        r = self.recipe
        model = load_model(art.cfg, art.weights)
        if self.request.latency_ms:
            return self._prune_to_latency(model, folder)
        config = PruneConfig(r.prune_method, percent=parse_percent(str(r.percent)), multiple=self._multiple())
        result = prune(model, config)
        write_artifacts(result, folder)
        return Artifact(folder), self._evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)

    def _prune_to_latency(self, model, folder: Path):
        """Per-layer widths that meet --latency-ms in onnxruntime on this host (bench.latency), ranked by
        each layer's measured loss increase on the training split; for a board target the host is the
        proxy, so the board's own number comes from the deploy stage."""
        from edgeyolo.bench import latency
        from edgeyolo.data.formats import load_dataset
        from edgeyolo.model.cfg import format_cfg
        from edgeyolo.model.checkpoint import save_checkpoint
        from edgeyolo.model.weights import save_darknet_weights

        mode = "slim" if self.recipe.prune_method in ("slim", "shortcut", "layer-channel", "group") else "normal"
        result = latency.prune_to_latency(
            model, self.request.latency_ms, self.recipe.img_size, multiple=self._multiple(), mode=mode,
            cache_dir=self.out / "latency-table", damage=latency.loss_damage(load_dataset(self.data(), "train"), self.recipe.img_size, latency.DAMAGE_IMAGES),
        )
        atomic_write_text(folder / MODEL_CFG, format_cfg(result.model.cfg))
        save_checkpoint(result.model, folder / MODEL_WEIGHTS)
        save_darknet_weights(result.model, folder / "model.weights")
        metrics = {
            "latency_target_ms": self.request.latency_ms, "latency_predicted_ms": round(result.predicted_ms, 3),
            "latency_measured_ms": None if result.measured_ms is None else round(result.measured_ms, 3),
            "latency_unpruned_ms": None if result.unpruned_ms is None else round(result.unpruned_ms, 3),
            "latency_error": None if result.error is None else round(result.error, 4), "narrowed_convs": len(result.widths), "latency_rank": "loss",
            "latency_measured_on": "host onnxruntime" + ("" if self.profile.name == "host" else f" (a proxy for {self.profile.name})"),
        }
        return Artifact(folder), {**metrics, **self._evaluate(folder / MODEL_CFG, folder / MODEL_WEIGHTS)}

    def _quantizes_at_export(self) -> bool:
        """True when the target's int8 layout is written from the float model at export (host)."""
        from edgeyolo.export.int8_layouts import INT8_LAYOUTS

        return self.precision == "int8" and self.profile.int8_layout is not None and INT8_LAYOUTS.get(self.profile.int8_layout).quantizes_at_export

    def _stage_quantize(self, art: Artifact, folder: Path):
        from edgeyolo.compress.quant import QuantSpec, calibrate, prepare_qat, save_quantized
        from edgeyolo.model.checkpoint import load_model

        r = self.recipe
        from edgeyolo.targets.profiles import Family

        model = load_model(art.cfg, art.weights)
        if self.profile.family is Family.ZYNQ:  # the DPU's own arithmetic, so the mAP predicts the board's
            spec = QuantSpec(scheme="pow2", vitis_sim=True)
        else:
            spec = QuantSpec(scheme="pow2" if self.profile.equal_scales else "affine", equal_scales=self.profile.equal_scales)
        prepare_qat(model, spec)
        calibrate(model, _calibration_batches(self.data(), r.img_size, r.calib_images, model.cfg.net.channels), method=r.quant_method)
        save_quantized(model, folder / "quantized")
        metrics: dict[str, Any] = {"scheme": spec.scheme, "vitis_sim": spec.vitis_sim}
        if self._evaluating():
            metrics.update(self._evaluate_model(model.eval(), backend="torch"))
        return Artifact(art.folder, {"quantized": str(folder / "quantized")}), metrics

    def _stage_export(self, art: Artifact, folder: Path):
        from edgeyolo.export.onnx import DEFAULT_OPSET
        from edgeyolo.model.checkpoint import load_model
        from edgeyolo.targets.check import check_onnx
        from edgeyolo.targets.profiles import Family

        r, p = self.recipe, self.profile
        if p.family is Family.ZYNQ:
            return self._export_vitis(art, folder)
        onnx_path = folder / "model.onnx"
        opset = min(p.tensorrt.max_opset, DEFAULT_OPSET) if p.tensorrt else DEFAULT_OPSET
        qdq = "quantized" in art.files
        if self._quantizes_at_export():
            from edgeyolo.data.formats import load_dataset
            from edgeyolo.export.host_int8 import export_host_int8
            from edgeyolo.model.io import read_image

            if not (self.request.data or self.request.demo):
                raise UsageError(f"{p.name} int8: calibration needs images; give --data (its train split is used)")
            paths = [s.image for s in load_dataset(self.data(), "train").samples[: r.calib_images]]
            frames = [f for f in (read_image(x) for x in paths) if f is not None]
            result = export_host_int8(load_model(art.cfg, art.weights), onnx_path, frames, img_size=r.img_size, calibration=r.quant_method)
            qdq_metrics = {"int8_layout": p.int8_layout, "int8_min_code_match": round(result.min_code_match, 6),
                           "int8_reduce_range": result.reduce_range, "calib_images": len(frames), "calibration": r.quant_method}
        elif qdq:
            from edgeyolo.compress.quant import load_quantized
            from edgeyolo.export.qdq import export_qdq

            export_qdq(load_quantized(art.files["quantized"]), onnx_path, img_size=r.img_size, opset=min(opset, 13))
        else:
            from edgeyolo.export.onnx import export_onnx

            export_onnx(load_model(art.cfg, art.weights), onnx_path, img_size=r.img_size, opset=opset)
        metrics: dict[str, Any] = {"onnx_sha256": file_sha256(onnx_path), "opset": opset}
        if self._quantizes_at_export():
            metrics.update(qdq_metrics)
        if self._evaluating():  # the file the board gets, in an independent runtime
            model = load_model(art.cfg, art.weights)
            metrics.update(self._evaluate_onnx(onnx_path, model.cfg.net.channels, fp16=self.precision == "fp16"))
            metrics.update(_size_metrics(model, r.img_size))
        if p.family is Family.JETSON:  # what the board's TensorRT parses: opset, IR, operators
            metrics["check_findings"] = len(check_onnx(onnx_path, p).raise_if_failed().findings)
            from edgeyolo.targets.jetson.trtexec import trtexec_command

            command = trtexec_command(p, onnx_path.name, "model.engine", self.precision, qdq=qdq)
            metrics["command.engine"] = command.line
        return Artifact(art.folder, {"onnx": str(onnx_path)}), metrics

    def _export_vitis(self, art: Artifact, folder: Path):
        """The Vitis AI bundle (quantized and compiled in the Vitis AI image, not here), with the
        --vitis-sim mAP of the quantize stage as the expected on-board accuracy."""
        from edgeyolo.data.formats import load_dataset
        from edgeyolo.export.vitis import export_vitis
        from edgeyolo.model.checkpoint import load_model
        from edgeyolo.targets.profiles import dpu_arch

        if not (self.request.data or self.request.demo):
            raise UsageError(f"{self.profile.name}: the Vitis AI bundle needs calibration images; give --data (its train split is used)")
        images = [s.image for s in load_dataset(self.data(), "train").samples[: self.recipe.calib_images + 16]]
        expected = next((r.metrics.get("map50") for r in self.records if r.name == "quantize"), None)
        result = export_vitis(
            load_model(art.cfg, art.weights), folder / "vitis", dpu_arch(self.profile.name), images,
            images=self.recipe.calib_images, img_size=self.recipe.img_size, calib_source=f"{self.data()} (train split)",
            vitis_sim_map=expected,
        )
        metrics = {"bundle": str(result.path), "vitis_sim_map50": expected, "traced_vs_model_rel_error": result.max_rel_error}
        metrics["command.quantize+compile"] = f"docker/vitis-ai/run.sh {folder / 'vitis'} --vai 3.0"
        return Artifact(art.folder, {"vitis": str(folder / "vitis")}), metrics

    def _stage_deploy(self, art: Artifact, folder: Path):
        from edgeyolo.targets.inventory import get_device
        from edgeyolo.targets.runner import bench_device, predict_on_device
        from edgeyolo.targets.transport import SshTransport

        device = get_device(self.request.device, self.request.inventory)
        if device.target not in ("generic", self.profile.name):
            raise UsageError(f"device '{device.name}' is a {device.target} board but the build is for --target {self.profile.name}")
        model = Path(art.files["onnx"])
        with SshTransport(device, on_stderr=lambda line: self.echo(f"  [{device.name}] {line}")) as transport:
            bench = bench_device(transport, model, duration=self.recipe.bench_duration, warmup=1.0)
            result = bench.to_dict()
            if bench.error is None and (self.request.data or self.request.demo):
                from edgeyolo.data.formats import load_dataset

                evaluation = predict_on_device(transport, model, load_dataset(self.data(), "val"), "coco")
                result["accuracy"] = evaluation.result.to_dict()
        (folder / "bench.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
        metrics: dict[str, Any] = {"device": device.name, "partial": bench.partial}
        for phase in bench.phases:
            metrics[f"fps_{phase.streams}_streams"] = round(phase.fps, 2)
            metrics[f"latency_p50_ms_{phase.streams}_streams"] = phase.latency_ms.p50
        if "accuracy" in result:  # scored on the host from the board's detections
            metrics["board_map50"] = round(float(result["accuracy"]["map50"]), 4)
            metrics["board_map50_95"] = round(float(result["accuracy"]["map50_95"]), 4)
        return Artifact(art.folder, {**art.files, "bench": str(folder / "bench.json")}), metrics

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


DEMO_CFG = "edgeyolo-res"
def demo_recipe(target: str, **overrides: Any) -> Recipe:
    """The embedded demo: the shipped dense checkpoint (``model.zoo.DEMO_CHECKPOINT``) sparse-trained with
    Taylor-ranked gradual sparsity, pruned at the target's channel multiple where γ went below 1e-2,
    fine-tuned, and exported at the target's smallest listed input size; every stage is scored on the
    300-image val split at that size. Training runs at 160 px, the size the checkpoint was trained at,
    so the whole build fits in minutes on a CPU."""
    from edgeyolo.targets.profiles import get_target

    base = {
        "img_size": get_target(target).input_sizes[0], "train_img_size": 160, "batch_size": 16, "workers": 0, "cache": True,
        "sparse_epochs": 8, "s": 0.1, "prune_mode": 1, "sr_penalty": "gradual", "sr_rank": "taylor", "sr_schedule": "dynamic",
        "sr_target": 0.45, "sr_ramp": 0.4, "prune_method": "slim", "percent": "sparse", "finetune_epochs": 4, "calib_images": 64,
    }
    return Recipe(**{**base, **overrides})


def _gamma_fraction(cfg: Path, weights: Path, mode: int) -> float:
    """Fraction of the prunable BN |γ| (``--prune mode``'s set) below 1e-2."""
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.train.sparsity import gamma_stats, prunable_bn

    model = load_model(cfg, weights)
    return float(gamma_stats(model, prunable_bn(model.cfg, mode))["frac_lt_1e-2"])


def _fp16_rounded(src: Path, dst: Path) -> Path:
    """A copy of an ONNX file whose float32 initializers went through float16 and back."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    for init in proto.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16).astype(np.float32), init.name))
    onnx.save(proto, str(dst))
    return dst


def _size_metrics(model, img_size: int) -> dict[str, Any]:
    from edgeyolo.model.cfg import total_bflops

    return {"params": model.parameter_count(), "bflops": round(total_bflops(model.cfg, img_size), 3)}


def _calibration_batches(data: str, img_size: int, images: int, channels: int):
    """Letterboxed training-split images (never the val split) in batches of 8."""
    from edgeyolo.compress.quant.calib import image_batches
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.data.formats import load_dataset

    contract = Contract(img_size, img_size, channel_order=channel_order_for(channels))
    return image_batches((s.image for s in load_dataset(data, "train").samples[:images]), contract, 8)


def report_markdown(manifest: dict[str, Any]) -> str:
    lines = [
        f"# edgeyolo build: {manifest['target']} ({manifest['precision']})",
        "",
    ]
    if manifest.get("demo"):
        lines += [
            "Embedded demo: edgeyolo-res trained on the synthetic set (`edgeyolo data synth` defaults), shipped with "
            "edgeyolo, through the build's stages. Every mAP@0.5 is on the 300 val images at the export size "
            f"({manifest['recipe']['img_size']} px).",
            "",
        ]
    lines += ["| stage | status | mAP@0.5 | params | BFLOPs | wall s | note |", "|---|---|---|---|---|---|---|"]
    for s in manifest["stages"]:
        m = s.get("metrics", {})
        note = s.get("reason") or ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in m.items() if k not in ("map50", "map50_95", "params", "bflops") and not k.startswith("command.")
        )
        lines.append(
            f"| {s['name']} | {s['status']} | {m.get('map50', '')} | {m.get('params', '')} | {m.get('bflops', '')} "
            f"| {s.get('wall_s') or ''} | {note} |"
        )
    lines += _summary_lines(manifest["stages"])
    if manifest.get("commands"):
        lines += ["", "## Commands run on the board", ""]
        lines += [f"- {name}: `{cmd}`" for name, cmd in manifest["commands"].items()]
    if manifest.get("failed"):
        lines += ["", f"**Failed at stage {manifest['failed']}.**"]
    lines += ["", f"Artifact: `{manifest.get('artifact')}`; total wall time {manifest['wall_s']} s.", ""]
    if manifest.get("artifact") and not manifest.get("failed"):
        lines += next_steps(manifest)
    return "\n".join(lines)


def _summary_lines(stages: list[dict[str, Any]]) -> list[str]:
    """Start against the last scored stage: the parameters cut and the mAP points lost."""
    scored = [s for s in stages if "map50" in s.get("metrics", {}) and "params" in s.get("metrics", {})]
    if len(scored) < 2 or scored[0]["name"] != "source":
        return []
    first, last = scored[0]["metrics"], scored[-1]["metrics"]
    cut = 1 - last["params"] / first["params"]
    return [
        "",
        f"From the start to {scored[-1]['name']}: {cut:.1%} fewer parameters ({first['params']} → {last['params']}), "
        f"BFLOPs {first['bflops']} → {last['bflops']}, mAP@0.5 {first['map50']} → {last['map50']} "
        f"({100 * (last['map50'] - first['map50']):+.1f} points).",
    ]


def next_steps(manifest: dict[str, Any]) -> list[str]:
    """What to run on a real board of the build's target, with this build's paths."""
    from edgeyolo.targets.profiles import Family, get_target

    profile = get_target(manifest["target"])
    artifact = manifest["artifact"]
    name = profile.name.split("-")[-1] if profile.family is Family.JETSON else "board"
    data = manifest["request"].get("data") or (str(Path(artifact).parents[2] / "demo-data" / "data.yaml") if manifest.get("demo") else None)
    lines = ["## Next: run it on a real board", ""]
    if profile.family is Family.ZYNQ:
        return lines + [
            f"Compile the bundle in the Vitis AI image first: `{manifest['commands'].get('quantize+compile', 'docker/vitis-ai/run.sh BUNDLE')}`; "
            "then `edgeyolo deploy` the compiled xmodel folder as below.", "",
        ]
    lines += [
        "1. Describe the board in `devices.yaml` (in this folder or `~/.config/edgeyolo/devices.yaml`):",
        "",
        "```yaml",
        "devices:",
        f"  {name}:",
        f"    target: {profile.name}",
        "    host: 192.168.1.20        # the board's address, or a Host alias of ~/.ssh/config",
        "    user: jetson" if profile.family is Family.JETSON else "    user: root",
        "    key_file: ~/.ssh/id_ed25519",
        "```",
        "",
        "2. Check it, copy the model and (on a Jetson) build the TensorRT engine there, then time it and score it on the board:",
        "",
        "```bash",
        f"edgeyolo doctor --device {name}",
        f"edgeyolo deploy --device {name} {artifact}" + (" --engine" if profile.family is Family.JETSON else ""),
        f"edgeyolo bench device --device {name} --model {artifact}" + (f" --map {data}" if data else ""),
        "```",
        "",
        "3. On the board, in its workdir (`~/edgeyolo`), the detector on a camera or a video file "
        + ("(`--model` the engine path that `deploy --engine` printed, or the ONNX):" if profile.family is Family.JETSON else "(`--model` the ONNX):"),
        "",
        "```bash",
        f"python3 agent.py app --model models/{Path(artifact).name} --source 0 --output out.mp4",
        "```",
        "",
    ]
    if profile.family is Family.JETSON:
        lines += ["Benchmark with `sudo nvpmodel -m 0` and `sudo jetson_clocks` first; `doctor` reports both.", ""]
    return lines
