"""Data-dependent initialisation: random weights that still give a useful, non-degenerate network.

Plain random init saturates or overflows deep darknet models (yolov3/yolov4 activations grow by
orders of magnitude through 20+ residual blocks, so objectness is all 0 or 1). Here every conv is
calibrated in one forward pass over real or synthetic images: batch-norm statistics are set to the
statistics actually observed, γ/β are drawn around a healthy operating point, and convs without
batch norm (the heads) are rescaled to unit output variance. Every tensor stays random and seeded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from edgeyolo.contract import Contract
from edgeyolo.model.cfg import ShortcutSpec
from edgeyolo.model.darknet import ConvBlock, Darknet
from edgeyolo.model.io import IMAGE_SUFFIXES



def synthetic_images(count: int, height: int, width: int, seed: int) -> list[np.ndarray]:
    """Smooth colour fields with rectangles and ellipses: image-like statistics without any files."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        low = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(3, 9))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            sx, sy = int(rng.integers(4, width // 3)), int(rng.integers(4, height // 3))
            if rng.random() < 0.5:
                cv2.rectangle(img, (x, y), (x + sx, y + sy), colour, -1)
            else:
                cv2.ellipse(img, (x, y), (sx // 2, sy // 2), float(rng.integers(0, 180)), 0, 360, colour, -1)
        noise = rng.normal(0, 6, img.shape)
        images.append(np.clip(img + noise, 0, 255).astype(np.uint8))
    return images


def load_images(folder: str | Path, limit: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [img for img in (cv2.imread(str(p)) for p in paths[:limit]) if img is not None]
    return images


def calibration_batch(contract: Contract, images: Sequence[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.concatenate([contract.preprocess(img)[0] for img in images]))


@torch.no_grad()
def random_init(model: Darknet, batch: Tensor, seed: int = 0) -> None:
    """Seeded random weights calibrated on ``batch`` (a preprocessed [B, C, H, W] tensor)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = dict(model.conv_blocks())
    # the conv closing a residual branch starts small, so that a stack of residual blocks starts near
    # the identity: deep random nets are otherwise chaotic and blow up on images unlike the calibration set
    residual_ends = {layer.index - 1 for layer in model.cfg.layers if isinstance(layer, ShortcutSpec)}
    for index, block in blocks.items():
        w = block.conv.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        # a random sign per (out, in) pair plus noise: filters then respond to smooth, image-like
        # input about as strongly as to noise. Zero-mean filters mostly cancel on smooth input, so BN
        # calibration amplifies rounding noise at every layer and deep models drift from other runtimes.
        sign = torch.randint(0, 2, (w.shape[0], w.shape[1], 1, 1), generator=gen).float() * 2 - 1
        ortho = torch.empty(w.shape[0], fan_in)
        nn.init.orthogonal_(ortho, generator=gen)
        w.copy_((ortho.view_as(w) * fan_in**0.5 + (sign if w.shape[2] * w.shape[3] > 1 else 0.0)) * (1.0 / fan_in) ** 0.5)
        if block.bn is not None:
            n = block.bn.num_features
            # spread of γ gives pruning and sparse training something to rank
            gamma = torch.empty(n).uniform_(0.3, 1.0, generator=gen)
            block.bn.weight.copy_(gamma * (0.2 if index in residual_ends else 1.0))
            block.bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        elif block.conv.bias is not None:
            block.conv.bias.zero_()

    def calibrate(module: ConvBlock, inputs: tuple[Tensor], output: Tensor) -> None:
        # runs right after the conv of this block: previous layers are already calibrated
        y = output.double()
        mean = y.mean(dim=(0, 2, 3))
        var = y.var(dim=(0, 2, 3), unbiased=False)
        # a near-constant channel would get a huge gain and amplify every rounding error behind it
        var = var.clamp_min(max(float(var.median()) * 1e-2, 1e-8))
        parent = owners[id(module)]
        if parent.bn is not None:
            parent.bn.running_mean.copy_(mean.float())
            parent.bn.running_var.copy_(var.float())
            return None
        target = targets.get(id(module))
        if target is None:
            # inner convs without BN (squeeze-excitation on pooled vectors): one gain for the layer
            # and no mean subtraction; subtracting a large common mean through the bias would
            # cancel digits and amplify rounding error downstream
            gain = torch.full_like(var, 1.0 / float(y.pow(2).mean().sqrt()))
            shift = torch.zeros_like(mean)
        else:
            # heads: unit-variance logits; box-size logits narrower so exp() gives anchor-sized boxes
            gain = target / var.sqrt()
            shift = mean
        module.weight.mul_(gain.float().view(-1, 1, 1, 1))
        module.bias.copy_((-shift * gain).float())
        return (output - shift.float().view(1, -1, 1, 1)) * gain.float().view(1, -1, 1, 1)

    owners: dict[int, ConvBlock] = {id(b.conv): b for b in blocks.values()}
    targets: dict[int, Tensor] = {}
    for head in model.heads:
        feeder = blocks.get(head.layer - 1)
        if feeder is not None and feeder.bn is None:
            per_anchor = torch.ones(head.classes + 5, dtype=torch.float64)
            per_anchor[2:4] = 0.3
            targets[id(feeder.conv)] = per_anchor.repeat(len(head.anchors))
    hooks = [b.conv.register_forward_hook(calibrate) for b in blocks.values()]
    was_training = model.training
    model.eval()
    try:
        model.forward_raw(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def health(model: Darknet, batch: Tensor) -> dict[str, float]:
    """Non-degeneracy numbers: finite outputs and the share of objectness inside (0.01, 0.99)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(batch)
    model.train(was_training)
    obj = pred[..., 4]
    finite = bool(torch.isfinite(pred).all())
    inside = float(((obj > 0.01) & (obj < 0.99)).float().mean()) if finite else 0.0
    return {"finite": float(finite), "objectness_in_range": inside, "max_abs": float(pred[..., :4].abs().max())}


def freeze_bn_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
