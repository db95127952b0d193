"""YOLO loss: darknet-style target assignment, CIoU/GIoU box loss, objectness and class BCE.

Assignment (darknet / ultralytics-v3 style): a target is given to every anchor of every ``[yolo]``
layer whose width/height IoU with it exceeds ``iou_t``, and always to its single best anchor across
all layers, so no target goes unassigned. The cell is the one containing the target centre.
Decoding follows the model exactly (``scale_x_y``, exp·anchor), with strides taken from the cfg.

Gains follow the widely used YOLOv5 defaults, which train stably with SGD lr 0.01 at batch 64
(box 0.05, obj 1.0 with per-scale balance, cls 0.5 scaled by nc/80), and the loss is multiplied by
the batch size so the gradient scale does not depend on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeyolo.model.darknet import Darknet


@dataclass(frozen=True)
class LossConfig:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    iou_t: float = 0.20
    box_loss: str = "ciou"  # or "giou"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.box_loss not in ("ciou", "giou"):
            raise ValueError(f"box_loss must be ciou or giou, got {self.box_loss}")


def bbox_iou(a: Tensor, b: Tensor, kind: str = "ciou", eps: float = 1e-7) -> Tensor:
    """IoU variants of matching rows of cx, cy, w, h boxes."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(1)
    union = a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter + eps
    iou = inter / union
    c1, c2 = torch.min(a1, b1), torch.max(a2, b2)
    if kind == "giou":
        c_area = (c2 - c1).prod(1) + eps
        return iou - (c_area - union) / c_area
    c_diag = ((c2 - c1) ** 2).sum(1) + eps
    centre = ((a[:, :2] - b[:, :2]) ** 2).sum(1)
    v = (4 / math.pi**2) * (torch.atan(b[:, 2] / (b[:, 3] + eps)) - torch.atan(a[:, 2] / (a[:, 3] + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre / c_diag + v * alpha)


def _wh_iou(anchors: Tensor, wh: Tensor) -> Tensor:
    """[A, 2] × [N, 2] -> [A, N] IoU of boxes sharing a centre."""
    inter = torch.min(anchors[:, None], wh[None]).prod(2)
    return inter / (anchors.prod(1)[:, None] + wh.prod(1)[None] - inter + 1e-9)


class YoloLoss:
    """Callable: ``loss, parts = YoloLoss(model)(raw_heads, targets, img_size)``.

    ``targets`` is [N, 6] = (batch index, class, cx, cy, w, h) normalised to the input image.
    """

    def __init__(self, model: Darknet, config: LossConfig | None = None):
        self.config = config or LossConfig()
        self.heads = model.heads
        self.num_classes = model.num_classes
        # objectness balance across scales (finest grid weighted most), assigned by stride because
        # darknet cfgs list the coarsest head first
        n = len(self.heads)
        self.balance = [1.0] * n
        if n == 3:
            for weight, i in zip((4.0, 1.0, 0.4), sorted(range(n), key=lambda i: self.heads[i].stride)):
                self.balance[i] = weight

    def __call__(self, raw: list[Tensor], targets: Tensor, img_h: int, img_w: int) -> tuple[Tensor, Tensor]:
        cfg = self.config
        device = raw[0].device
        batch = raw[0].shape[0]
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        assigned = self.assign(raw, targets, img_h, img_w)
        for i, (r, head) in enumerate(zip(raw, self.heads)):
            b, _, h, w = r.shape
            a = len(head.anchors)
            p = r.view(b, a, head.classes + 5, h, w).permute(0, 1, 3, 4, 2)
            tobj = torch.zeros(p.shape[:4], device=device, dtype=p.dtype)
            bi, ai, gj, gi, tbox, tcls, anchors = assigned[i]
            if bi.numel():
                ps = p[bi, ai, gj, gi]
                s = head.scale_x_y
                pxy = torch.sigmoid(ps[:, :2]) * s - 0.5 * (s - 1.0)
                pwh = torch.exp(ps[:, 2:4]).clamp(max=1e3) * anchors
                iou = bbox_iou(torch.cat([pxy, pwh], 1), tbox, cfg.box_loss)
                lbox = lbox + (1.0 - iou).mean()
                tobj[bi, ai, gj, gi] = iou.detach().clamp(0).to(tobj.dtype)
                if head.classes > 1:
                    off = cfg.label_smoothing * 0.5
                    t = torch.full_like(ps[:, 5:], off)
                    t[torch.arange(len(tcls), device=device), tcls] = 1.0 - off
                    lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], t)
            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * self.balance[i]
        lbox = lbox * cfg.box
        lobj = lobj * cfg.obj
        lcls = lcls * cfg.cls * self.num_classes / 80.0
        total = (lbox + lobj + lcls) * batch
        return total, torch.stack([lbox, lobj, lcls]).detach()

    @torch.no_grad()
    def assign(self, raw: list[Tensor], targets: Tensor, img_h: int, img_w: int):
        """Per head, the GT-assigned cells: (batch, anchor, gj, gi, box in grid units relative to the
        cell, class, anchor wh in grid units). Public because distillation imitates at these cells."""
        device = raw[0].device
        n = targets.shape[0]
        # wh IoU of each target with every anchor of every head (input pixels)
        wh_px = targets[:, 4:6] * torch.tensor([img_w, img_h], device=device)
        ious = [
            _wh_iou(torch.tensor(head.anchors, device=device, dtype=targets.dtype), wh_px)
            for head in self.heads
        ]
        # each target's single best anchor over all heads (first one on ties, in cfg order)
        stacked = torch.cat(ious, 0)
        best = stacked.argmax(0) if n else torch.zeros(0, dtype=torch.long, device=device)
        has_best = stacked.max(0).values > 0 if n else torch.zeros(0, dtype=torch.bool, device=device)
        per_head = []
        offset = 0
        for i, (r, head) in enumerate(zip(raw, self.heads)):
            _, _, h, w = r.shape
            iou = ious[i]
            match = iou > self.config.iou_t
            local = best - offset
            mine = has_best & (local >= 0) & (local < len(head.anchors))
            match[local[mine], torch.nonzero(mine).flatten()] = True
            offset += len(head.anchors)
            ai, ti = torch.nonzero(match, as_tuple=True)
            t = targets[ti]
            gxy = t[:, 2:4] * torch.tensor([w, h], device=device, dtype=t.dtype)
            gij = gxy.long()
            gi = gij[:, 0].clamp(0, w - 1)
            gj = gij[:, 1].clamp(0, h - 1)
            stride = torch.tensor([img_w / w, img_h / h], device=device, dtype=t.dtype)
            anchors = torch.tensor(head.anchors, device=device, dtype=t.dtype)[ai] / stride  # grid units
            gwh = t[:, 4:6] * torch.tensor([w, h], device=device, dtype=t.dtype)
            tbox = torch.cat([gxy - torch.stack([gi, gj], 1).to(t.dtype), gwh], 1)
            per_head.append((t[:, 0].long(), ai, gj, gi, tbox, t[:, 1].long(), anchors))
        return per_head
