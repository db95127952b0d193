"""Knowledge distillation: a frozen teacher's outputs and feature maps as extra training signal.

``edgeyolo train --t-cfg C --t-weights W --KDstr N`` adds ``L_kd`` to the detection loss. Notation:
T = ``--kd-t`` (default 3), ``KL_T(z_s, z_t) = T² · Σ_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))`` over the
last axis, B = images in the batch, ``p`` = a head's raw output as rows [B, A, H, W, 5+C].

====  =============================================================================================
 N    L_kd (each Σ runs over the whole batch)
====  =============================================================================================
 1    1e-3 · Σ_heads KL_T(p_s, p_t)                       Hinton KD on every (5+C) row
 2    1e-4 · L_cls + 1e-3 · Σ_{GT cells, d_s > d_t} d_s   teacher-bounded box regression
 3    1e-4 · L_cls + 1e-3 · L_imit                        direct box imitation
 4    1e-3 · (L_cls + L_imit + Σ_pairs KL_T(A_s, A_t))    + spatial attention of all feature maps
 5    as 4 with A ← A ⊙ M (object-location mask)
 6    as 4 with only the maps feeding each [yolo] head's last conv
====  =============================================================================================

where ``L_cls = Σ_heads KL_T(p_s[..., 4:], p_t[..., 4:])`` (objectness + classes, every cell);
``b`` = the decoded box in grid units ``(σ(tx)·s − (s−1)/2, σ(ty)·s − (s−1)/2, e^tw·a_w, e^th·a_h)``
(s = ``scale_x_y``, anchors divided by the head's stride), ``g`` the GT box in the same units,
``d = ‖b − g‖²``, ``L_imit = Σ_{GT cells} ‖b_s − b_t‖²``; GT cells are the student's assignment
(:meth:`YoloLoss.assign`);
``A[b, h·w] = Σ_c |F[b, c, h, w]|`` (the "L1" spatial attention), one row per image.

Scale. Those λs are the reference repository's, chosen against its detection loss (gains
giou 3.54 / obj 64.3 / cls 37.4, loss × B/64). This repo's detection loss (YOLOv5 gains, about 1/64 of
those, loss × B) has about the same gradient scale, so the KD term is added as ``--kd-weight · L_kd / 64``
(``--kd-weight`` default 1): with the default, KD weighs against detection as it did in the
reference. Unlike the reference, the box sums of 2/3 are not multiplied by B a second time (the
reference's Σ d_s was not divided by B, so its weight grew with the batch size). Logged parts
(``kd.cls`` …) are per image, comparable with ``box``/``obj``/``cls`` of the log line.

Pairing. Teacher and student heads are paired by stride (``model.heads``, from the cfg), never by
position; every student head needs a teacher head of its stride with the same anchor count (extra
teacher heads are unused). Feature maps are paired by spatial size at the training image size:

- 4/5 take every conv output that is not a head conv and is larger than 1×1 (squeeze-excitation
  vectors carry no spatial attention). Each size must occur equally often in both networks; the
  k-th map of a size pairs with the k-th of that size. Channel counts may differ (the attention sums
  them), so a channel-pruned student pairs; a layer-pruned one does not, and
  :class:`FeaturePairingError` names the sizes whose counts differ.
- 6 (the paper's "spatial attention from the feature maps of specific scales"): per [yolo] head,
  the map its last conv reads, i.e. the output of layer ``yolo − 2`` (one map per scale, the most
  processed one before the prediction). Each student map pairs with the teacher map of its size;
  a student size the teacher lacks raises :class:`FeaturePairingError`.

The object mask of 5 (reference faults fixed): a GT cell (gj, gi) of a head with an h×w grid covers
input rows [gj·S/h, (gj+1)·S/h); on a feature map of H rows it marks every row that range touches,
``⌊gj·H/h⌋ … ⌈(gj+1)·H/h⌉ − 1`` (columns alike). When the head is r times coarser that is the full
r×r block (the reference marked only its diagonal); when it is finer, the one cell containing it
(the reference skipped such heads). Each head's own grid is used, so the order of the [yolo] layers
(v3: 32, 16, 8; v4: 8, 16, 32) does not matter. Masked-out positions become zero logits that still
take part in the softmax, as in the reference.

The teacher is loaded like ``--weights`` (:func:`load_model`), kept in eval mode with
``requires_grad=False``, runs under ``torch.no_grad`` and is not part of the optimizer, the EMA or
the checkpoints; being frozen, it does not disturb bit-exact resume.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, ConvSpec, YoloSpec, infer_shapes
from edgeyolo.model.darknet import Darknet, Head
from edgeyolo.train.loss import YoloLoss

log = logging.getLogger(__name__)

STRATEGIES = {
    1: "Hinton KD on all outputs",
    2: "class KD + teacher-bounded box regression",
    3: "class KD + box imitation",
    4: "class KD + box imitation + spatial attention (all feature maps)",
    5: "class KD + box imitation + object-masked spatial attention",
    6: "class KD + box imitation + spatial attention of the per-scale maps feeding the heads",
}
REFERENCE_BATCH = 64  # the reference scales its loss by B/64; see the module docstring


class FeaturePairingError(UsageError):
    """Teacher and student feature maps (or heads) cannot be paired by spatial size."""


# ---------------------------------------------------------------------------------------- losses


def kl_rows(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · Σ_rows KL(softmax(teacher/T) ‖ softmax(student/T))``, softmax over the last axis."""
    t = float(temperature)
    log_s = F.log_softmax(student.float() / t, dim=-1)
    log_t = F.log_softmax(teacher.float() / t, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum() * (t * t)


def spatial_attention(feature: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H·W]: Σ_c |F|; channel counts of teacher and student may differ."""
    return feature.float().abs().sum(1).flatten(1)


def attention_kd(student: Tensor, teacher: Tensor, temperature: float, mask: Optional[Tensor] = None) -> Tensor:
    """KL_T between the spatial attention maps of two feature maps of one size (mask: [B, H, W])."""
    a_s, a_t = spatial_attention(student), spatial_attention(teacher)
    if mask is not None:
        m = mask.flatten(1).to(a_s.dtype)
        a_s, a_t = a_s * m, a_t * m
    return kl_rows(a_s, a_t, temperature)


def head_rows(raw: Tensor, head: Head) -> Tensor:
    """[B, A(5+C), H, W] -> [B, A, H, W, 5+C], the layout the loss and decode use."""
    b, _, h, w = raw.shape
    return raw.view(b, len(head.anchors), head.classes + 5, h, w).permute(0, 1, 3, 4, 2)


def grid_boxes(rows: Tensor, anchors_grid: Tensor, scale_x_y: float) -> Tensor:
    """Raw rows [N, ≥4] -> boxes [N, 4] in grid units relative to their cell (the loss's decode)."""
    s = scale_x_y
    xy = torch.sigmoid(rows[:, :2].float()) * s - 0.5 * (s - 1.0)
    wh = torch.exp(rows[:, 2:4].float()).clamp(max=1e3) * anchors_grid
    return torch.cat([xy, wh], 1)


def object_mask(cells: list[tuple[Tensor, Tensor, Tensor, int, int]], batch: int, height: int, width: int) -> Tensor:
    """[B, H, W] mask, 1 on every feature cell that a GT cell's input-pixel extent touches.

    ``cells``: per head (batch index, gj, gi, head grid h, head grid w). Integer arithmetic only, so
    strides that do not divide evenly cannot round a block away.
    """
    mask = torch.zeros(batch, height, width)
    for bi, gj, gi, h, w in cells:
        if not bi.numel():
            continue
        bi, gj, gi = bi.cpu(), gj.cpu(), gi.cpu()
        r0, r1 = (gj * height) // h, -((-(gj + 1) * height) // h)  # floor, ceil
        c0, c1 = (gi * width) // w, -((-(gi + 1) * width) // w)
        for dy in range(int((r1 - r0).max())):
            for dx in range(int((c1 - c0).max())):
                rows, cols = r0 + dy, c0 + dx
                ok = (rows < r1) & (cols < c1) & (rows < height) & (cols < width)
                mask[bi[ok], rows[ok], cols[ok]] = 1.0
    return mask


# ------------------------------------------------------------------------------------- selection


def _size(shape: tuple[int, int, int]) -> tuple[int, int]:
    return shape[1], shape[2]


def _fmt(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def all_feature_layers(cfg: Cfg, img_size: int) -> list[tuple[int, tuple[int, int]]]:
    """Strategies 4/5: (layer, spatial size) of every conv output that is not a head conv, in order."""
    shapes = infer_shapes(cfg, img_size, img_size)
    out = []
    for layer in cfg.layers:
        i = layer.index
        feeds_head = i + 1 < len(cfg.layers) and isinstance(cfg.layers[i + 1], YoloSpec)
        if isinstance(layer, ConvSpec) and not feeds_head and shapes[i][1] * shapes[i][2] > 1:
            out.append((i, _size(shapes[i])))
    return out


def head_feature_layers(cfg: Cfg, img_size: int) -> list[tuple[int, tuple[int, int]]]:
    """Strategy 6: per [yolo], the output its last conv reads (layer yolo − 2; yolo − 1 if that is
    not a conv), in cfg order."""
    shapes = infer_shapes(cfg, img_size, img_size)
    out = []
    for y in cfg.yolo_layers:
        i = y.index - 2 if isinstance(cfg.layers[y.index - 1], ConvSpec) and y.index >= 2 else y.index - 1
        out.append((i, _size(shapes[i])))
    return out


def pair_features(
    student: list[tuple[int, tuple[int, int]]], teacher: list[tuple[int, tuple[int, int]]], strict: bool, strategy: int
) -> list[tuple[int, int]]:
    """Pair (student layer, teacher layer) by spatial size, k-th with k-th within a size.

    strict: each size must occur equally often in both (4/5); otherwise the teacher may have more.
    """
    by_s: dict[tuple[int, int], list[int]] = defaultdict(list)
    by_t: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, size in student:
        by_s[size].append(i)
    for i, size in teacher:
        by_t[size].append(i)
    bad = [
        size for size in sorted(set(by_s) | set(by_t), reverse=True)
        if (len(by_s[size]) != len(by_t[size]) if strict else len(by_s[size]) > len(by_t[size]))
    ]
    if bad:
        detail = "; ".join(f"{_fmt(s)}: student {len(by_s[s])}, teacher {len(by_t[s])}" for s in bad)
        hint = (
            "a layer-pruned student has fewer feature maps of some size than its teacher: use --KDstr 1-3, or 6 "
            "(which pairs only the maps feeding the [yolo] heads)"
            if strict else "the teacher needs a map of each of those sizes: a teacher with the same [yolo] strides"
        )
        raise FeaturePairingError(
            f"--KDstr {strategy}: cannot pair the student's and teacher's feature maps by spatial size; "
            f"sizes that could not be paired (maps of that size): {detail}; {hint}"
        )
    return sorted((s, t) for size, layers in by_s.items() for s, t in zip(layers, by_t[size]))


def pair_heads(student: Darknet, teacher: Darknet) -> list[tuple[int, int]]:
    """(student head, teacher head) index pairs with equal stride (from the cfgs)."""
    by_stride = {h.stride: j for j, h in enumerate(teacher.heads)}
    pairs, missing = [], []
    for i, head in enumerate(student.heads):
        j = by_stride.get(head.stride)
        if j is None:
            missing.append(head.stride)
            continue
        if len(teacher.heads[j].anchors) != len(head.anchors):
            raise UsageError(
                f"distillation: the stride-{head.stride} heads have {len(head.anchors)} anchors in the student and "
                f"{len(teacher.heads[j].anchors)} in the teacher; their outputs must have the same rows"
            )
        pairs.append((i, j))
    if missing:
        raise FeaturePairingError(
            f"distillation: the teacher has no [yolo] head of stride {', '.join(map(str, missing))} "
            f"(student strides {[h.stride for h in student.heads]}, teacher {[h.stride for h in teacher.heads]}); "
            "pick a teacher with the student's output scales"
        )
    return pairs


# -------------------------------------------------------------------------------------- distiller


class FeatureTap(nn.Module):
    """The student's forward with the distilled feature maps: ``(raw heads, {layer: map})``.

    A module (rather than a call to ``model.run``) so DistributedDataParallel can wrap it.
    """

    def __init__(self, model: Darknet, capture: frozenset[int]):
        super().__init__()
        self.model = model
        self.capture = capture

    def forward(self, x: Tensor) -> tuple[list[Tensor], dict[int, Tensor]]:
        return self.model.run(x, self.capture)


class Distiller:
    """Callable: ``loss, parts = distiller(images, student_raw, student_features, targets)``."""

    def __init__(
        self,
        student: Darknet,
        teacher: Darknet,
        strategy: int,
        criterion: YoloLoss,
        img_size: int,
        temperature: float = 3.0,
        weight: float = 1.0,
    ):
        if strategy not in STRATEGIES:
            raise UsageError(f"--KDstr must be one of 1-6, got {strategy}")
        if temperature <= 0:
            raise UsageError(f"--kd-t must be positive, got {temperature}")
        if teacher.num_classes != student.num_classes:
            raise UsageError(
                f"distillation: the teacher has {teacher.num_classes} classes and the student {student.num_classes}; "
                "train (or fine-tune) the teacher on the student's dataset first"
            )
        if teacher.cfg.net.channels != student.cfg.net.channels:
            raise UsageError(
                f"distillation: the teacher reads {teacher.cfg.net.channels}-channel images and the student "
                f"{student.cfg.net.channels}; both must read the same input"
            )
        self.student = student
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.strategy = strategy
        self.criterion = criterion
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.heads = pair_heads(student, teacher)
        self.features: list[tuple[int, int]] = []
        if strategy in (4, 5):
            self.features = pair_features(all_feature_layers(student.cfg, img_size), all_feature_layers(teacher.cfg, img_size), True, strategy)
        elif strategy == 6:
            self.features = pair_features(head_feature_layers(student.cfg, img_size), head_feature_layers(teacher.cfg, img_size), False, strategy)
        self.student_capture = frozenset(s for s, _ in self.features)
        self.teacher_capture = frozenset(t for _, t in self.features)
        self.part_names = ("out",) if strategy == 1 else ("cls", "box") if strategy in (2, 3) else ("cls", "box", "feat")

    @classmethod
    def load(
        cls, student: Darknet, criterion: YoloLoss, t_cfg: str | None, t_weights: str, strategy: int,
        img_size: int, temperature: float, weight: float, device: torch.device,
    ) -> "Distiller":
        """Load the teacher the way the trainer loads ``--weights`` and pair it with the student."""
        from edgeyolo.model.checkpoint import load_model

        teacher = load_model(t_cfg, t_weights).to(device)
        log.info("distillation teacher %s (%s)", t_weights, Path(t_cfg).name if t_cfg else "cfg from the checkpoint")
        return cls(student, teacher, strategy, criterion, img_size, temperature, weight)

    def describe(self) -> str:
        text = f"distillation: --KDstr {self.strategy} ({STRATEGIES[self.strategy]}), T {self.temperature:g}, weight {self.weight:g}"
        if self.features:
            text += f", {len(self.features)} feature map pair(s) (student layer -> teacher layer: " + ", ".join(f"{s}->{t}" for s, t in self.features) + ")"
        return text

    def terms(
        self, s_raw: list[Tensor], s_feats: dict[int, Tensor], t_raw: list[Tensor], t_feats: dict[int, Tensor],
        targets: Tensor, img_h: int, img_w: int,
    ) -> dict[str, Tensor]:
        """The λ-weighted batch sums of the strategy (before ``weight / 64``)."""
        T = self.temperature
        sh, th = self.student.heads, self.teacher.heads
        rows = [(head_rows(s_raw[i], sh[i]), head_rows(t_raw[j], th[j]), i, j) for i, j in self.heads]
        if self.strategy == 1:
            return {"out": 1e-3 * sum(kl_rows(ps, pt, T) for ps, pt, _, _ in rows)}
        cls = sum(kl_rows(ps[..., 4:], pt[..., 4:], T) for ps, pt, _, _ in rows)
        assigned = self.criterion.assign(s_raw, targets, img_h, img_w)
        box = torch.zeros((), device=s_raw[0].device)
        for ps, pt, i, j in rows:
            bi, ai, gj, gi, tbox, _, anchors = assigned[i]
            if not bi.numel():
                continue
            h, w = ps.shape[2:4]
            stride = torch.tensor([img_w / w, img_h / h], device=anchors.device, dtype=anchors.dtype)
            t_anchors = torch.tensor(th[j].anchors, device=anchors.device, dtype=anchors.dtype)[ai] / stride
            b_s = grid_boxes(ps[bi, ai, gj, gi], anchors.float(), sh[i].scale_x_y)
            b_t = grid_boxes(pt[bi, ai, gj, gi], t_anchors.float(), th[j].scale_x_y)
            if self.strategy == 2:
                d_s = ((b_s - tbox.float()) ** 2).sum(1)
                d_t = ((b_t - tbox.float()) ** 2).sum(1)
                box = box + d_s[d_s > d_t].sum()  # margin 0: extra regression only where worse than the teacher
            else:
                box = box + ((b_s - b_t) ** 2).sum()
        if self.strategy in (2, 3):
            return {"cls": 1e-4 * cls, "box": 1e-3 * box}
        mask = None
        feat = torch.zeros((), device=s_raw[0].device)
        for s, t in self.features:
            fs, ft = s_feats[s], t_feats[t]
            if fs.shape[-2:] != ft.shape[-2:]:  # cannot happen at the planned size; multi-scale keeps ratios
                raise FeaturePairingError(f"--KDstr {self.strategy}: layer {s} is {tuple(fs.shape[-2:])} but teacher layer {t} is {tuple(ft.shape[-2:])}")
            if self.strategy == 5:
                cells = [(a[0], a[2], a[3], r.shape[-2], r.shape[-1]) for a, r in zip(assigned, s_raw)]
                mask = object_mask(cells, fs.shape[0], fs.shape[-2], fs.shape[-1]).to(fs.device)
            feat = feat + attention_kd(fs, ft, T, mask)
        return {"cls": 1e-3 * cls, "box": 1e-3 * box, "feat": 1e-3 * feat}

    def __call__(
        self, images: Tensor, s_raw: list[Tensor], s_feats: dict[int, Tensor], targets: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """The loss to add to the detection loss, and its parts per image (for the log)."""
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            t_raw, t_feats = self.teacher.run(images, self.teacher_capture)
        terms = self.terms(s_raw, s_feats, t_raw, t_feats, targets, int(images.shape[-2]), int(images.shape[-1]))
        scale = self.weight / REFERENCE_BATCH
        loss = scale * sum(terms.values())
        batch = images.shape[0]
        return loss, {k: float(v.detach()) * scale / batch for k, v in terms.items()}
