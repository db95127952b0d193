"""Write the demo build's starting checkpoint, ``edgeyolo/model/zoo/edgeyolo-res-synth.safetensors``.

It was made on 2 CPU cores with (the synthetic set's defaults: 12 classes, 2000 train / 300 val,
256 px, seed 0; normal training, no sparsity):

    edgeyolo data synth --out synth
    edgeyolo train --data synth/data.yaml --cfg edgeyolo-res --img-size 160 --batch-size 16 --epochs 40 \\
        --workers 0 --cache --seed 0 --out runs --name dense40
    python examples/demo/make_checkpoint.py runs/dense40 synth/data.yaml

This script takes the run's last (EMA) weights, stores the conv weights as float16 (half the size; BN
stays float32), scores the stored file itself on the val split at the demo's export size and at the
training size, counts the BN γ below 1e-2, and writes all of it into the checkpoint's metadata.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from edgeyolo.compress.prune.prunable import prunable_bn
from edgeyolo.data.formats import load_dataset
from edgeyolo.model.checkpoint import Provenance, load_model, save_checkpoint
from edgeyolo.model.zoo import DEMO_CHECKPOINT
from edgeyolo.runtime.evaluate import evaluate_model
from edgeyolo.train.sparsity import gamma_stats

SIZES = (288, 160)  # jetson-nano's smallest listed input size (the demo's export size), the training size


def main(run_dir: str, data: str, out: Path = DEMO_CHECKPOINT) -> dict:
    run = Path(run_dir)
    config = json.loads((run / "config.json").read_text())
    model = load_model(None, run / "last.safetensors")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("conv.weight"):
                param.copy_(param.half().float())  # what the fp16 file will hold
    save_checkpoint(model, out, Provenance(command=config.get("command", "")))
    shipped = load_model(None, out)
    val = load_dataset(data, "val")
    meta = {
        "edgeyolo.demo.train_command": (
            "edgeyolo train --data synth/data.yaml --cfg edgeyolo-res --img-size 160 --batch-size 16 --epochs 40 "
            "--workers 0 --cache --seed 0"
        ),
        "edgeyolo.demo.data": "edgeyolo data synth --out synth (defaults: 12 classes, 2000 train / 300 val, 256 px, seed 0)",
        "edgeyolo.demo.seed": str(config.get("seed", 0)),
        "edgeyolo.demo.epochs": str(config.get("epochs")),
        "edgeyolo.demo.val_images": str(len(val.samples)),
    }
    for size in SIZES:
        result = evaluate_model(shipped, val, img_size=size, backend="onnxruntime").result
        meta[f"edgeyolo.demo.map50@{size}"] = f"{result.map50:.4f}"
        meta[f"edgeyolo.demo.map50_95@{size}"] = f"{result.map50_95:.4f}"
    for mode in (0, 1):
        meta[f"edgeyolo.demo.gamma_below_1e-2.prune{mode}"] = f"{gamma_stats(shipped, prunable_bn(shipped.cfg, mode))['frac_lt_1e-2']:.4f}"
    state = {k: (v.half() if k.endswith("conv.weight") else v) for k, v in shipped.state_dict().items()}
    from safetensors.torch import save

    from edgeyolo.fileio import atomic_write_bytes
    from edgeyolo.model.cfg import format_cfg

    header = {"edgeyolo.cfg": format_cfg(shipped.cfg), **Provenance(command=meta["edgeyolo.demo.train_command"]).to_metadata(), **meta}
    atomic_write_bytes(out, save({k: t.contiguous() for k, t in state.items()}, metadata=header))
    return meta


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:3]), indent=1))
