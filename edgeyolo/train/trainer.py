"""The training loop: normal, fine-tune, sparse, distillation (``distill.py``) and quantization-aware
training, resumable bit for bit.

Reproducibility is designed in rather than hoped for: the data order of an epoch comes from
(seed, epoch), each sample's augmentation from (seed, epoch, index), each step's multi-scale size and
dropout from (seed, epoch, step); the learning rate is a pure function of (epoch, step); gradients
never cross an epoch boundary. Checkpoints are written atomically at the end of each epoch, so a run
killed at any point resumes from the last finished epoch and ends in the state an uninterrupted run
reaches (bitwise on CPU with the same thread count).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import EdgeYoloError, UsageError
from edgeyolo.fileio import atomic_write_bytes, atomic_write_text
from edgeyolo.heap import keep_freed_memory
from edgeyolo.model.cfg import with_classes
from edgeyolo.model.checkpoint import Provenance, load_model, save_checkpoint
from edgeyolo.model.darknet import Darknet
from edgeyolo.train.loss import LossConfig, YoloLoss

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"


class TrainingDiverged(EdgeYoloError):
    """The loss became NaN/inf; the last good checkpoint is kept."""

    exit_code = 8


@dataclass(frozen=True)
class TrainConfig:
    data: str
    cfg: Optional[str] = None
    weights: Optional[str] = None
    pretrained: bool = False  # load what fits (skip heads of another class count) instead of strict
    cutoff: Optional[int] = None
    img_size: int = 416
    multi_scale: Optional[tuple[int, int]] = None
    batch_size: int = 16
    epochs: int = 100
    device: str = "cpu"
    out: str = "runs"
    name: Optional[str] = None
    workers: int = 2
    seed: int = 0
    threads: int = 0
    nominal_batch: int = 64  # gradients accumulate to this many images, at most one epoch's (see RunSchedule)
    optimizer: str = "sgd"
    lr0: float = 0.01
    lrf: float = 0.05  # final LR factor of the cosine schedule
    momentum: float = 0.937
    weight_decay: float = 5e-4
    burn_in: int = 300  # warm-up mini-batches, at most burn_in_fraction of the run (see RunSchedule)
    burn_in_fraction: float = 0.1  # 300 mini-batches were 12 % of the synthetic set's 20-epoch run, where they were set
    schedule: str = "scaled"  # "fixed": nominal batch and burn-in as configured, whatever the data (older runs)
    aug: dict = field(default_factory=dict)  # augmentation strengths by name (TrainAugment), the rest default
    ema: bool = True
    amp: bool = False
    augment: bool = True
    close_aug: float = 0.1  # this fraction of the final epochs (rounded down) trains without augmentation (see plain_epochs)
    val_split: str = "val"
    max_val_images: Optional[int] = None
    sparse: bool = False
    s: float = 0.001
    prune: int = 0
    sr_schedule: str = "constant"
    sr_target: float = 0.5  # dynamic schedule: wanted fraction of prunable |γ| below 1e-2
    sr_penalty: str = "l1"  # or "polar" (polarization: splits γ into a zero and a kept group)
    sr_t: float = 1.0  # polarization balance t
    sr_ramp: float = 0.5  # gradual penalty: fraction of the run by which sr_target is reached
    sr_polar_mean: str = "global"  # polar: split around the mean |γ| of the whole set, or of each conv ("layer")
    sr_layer_cap: float = 1.0  # at most this share of each conv's γ is pulled (1: no cap)
    sr_rank: str = "magnitude"  # gradual penalty: pull the smallest |γ|, or the least important by Taylor ("taylor")
    cache: bool = False  # decode the training images once into a shared memory-mapped cache
    loss: dict = field(default_factory=dict)
    kd_strategy: int = 0  # knowledge distillation --KDstr 1..6 (0: off); see edgeyolo.train.distill
    t_cfg: Optional[str] = None
    t_weights: Optional[str] = None
    kd_t: float = 3.0  # distillation temperature
    kd_weight: float = 1.0  # × the reference's λs; 1 keeps the reference's KD/detection balance
    quantized: Optional[str] = None  # QAT scheme: affine | dorefa | pow2 (None: float training)
    w_bit: int = 8
    a_bit: int = 8
    bn_fold: bool = False
    edge_bits: Optional[int] = None  # first conv + head convs (None: 8 below 8 bits, else the same; 0: the same)
    qat_calib: int = 64  # train images calibrating the activation ranges (mse, then frozen) before QAT (0: EMA of batch max)

    def __post_init__(self) -> None:
        if self.img_size <= 0 or self.img_size % 32:
            raise UsageError(f"--img-size must be a positive multiple of 32, got {self.img_size}")
        if self.multi_scale and (self.multi_scale[0] % 32 or self.multi_scale[1] % 32 or self.multi_scale[0] > self.multi_scale[1]):
            raise UsageError(f"--multi-scale needs MIN <= MAX, both multiples of 32, got {self.multi_scale}")
        if self.batch_size <= 0 or self.epochs <= 0:
            raise UsageError("--batch-size and --epochs must be positive")
        if self.schedule not in ("scaled", "fixed"):
            raise UsageError(f"schedule must be scaled or fixed, got '{self.schedule}'")
        if not 0.0 <= self.burn_in_fraction <= 1.0 or self.burn_in < 0 or self.nominal_batch <= 0:
            raise UsageError(
                f"burn_in must be >= 0, burn_in_fraction in [0, 1] and nominal_batch positive, got "
                f"{self.burn_in}, {self.burn_in_fraction:g} and {self.nominal_batch}"
            )
        self.augment_spec()  # validates the names and strengths
        if isinstance(self.close_aug, bool) or not isinstance(self.close_aug, (int, float)) or not 0.0 <= self.close_aug <= 1.0:
            raise UsageError(f"--close-aug must be a fraction in [0, 1], got {self.close_aug!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise UsageError(f"--optimizer must be sgd or adam, got '{self.optimizer}'")
        if self.prune not in (0, 1, 2):
            raise UsageError(f"--prune must be 0, 1 or 2, got {self.prune}")
        if self.amp and not self.device.startswith("cuda"):
            raise UsageError("--amp needs a CUDA device")
        if self.kd_strategy not in range(7):
            raise UsageError(f"--KDstr must be 1-6 (0: no distillation), got {self.kd_strategy}")
        if self.kd_strategy and not self.t_weights:
            raise UsageError(f"--KDstr {self.kd_strategy} needs a teacher: --t-weights W (and --t-cfg C unless W is an edgeyolo .safetensors)")
        if not self.kd_strategy and (self.t_weights or self.t_cfg):
            raise UsageError("--t-cfg/--t-weights name a distillation teacher: add --KDstr 1-6 to choose the strategy")
        if self.kd_t <= 0 or self.kd_weight < 0:
            raise UsageError(f"--kd-t must be positive and --kd-weight non-negative, got {self.kd_t} and {self.kd_weight}")
        if self.qat_calib < 0:
            raise UsageError(f"--qat-calib must be 0 or more images, got {self.qat_calib}")
        if self.quantized:
            self.quant_spec()  # validates scheme and bit widths
        elif self.bn_fold or (self.w_bit, self.a_bit) != (8, 8):
            raise UsageError("--bn-fold, --w-bit and --a-bit configure quantization-aware training: add --quantized affine|dorefa|pow2")

    def quant_spec(self):
        """The QAT recipe (an ``edgeyolo.compress.quant.QuantSpec``), None for float training."""
        if not self.quantized:
            return None
        from edgeyolo.compress.quant import QuantSpec

        edge = self.edge_bits if self.edge_bits is not None else (8 if min(self.w_bit, self.a_bit) < 8 else 0)
        return QuantSpec(scheme=self.quantized, w_bit=self.w_bit, a_bit=self.a_bit, bn_fold=self.bn_fold, edge_bits=edge or None)

    def augment_spec(self):
        """The augmentation (an ``edgeyolo.train.data.TrainAugment``): ``aug`` over the defaults."""
        from edgeyolo.train.data import TrainAugment

        if not isinstance(self.aug, dict):
            raise UsageError(f"aug must map augmentation names to strengths, got {self.aug!r}")
        return TrainAugment.from_dict(self.aug, enabled=self.augment)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        data = json.loads(text)
        if data.get("multi_scale"):
            data["multi_scale"] = tuple(data["multi_scale"])
        # a run written before the schedule scaled with the data and before the augmentation
        # defaults changed resumes with what it started with
        if "schedule" not in data:
            data["schedule"] = "fixed"
        if "close_aug" not in data:  # runs made before augmentation closed at the end
            data["close_aug"] = 0.0
        if "aug" not in data:
            from edgeyolo.train.data import LEGACY_AUGMENT

            data["aug"] = dict(LEGACY_AUGMENT)
        return cls(**data)

    @property
    def plain_epochs(self) -> int:
        """The final epochs trained on the letterbox alone (augmentation closed), as YOLOX does for its
        last 15 of 300: the weights settle on the images as they are scored. On 35 aerial tree tiles
        (yolov3-tiny ``-pt`` at 416, 150 augmented epochs: training tiles mAP@0.5 0.556, val region
        0.470), 20 more epochs without augmentation reached 0.714 and 0.488; augmentation off from the
        start memorises instead (0.235 on the val region). 0 when augmentation is off or the run is
        too short for a whole epoch of it (fewer than 1 / close_aug epochs)."""
        if not self.augment:
            return 0
        return int(self.close_aug * self.epochs + 1e-9)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class ModelEMA:
    """Exponential moving average of weights; the decay ramps up over the first updates."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        own = model.state_dict()
        ema, src = [], []
        for key, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                ema.append(value)
                src.append(own[key].detach())
            else:
                value.copy_(own[key])
        # one fused call per op instead of two per tensor: the same arithmetic, a quarter of the time
        torch._foreach_mul_(ema, d)
        torch._foreach_add_(ema, src, alpha=1 - d)


#: below this many optimizer steps a run is warned that it is too short to learn. On the README's
#: tree tiles (yolov3-tiny -pt, 20 epochs) the runs of 20 steps reached val mAP@0.5 0.015-0.016,
#: the same epochs in 100 steps 0.085-0.288; a user's 22-step run 0.031 and 180-step run 0.166
MIN_OPTIMIZER_STEPS = 100

#: a small set's accumulation is cut so that an epoch makes at least this many optimizer steps (when
#: it has that many mini-batches): on 35 tree tiles (5 mini-batches of 8), 20 epochs of one step each
#: reached val mAP@0.5 0.016, of five steps each 0.090 (README: training on small sets)
MIN_STEPS_PER_EPOCH = 4


@dataclass(frozen=True)
class RunSchedule:
    """How a run turns mini-batches into optimizer steps: a pure function of the config and the
    epoch's mini-batch count, so a resume re-derives it exactly.

    With ``schedule="scaled"`` gradients accumulate to the nominal batch but over at most a
    :data:`MIN_STEPS_PER_EPOCH`-th of an epoch's mini-batches, so a small set still makes several
    optimizer steps every epoch; its effective nominal batch is smaller, and the weight decay is
    scaled with it (the loss is summed over images, so a step's data gradient grows with the images
    it holds and the decay must keep pace). The learning rate rises by the square root of the
    shrink, so a step of fewer images still moves the weights about as far (sqrt scaling): on 35
    tree tiles in steps of 8 images, lr0 0.01 reached val mAP@0.5 0.111 in 20 epochs, 0.02 0.215
    and 0.04 0.288; sqrt(64 / 8) gives 0.028. The burn-in is
    ``burn_in`` mini-batches but at most ``burn_in_fraction`` of the run: 300 fixed iterations are
    the whole of a 60-epoch run of 3 mini-batches. ``"fixed"`` is the behaviour of runs made before.
    """

    batches_per_epoch: int
    accumulate: int  # mini-batches per optimizer step
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    nominal_batch: int  # images per optimizer step (the last step of an epoch may hold fewer)
    burn_in: int  # warm-up, in mini-batches
    weight_decay: float
    lr_scale: float = 1.0  # multiplies lr0

    @classmethod
    def plan(cls, config: TrainConfig, batches_per_epoch: int) -> RunSchedule:
        batches = max(int(batches_per_epoch), 1)
        accumulate = max(round(config.nominal_batch / config.batch_size), 1)
        burn_in, decay, lr_scale = config.burn_in, config.weight_decay, 1.0
        if config.schedule == "scaled":
            wanted = accumulate
            accumulate = min(accumulate, max(batches // MIN_STEPS_PER_EPOCH, 1))
            burn_in = min(burn_in, int(config.burn_in_fraction * config.epochs * batches))
            decay = config.weight_decay * accumulate * config.batch_size / config.nominal_batch
            if config.optimizer == "sgd":  # Adam's steps do not grow with the gradient
                lr_scale = math.sqrt(wanted / accumulate)  # 1 unless the set is too small for the nominal batch
        steps = math.ceil(batches / accumulate)
        return cls(batches, accumulate, steps, steps * config.epochs, accumulate * config.batch_size, burn_in, decay, lr_scale)

    @property
    def burn_in_steps(self) -> int:
        return math.ceil(self.burn_in / self.accumulate)

    def describe(self, config: TrainConfig, images: int) -> str:
        return (
            f"schedule: {images} images, {self.batches_per_epoch} mini-batches of {config.batch_size} per epoch, "
            f"gradients accumulated over {self.accumulate} (nominal batch {self.nominal_batch}, lr {config.lr0 * self.lr_scale:.3g}, "
            f"weight decay {self.weight_decay:.3g}): {self.steps_per_epoch} optimizer step{'s' if self.steps_per_epoch > 1 else ''} "
            f"per epoch, {self.total_steps} in the run, the first {self.burn_in_steps} warming up"
            + (f"; the last {config.plain_epochs} epoch{'s' if config.plain_epochs > 1 else ''} without augmentation" if config.plain_epochs else "")
        )


def lr_factor(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int, burn_in: int | None = None) -> tuple[float, float]:
    """(lr factor, momentum) at a mini-batch: linear burn-in over ``burn_in`` mini-batches (default
    the config's), then cosine from 1 to ``lrf`` per epoch."""
    burn_in = config.burn_in if burn_in is None else burn_in
    cosine = config.lrf + (1 - config.lrf) * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs))
    it = epoch * steps_per_epoch + step
    if it < burn_in:
        x = it / max(burn_in, 1)
        return cosine * x, 0.8 + (config.momentum - 0.8) * x
    return cosine, config.momentum


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    loss_box: float
    loss_obj: float
    loss_cls: float
    map50: float
    map50_95: float
    precision: float
    recall: float
    seconds: float
    images_per_s: float
    sparsity: dict = field(default_factory=dict)
    kd: dict = field(default_factory=dict)  # distillation parts per image, like box/obj/cls
    data_wait: float | None = None  # share of the training loop's time spent waiting for the next batch

    def line(self) -> str:
        text = (
            f"epoch {self.epoch:3d}  lr {self.lr:.5f}  box {self.loss_box:.4f} obj {self.loss_obj:.4f} cls {self.loss_cls:.4f}  "
            f"mAP@.5 {self.map50:.4f} mAP@.5:.95 {self.map50_95:.4f}  P {self.precision:.3f} R {self.recall:.3f}  "
            f"{self.seconds:.0f}s ({self.images_per_s:.1f} img/s"
            + (f", data wait {self.data_wait:.0%})" if self.data_wait is not None else ")")
        )
        if self.sparsity:
            text += f"  s {self.sparsity.get('s', 0):.2e} γ<1e-2 {self.sparsity.get('frac_lt_1e-2', 0):.1%}"
        if self.kd:
            text += "  kd " + " ".join(f"{k} {v:.4f}" for k, v in self.kd.items())
        return text


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path | None = None,
        progress: Callable[[Iterable, str, int], Iterator] | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
    ):
        from edgeyolo.data.formats import load_dataset
        from edgeyolo.train.data import YoloTrainDataset

        self.config = config
        self.progress = progress
        self.on_epoch = on_epoch
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if config.device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend)
        if config.threads:
            torch.set_num_threads(config.threads)
        keep_freed_memory()  # or every CPU step faults its activations in again (edgeyolo.heap)
        device = config.device
        if device == "cuda":  # one process per GPU under torchrun
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        self.device = torch.device(device)
        self.run_dir = run_dir or self._new_run_dir()
        self.train_set = load_dataset(config.data, "train")
        self.val_set = load_dataset(config.data, config.val_split)
        for issue in self.train_set.issues + self.val_set.issues:
            log.warning("%s", issue)
        if not self.train_set.samples:
            raise UsageError(f"{config.data}: the train split has no usable images")
        torch.manual_seed(derive_seed(config.seed, 0))  # the initial weights of a from-scratch run
        if config.weights and not config.pretrained:
            model = load_model(config.cfg, config.weights, cutoff=config.cutoff, partial=config.cutoff is not None)
        else:
            model = load_model(config.cfg)
            classes = self.train_set.num_classes
            if model.num_classes != classes and model.cfg.yolo_layers:
                # a cfg made for another dataset (yolov3-tiny's 80 COCO classes): only the heads change
                log.warning(
                    "%s has %d classes and %s has %d: training with classes=%d (the convs before the [yolo] layers "
                    "get %s filters)", config.cfg, model.num_classes, config.data, classes, classes,
                    "/".join(str(len(y.mask) * (classes + 5)) for y in model.cfg.yolo_layers),
                )
                model = Darknet(with_classes(model.cfg, classes))
        if config.weights and config.pretrained:
            from edgeyolo.model.checkpoint import load_pretrained

            skipped = load_pretrained(model, config.weights, cutoff=config.cutoff)
            for name in skipped:
                log.warning("pretrained weights: %s not loaded (shape differs, e.g. another class count)", name)
        if model.num_classes != self.train_set.num_classes:
            raise UsageError(
                f"the cfg has {model.num_classes} classes but {config.data} has {self.train_set.num_classes}; "
                "these weights load strictly into that cfg; add -pt to load what fits into a cfg with the dataset's classes"
            )
        self.quant_spec = config.quant_spec()
        if self.quant_spec:
            # after the weights load (they are float) and before the optimizer and the EMA copy are
            # made; a resume builds the same prepared model before it loads the state
            from edgeyolo.compress.quant import prepare_qat

            model = prepare_qat(model, self.quant_spec)
            self._calibrate_qat(model)
        self.model: Darknet = model.to(self.device).train()
        augment = config.augment_spec()
        self.dataset = YoloTrainDataset(
            self.train_set, config.img_size, augment if config.augment else None, seed=config.seed, cache=config.cache,
            channels=model.cfg.net.channels, plain_from=config.epochs - config.plain_epochs,
        )
        self.schedule = RunSchedule.plan(config, math.ceil(math.ceil(len(self.dataset) / self.world) / self.per_rank_batch))
        self._loader = None  # one loader for the run: its workers persist across epochs
        self.criterion = YoloLoss(self.model, LossConfig(**config.loss))
        self.distiller = None
        if config.kd_strategy:
            from edgeyolo.train.distill import Distiller

            self.distiller = Distiller.load(
                self.model, self.criterion, config.t_cfg, config.t_weights, config.kd_strategy,
                config.img_size, config.kd_t, config.kd_weight, self.device,
            )
        self.optimizer = self._make_optimizer()
        self.ema = ModelEMA(self.model) if config.ema else None
        # fp16 gradients underflow without loss scaling; the scaler is a no-op when AMP is off
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp)
        self.sparsity = None
        if config.sparse:
            from edgeyolo.train.sparsity import SparsityRegularizer

            self.sparsity = SparsityRegularizer(
                self.model, config.prune, config.s, config.sr_schedule, config.epochs,
                target=config.sr_target, penalty=config.sr_penalty, polar_t=config.sr_t, ramp=config.sr_ramp,
                polar_mean=config.sr_polar_mean, layer_cap=config.sr_layer_cap, rank=config.sr_rank,
            )
        self.start_epoch = 0
        self.best_fitness = -1.0
        self.history: list[dict] = []
        self.net: nn.Module = self.model
        if self.distiller:  # the student's forward also returns the feature maps to distil
            from edgeyolo.train.distill import FeatureTap

            self.net = FeatureTap(self.model, self.distiller.student_capture)
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=None if self.device.type == "cpu" else [self.device])

    # ------------------------------------------------------------------ setup

    def _new_run_dir(self) -> Path:
        root = Path(self.config.out)
        if self.config.name:
            return root / self.config.name
        n = 1
        while (root / f"exp{n}").exists():
            n += 1
        return root / f"exp{n}"

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # weight decay on conv weights only, never on BN γ/β or biases
            (decay if name.endswith("conv.weight") else no_decay).append(p)
        c = self.config
        if c.optimizer == "adam":
            opt = torch.optim.Adam([{"params": no_decay, "weight_decay": 0.0}], lr=c.lr0, betas=(c.momentum, 0.999))
        else:
            opt = torch.optim.SGD([{"params": no_decay, "weight_decay": 0.0}], lr=c.lr0, momentum=c.momentum, nesterov=True)
        opt.add_param_group({"params": decay, "weight_decay": self.schedule.weight_decay})
        return opt

    def _calibrate_qat(self, model: Darknet) -> None:
        """Activation ranges from an mse calibration on the first ``qat_calib`` train images (no
        augmentation), then frozen: the weights learn to fit them. Tracking each batch's max instead
        widens the ranges, which at 4 bits leaves most codes unused (measured: 4-bit QAT fell from
        0.237 to 0.170 mAP@0.5 in its second epoch with tracked ranges). A resume loads the saved
        ranges over these and freezes them alike."""
        c = self.config
        if not c.qat_calib or not self.quant_spec.scheme_obj.uses_ranges:  # dorefa: fixed formulas, no ranges
            return
        from edgeyolo.compress.quant import calibrate, freeze_ranges
        from edgeyolo.compress.quant.calib import image_batches

        contract = Contract(c.img_size, c.img_size, channel_order=channel_order_for(model.cfg.net.channels))
        paths = [s.image for s in self.train_set.samples[: c.qat_calib]]
        with torch.no_grad():
            seen = calibrate(model, image_batches(paths, contract, min(c.batch_size, 16)), "mse")
        freeze_ranges(model)
        log.info("QAT: activation ranges calibrated (mse) on %d train images in %d batches, then frozen", len(paths), seen)

    # ------------------------------------------------------------------ state

    @property
    def weights_model(self) -> Darknet:
        """The weights a run validates, saves and hands to pruning: the EMA when there is one."""
        return self.ema.ema if self.ema else self.model

    def save_state(self, epoch: int, fitness: float) -> None:
        """last/best checkpoints + the full training state, each file written atomically."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        weights_model = self.weights_model
        prov = Provenance(command=f"edgeyolo train (epoch {epoch})")
        names = ["last"]
        if fitness > self.best_fitness:
            self.best_fitness = fitness
            names.append("best")
        for name in names:
            save_checkpoint(self._float_model(weights_model), self.run_dir / f"{name}.safetensors", prov)
            if self.quant_spec:  # QAT: also the quantized model with its activation ranges
                from edgeyolo.compress.quant import save_quantized

                save_quantized(weights_model, self.run_dir / f"{name}_quant", info={"source": f"edgeyolo train (epoch {epoch})"})
        state = {
            "epoch": epoch,
            "best_fitness": self.best_fitness,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.ema.state_dict() if self.ema else {},
            "ema_updates": self.ema.updates if self.ema else 0,
            "history": json.dumps(self.history),
            "sparsity": json.dumps(self.sparsity.state_dict() if self.sparsity and hasattr(self.sparsity, "state_dict") else {}),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.run_dir / STATE_FILE, buffer.getvalue())

    @staticmethod
    def _float_model(model: Darknet) -> Darknet:
        """A QAT model's float parameters as a plain Darknet (what ``--weights`` loads); else ``model``."""
        if type(model) is Darknet:
            return model
        plain = Darknet(model.cfg)
        own = model.state_dict()
        plain.load_state_dict({k: own[k] for k in plain.state_dict()})
        return plain

    def load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema:
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
        if self.sparsity and hasattr(self.sparsity, "load_state_dict"):
            self.sparsity.load_state_dict(json.loads(state["sparsity"]))
        self.start_epoch = int(state["epoch"]) + 1
        self.best_fitness = float(state["best_fitness"])
        self.history = json.loads(state["history"])

    @classmethod
    def resume(cls, run_dir: Path, **kwargs) -> "Trainer":
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG_FILE).exists():
            raise UsageError(f"--resume {run_dir}: no {CONFIG_FILE} here; is this a training run folder?")
        config = TrainConfig.from_json((run_dir / CONFIG_FILE).read_text())
        trainer = cls(config, run_dir=run_dir, **kwargs)
        if (run_dir / STATE_FILE).exists():
            trainer.load_state()
        return trainer

    # ------------------------------------------------------------------ loop

    @property
    def per_rank_batch(self) -> int:
        c = self.config
        return max(c.batch_size // self.world if self.world > 1 else c.batch_size, 1)

    @property
    def accumulate(self) -> int:
        """Mini-batches per optimizer step (:class:`RunSchedule`)."""
        return self.schedule.accumulate

    def _batches(self, epoch: int):
        """The epoch's batches from the run's single loader.

        The order is a function of (seed, epoch); each key carries its epoch, so the loader's workers
        are started once per run (spawning them costs seconds per epoch) and still produce exactly
        the samples a fresh loader would.
        """
        from edgeyolo.train.data import batch_loader

        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, epoch, 1))
        order = torch.randperm(len(self.dataset), generator=gen).tolist()
        per_rank = self.per_rank_batch
        if self.world > 1:
            order = order[self.rank :: self.world]
        size = self.dataset.img_size
        keys = [(i, size, epoch) for i in order]
        batches = [keys[i : i + per_rank] for i in range(0, len(keys), per_rank)]
        if self._loader is None:
            self._loader = batch_loader(self.dataset, batches, self.config.workers, persistent=True)
        else:
            self._loader.batch_sampler.batches = batches
        return self._loader

    def fitness(self, record: dict) -> float:
        """What ``best`` maximises: mAP@0.5; in sparse training, epochs whose fraction of prunable γ
        below 1e-2 reached ``sr_target`` rank above every epoch that did not (+1), so ``best`` is a
        checkpoint ready to prune rather than the dense model the run started from."""
        if not self.sparsity:
            return float(record["map50"])
        reached = record.get("sparsity", {}).get("frac_lt_1e-2", 0.0) >= self.config.sr_target
        return float(record["map50"]) + (1.0 if reached else 0.0)

    def best_record(self) -> dict | None:
        """The history entry ``best.safetensors`` holds (None before the first epoch)."""
        return max(self.history, key=self.fitness, default=None)

    def fit(self) -> list[dict]:
        c = self.config
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / CONFIG_FILE, c.to_json())
        for epoch in range(self.start_epoch, c.epochs):
            record = self.train_epoch(epoch, self.accumulate)
            self.history.append(asdict(record))
            self.save_state(epoch, self.fitness(self.history[-1]))
            if self.rank == 0:
                self._write_metrics()
                if self.sparsity:
                    from edgeyolo.train.sparsity import plot_gamma_histogram

                    plot_gamma_histogram(self.weights_model, self.sparsity.layers, self.run_dir / "gamma.png", f"BN |γ| after epoch {epoch}")
            if self.on_epoch:
                self.on_epoch(record)
        self._loader = None  # stops the workers
        return self.history

    def penalty_reach(self) -> float | None:
        """How far the sparsity penalty alone moves a γ over the whole run, at the base rate ``s``.

        This replays the run's optimizer steps (burn-in, cosine LR, the momentum ramp, Nesterov SGD
        as torch applies it) for a gradient of constant sign and size ``s``; once momentum has built
        up each step moves ``lr · s / (1 - m)``. It is exact for the penalty alone and an upper bound
        in training, where the data gradient pushes back on useful channels: a γ near 1 cannot get
        below 1e-2 unless the reach is well above 1. None for Adam, whose steps do not scale with
        the gradient.
        """
        c = self.config
        if not self.sparsity or c.optimizer != "sgd":
            return None
        steps = self.schedule.batches_per_epoch
        accumulate = self.accumulate
        total, buf = 0.0, None
        for epoch in range(c.epochs):
            for step in range(steps):
                if (step + 1) % accumulate == 0 or step + 1 == steps:
                    factor, momentum = lr_factor(c, epoch, step, steps, self.schedule.burn_in)
                    buf = 1.0 if buf is None else momentum * buf + 1.0
                    total += c.lr0 * self.schedule.lr_scale * factor * (1.0 + momentum * buf)  # Nesterov: g + m · buf
        return c.s * total

    def train_epoch(self, epoch: int, accumulate: int) -> EpochRecord:
        c = self.config
        start = time.perf_counter()
        loader = self._batches(epoch)
        steps = len(loader)
        if self.sparsity and hasattr(self.sparsity, "update"):
            self.sparsity.update(epoch)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3)
        kd_totals: dict[str, float] = {}
        seen = 0
        batches = self.progress(loader, f"epoch {epoch}", steps) if self.progress else loader
        lr = c.lr0
        waited = 0.0
        ready = time.perf_counter()
        for step, (images, targets, _) in enumerate(batches):
            waited += time.perf_counter() - ready
            factor, momentum = lr_factor(c, epoch, step, steps, self.schedule.burn_in)
            lr = c.lr0 * self.schedule.lr_scale * factor
            for group in self.optimizer.param_groups:
                group["lr"] = lr
                if "momentum" in group:
                    group["momentum"] = momentum
            images = images.to(self.device)
            targets = targets.to(self.device)
            if c.multi_scale:
                rng = np.random.default_rng(derive_seed(c.seed, epoch, step, 2))
                size = int(rng.integers(c.multi_scale[0] // 32, c.multi_scale[1] // 32 + 1)) * 32
                if size != images.shape[-1]:
                    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            torch.manual_seed(derive_seed(c.seed, epoch, step, 3))  # dropout
            with torch.autocast(self.device.type, enabled=c.amp):
                if self.distiller:
                    raw, features = self.net(images)
                    loss, parts = self.criterion(raw, targets, images.shape[-2], images.shape[-1])
                    kd_loss, kd_parts = self.distiller(images, raw, features, targets)
                    loss = loss + kd_loss
                    for key, value in kd_parts.items():
                        kd_totals[key] = kd_totals.get(key, 0.0) + value
                else:
                    raw = self.net(images)
                    loss, parts = self.criterion(raw, targets, images.shape[-2], images.shape[-1])
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss.item()} at epoch {epoch} step {step}; the last good checkpoint "
                    f"is kept in {self.run_dir} — lower --lr0, check the labels, or resume from it"
                )
            self.scaler.scale(loss).backward()
            totals += parts.cpu()
            seen += images.shape[0]
            if (step + 1) % accumulate == 0 or step + 1 == steps:
                self.scaler.unscale_(self.optimizer)  # the penalty below is in true-gradient units
                if self.sparsity:
                    self.sparsity.apply(epoch, (epoch + (step + 1) / steps) / c.epochs, self.optimizer)
                self.scaler.step(self.optimizer)  # skipped (and the scale lowered) on inf/NaN gradients
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(self.model)
            ready = time.perf_counter()
        train_s = time.perf_counter() - start
        metrics = self.validate() if self.rank == 0 else None
        mean = (totals / max(steps, 1)).tolist()
        sparsity = {}
        if self.sparsity:
            from edgeyolo.train.sparsity import gamma_stats

            stats = gamma_stats(self.weights_model, self.sparsity.layers)  # of the weights saved and pruned
            sparsity = {"s": float(self.sparsity.current_s), **{k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}}
        return EpochRecord(
            epoch,
            lr,
            mean[0],
            mean[1],
            mean[2],
            metrics.map50 if metrics else float("nan"),
            metrics.map50_95 if metrics else float("nan"),
            metrics.precision if metrics else float("nan"),
            metrics.recall if metrics else float("nan"),
            time.perf_counter() - start,
            seen * self.world / max(train_s, 1e-9),
            sparsity,
            {k: v / max(steps, 1) for k, v in kd_totals.items()},
            waited / max(train_s, 1e-9),
        )

    @torch.no_grad()
    def validate(self):
        """mAP of the EMA model on the val split, with the inference contract (conf 0.001, NMS 0.6)."""
        import cv2

        from edgeyolo.train.metrics import evaluate

        model = self.weights_model.eval()
        size = self.config.img_size
        contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels), conf_threshold=0.001, iou_threshold=0.6)
        samples = self.val_set.samples[: self.config.max_val_images] if self.config.max_val_images else self.val_set.samples
        gts, dets = [], []
        for sample in samples:
            image = cv2.imread(str(sample.image))
            if image is None:
                continue
            blob, box = contract.preprocess(image)
            pred = model(torch.from_numpy(blob).to(self.device))[0].float().cpu().numpy()
            dets.append(contract.postprocess(pred, box))
            gts.append(sample.annotation)
        self.model.train()
        if not gts:
            raise UsageError(f"{self.config.data}: the {self.config.val_split} split has no readable images")
        return evaluate(gts, dets, self.val_set.num_classes, "coco", names=self.val_set.names)

    def _write_metrics(self) -> None:
        if not self.history:
            return
        buffer = io.StringIO()
        keys = list(dict.fromkeys(k for h in self.history for k in h if k not in ("sparsity", "kd")))  # a resumed older run lacks newer columns
        sparse_keys = sorted({k for h in self.history for k in h.get("sparsity", {})})
        kd_keys = list(dict.fromkeys(k for h in self.history for k in h.get("kd", {})))
        writer = csv.writer(buffer)
        writer.writerow(keys + [f"sparsity.{k}" for k in sparse_keys] + [f"kd.{k}" for k in kd_keys])
        for h in self.history:
            writer.writerow(
                [h.get(k, "") for k in keys] + [h.get("sparsity", {}).get(k, "") for k in sparse_keys] + [h.get("kd", {}).get(k, "") for k in kd_keys]
            )
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
        self._plot_curves()

    def _plot_curves(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in self.history]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for key in ("loss_box", "loss_obj", "loss_cls"):
            axes[0].plot(epochs, [h[key] for h in self.history], label=key)
        axes[0].set_xlabel("epoch")
        axes[0].legend()
        for key in ("map50", "map50_95"):
            axes[1].plot(epochs, [h[key] for h in self.history], label=key)
        axes[1].set_xlabel("epoch")
        axes[1].legend()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        atomic_write_bytes(self.run_dir / "curves.png", buffer.getvalue())
