"""Models, plans and comparisons shared by the pruning tests."""
from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor

from edgeyolo.cli.common import load_cli_model
from edgeyolo.compress.prune import Plan
from edgeyolo.contract import Contract
from edgeyolo.data.synth import make_synthetic
from edgeyolo.model.cfg import Cfg, parse_cfg_text, with_input_size
from edgeyolo.model.darknet import BN_MOMENTUM, Darknet
from edgeyolo.model.init import calibration_batch, synthetic_images
from edgeyolo.runtime.runners import make_runner

TOLERANCE = 1e-5  # max|Δ| / max|ref| for outputs that must not change
#: (cfg, method) pairs where the method does not apply, and what its error says; every other pair applies
NOT_APPLICABLE = {
    (name, method): "has no removable residual block"
    for name in ("yolov3-tiny", "yolov4-tiny")
    for method in ("layer", "layer-channel")
}


def images(size: int, count: int = 2, seed: int = 0) -> Tensor:
    return calibration_batch(Contract(size, size), synthetic_images(count, size, size, seed))


@torch.no_grad()
def quick_model(cfg: Cfg, size: int, seed: int = 0) -> Darknet:
    """Random weights with BN statistics measured on synthetic images, so activations stay O(1).

    Not ``model.init.random_init``: its orthogonal init alone takes ~20 s for yolov3 on two busy
    cores, and invariance only needs finite, varied activations (the oracle tests use it).
    """
    model = Darknet(with_input_size(cfg, size))
    gen = torch.Generator().manual_seed(seed)
    for _, block in model.conv_blocks():
        w = block.conv.weight
        w.copy_(torch.randn(w.shape, generator=gen) * (1.0 / w[0].numel()) ** 0.5)
        if block.bn is not None:
            block.bn.weight.copy_(torch.rand(w.shape[0], generator=gen) * 0.7 + 0.3)
            block.bn.bias.copy_(torch.randn(w.shape[0], generator=gen) * 0.3)
            block.bn.momentum = None  # one batch: running statistics = that batch's
        else:
            block.conv.bias.copy_(torch.randn(w.shape[0], generator=gen) * 0.1)
    model.train()
    model.forward_raw(images(size, seed=seed))
    for _, block in model.conv_blocks():
        if block.bn is not None:
            block.bn.momentum = BN_MOMENTUM
    return model.eval()


def small_cfg(*blocks: str, size: int = 32) -> Cfg:
    return parse_cfg_text(f"[net]\nwidth={size}\nheight={size}\nchannels=3\n" + "".join(blocks), "<test>")


def conv(filters: int, size: int = 3, stride: int = 1, act: str = "leaky", bn: bool = True) -> str:
    return (
        f"[convolutional]\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n"
        + ("batch_normalize=1\n" if bn else "")
    )


def head() -> str:
    """1x1 linear conv + [yolo] (3 anchors, 1 class)."""
    return conv(18, 1, act="linear", bn=False) + "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nclasses=1\nnum=3\n"


def route(layers: str, groups: int = 1, group_id: int = 0) -> str:
    extra = f"groups={groups}\ngroup_id={group_id}\n" if groups > 1 else ""
    return f"[route]\nlayers={layers}\n{extra}"


def shortcut(frm: int = -3) -> str:
    return f"[shortcut]\nfrom={frm}\nactivation=linear\n"


def maxpool(size: int, stride: int) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n"


def upsample() -> str:
    return "[upsample]\nstride=2\n"


def mask(width: int, removed: list[int]) -> Tensor:
    m = torch.ones(width, dtype=torch.bool)
    m[removed] = False
    return m


@torch.no_grad()
def zero_removed(model: Darknet, plan: Plan, beta: bool = True) -> Darknet:
    """A copy of ``model`` whose channels removed by ``plan`` have γ = 0 (and β = 0 if ``beta``)."""
    model = copy.deepcopy(model)
    targets = dict(plan.masks)
    for s in plan.blocks:  # a deleted block's last conv outputs the constant act(β)
        targets[s - 1] = torch.zeros(model.module_list[s - 1].bn.num_features, dtype=torch.bool)
    for i, keep in targets.items():
        bn = model.module_list[i].bn
        bn.weight[~keep] = 0.0
        if beta:
            bn.bias[~keep] = 0.0
    return model


@torch.no_grad()
def heads(model: Darknet, x: Tensor) -> list[np.ndarray]:
    return [h.double().numpy() for h in model.forward_raw(x)]


def rel_error(ref: list[np.ndarray], got: list[np.ndarray], margin: int = 0) -> float:
    """Worst max|Δ| / max|ref| over the heads, on the interior ``margin`` cells away from the border."""
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        assert r.shape == g.shape, (r.shape, g.shape)
        if margin:
            r, g = r[..., margin:-margin, margin:-margin], g[..., margin:-margin, margin:-margin]
            assert r.size > 0, "the interior crop is empty"
        worst = max(worst, float(np.abs(r - g).max() / np.abs(r).max()))
    return worst


def self_labelled_synth(out: Path, size: int) -> Path:
    """A synthetic dataset whose 6 val images are labelled with the detections of the model
    ``--random-init`` builds for edgeyolo-res, so the unpruned model scores mAP ≈ 1 and any change to
    it shows. Returns the data.yaml."""
    summary = make_synthetic(out, classes=12, train=1, val=6, img_size=size, seed=1)
    model = load_cli_model("edgeyolo-res", None, random_init=True, img_size=size)
    contract = Contract(size, size, conf_threshold=0.25, iou_threshold=0.6)
    boxes = 0
    with make_runner("torch", model, contract) as runner:
        for image in sorted((summary.out / "images" / "val").glob("*.png")):
            blob, box = contract.preprocess(cv2.imread(str(image)))
            det = contract.postprocess(runner.infer(blob)[0], box)
            lines = [
                f"{int(c)} {(x1 + x2) / 2 / size:.8f} {(y1 + y2) / 2 / size:.8f} {(x2 - x1) / size:.8f} {(y2 - y1) / size:.8f}"
                for x1, y1, x2, y2, _, c in det
            ]
            boxes += len(lines)
            (summary.out / "labels" / "val" / f"{image.stem}.txt").write_text("\n".join(lines) + "\n")
    assert boxes >= 12
    return summary.data_yaml
