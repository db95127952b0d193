"""``edgeyolo train``: normal, fine-tune, sparse training and distillation; ``--resume RUN_DIR`` after any stop."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

FLOAT_LR0, QAT_LR0 = 0.01, 0.001


def train(
    data: Optional[Path] = typer.Option(None, "--data", help="darknet .data, Ultralytics .yaml, COCO .json or a VOC root."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start from these weights (strict unless -pt)."),
    pretrained: bool = typer.Option(False, "-pt", "--pretrained", help="Load what fits; heads of another class count are skipped."),
    cutoff: Optional[int] = typer.Option(None, "--cutoff", help="Load only layers before N (darknet53.conv.74: 75)."),
    img_size: int = typer.Option(416, "--img-size", "--img_size", help="Train/val input size (multiple of 32)."),
    multi_scale: Optional[List[int]] = typer.Option(None, "--multi-scale", help="MIN and MAX: a new size per batch (give twice)."),
    batch_size: int = typer.Option(
        16, "--batch-size", "--batch_size", help="Images per mini-batch (gradients accumulate to 64, or one epoch's when fewer)."
    ),
    epochs: int = typer.Option(100, "--epochs", help="Epochs."),
    device: str = typer.Option("cpu", "--train-device", "--device", help="cpu | cuda | cuda:N."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run folder from its last finished epoch."),
    out: Path = typer.Option(Path("runs"), "--out", help="Folder of run folders."),
    name: Optional[str] = typer.Option(None, "--name", help="Run folder name (default expN)."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    seed: int = typer.Option(0, "--seed", help="Seed: data order, augmentation, multi-scale."),
    threads: int = typer.Option(0, "--threads", help="torch threads (0 = default)."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd (Nesterov) | adam."),
    lr0: Optional[float] = typer.Option(
        None, "--lr0", help="Initial learning rate (default 0.01; 0.001 for quantization-aware training)."
    ),
    no_augment: bool = typer.Option(False, "--no-augment", help="Letterbox only."),
    aug: Optional[List[str]] = typer.Option(
        None, "--aug", help="Augmentation strength NAME=VALUE, repeatable: hsv_h, hsv_s, hsv_v, flip_lr, degrees, translate, "
        "scale, shear, mosaic, min_object_px (README: augmentation).",
    ),
    close_aug: float = typer.Option(
        0.1, "--close-aug", help="Fraction of the final epochs trained without augmentation (0: augment to the end)."
    ),
    amp: bool = typer.Option(False, "--amp", help="Mixed precision (CUDA only)."),
    sparse: bool = typer.Option(False, "-sr", "--sr", "--sparse", help="Sparse training of BN γ."),
    s: float = typer.Option(0.001, "--s", help="Sparsity rate (per optimizer step)."),
    prune: int = typer.Option(0, "--prune", help="Prunable set: 0 normal/regular, 1 shortcut/slim, 2 layer."),
    sr_schedule: str = typer.Option("constant", "--sr-schedule", help="constant | step | local | dynamic."),
    sr_target: float = typer.Option(0.5, "--sr-target", help="dynamic schedule and gradual penalty: the fraction of prunable γ to bring below 1e-2."),
    sr_penalty: str = typer.Option(
        "l1", "--sr-penalty", help="l1 (Network Slimming) | polar (polarization: splits γ in two groups) | gradual (pulls the lowest γ, ramping to --sr-target)."
    ),
    sr_t: float = typer.Option(1.0, "--sr-t", help="polar: balance t (>1 prunes more, <1 lifts the kept group)."),
    sr_ramp: float = typer.Option(0.5, "--sr-ramp", help="gradual: fraction of the run by which --sr-target of the γ are pulled."),
    sr_polar_mean: str = typer.Option("global", "--sr-polar-mean", help="polar: split each γ around the mean of the whole set (global) or of its own conv (layer)."),
    sr_layer_cap: float = typer.Option(1.0, "--sr-layer-cap", help="Pull at most this share of each conv's γ (the smallest); 1 = no cap."),
    sr_rank: str = typer.Option(
        "magnitude", "--sr-rank", help="gradual: pull the smallest |γ| (magnitude) or the least important by Taylor, (γ·dL/dγ)² (taylor)."
    ),
    cache: bool = typer.Option(False, "--cache", help="Decode the training images once into a memory-mapped cache."),
    max_val_images: Optional[int] = typer.Option(None, "--max-val-images", help="Validate on the first N images only."),
    t_cfg: Optional[str] = typer.Option(None, "--t-cfg", "--t_cfg", help="Distillation teacher cfg (path or zoo name)."),
    t_weights: Optional[Path] = typer.Option(None, "--t-weights", "--t_weights", help="Distillation teacher weights (loaded like --weights)."),
    kd_strategy: int = typer.Option(
        0, "--KDstr", "--kd-strategy",
        help="Distillation: 1 KD on all outputs, 2 class KD + teacher-bounded box, 3 class KD + box imitation, "
        "4 = 3 + spatial attention of all feature maps, 5 = 4 with object masks, 6 = 3 + attention of the maps feeding the heads.",
    ),
    kd_t: float = typer.Option(3.0, "--kd-t", help="Distillation temperature."),
    kd_weight: float = typer.Option(1.0, "--kd-weight", help="Multiplies the distillation loss (1: the reference's balance)."),
    quantized: Optional[str] = typer.Option(
        None, "--quantized", help="Quantization-aware training: affine | dorefa | pow2 (seed numbers: 1 = affine, 2 = dorefa)."
    ),
    fpga: bool = typer.Option(False, "--FPGA", help="Same as --quantized pow2 (power-of-two scales, for FPGA DPUs)."),
    w_bit: int = typer.Option(8, "--w-bit", "--w_bit", help="QAT weight bits."),
    a_bit: int = typer.Option(8, "--a-bit", "--a_bit", help="QAT activation bits."),
    edge_bits: Optional[int] = typer.Option(
        None, "--edge-bits", help="QAT bits of the image-input conv and the head convs (default: 8 when --w-bit/--a-bit < 8; 0: the same)."
    ),
    qat_calib: int = typer.Option(64, "--qat-calib", help="Train images calibrating the activation ranges (mse) before QAT, which then keeps them fixed (0: track an EMA of each batch's max)."),
    bn_fold: bool = typer.Option(False, "--bn-fold", "--BN_Fold", "--BN_Flod", help="QAT with BN folded into the conv weights."),
) -> None:
    """Train a darknet-cfg model; each epoch validates, logs one line and checkpoints atomically."""
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track
    from edgeyolo.model.zoo import resolve_cfg
    from edgeyolo.train.trainer import MIN_OPTIMIZER_STEPS, TrainConfig, Trainer

    def progress(items, description, total):
        return track(items, description, total)

    def on_epoch(record):
        typer.echo(record.line())

    if resume is not None:
        trainer = Trainer.resume(resume, progress=progress, on_epoch=on_epoch)
        typer.echo(f"resuming {resume} at epoch {trainer.start_epoch}")
    else:
        if data is None or cfg is None:
            raise UsageError("--data and --cfg are required (or --resume RUN_DIR)")
        if multi_scale is not None and len(multi_scale) != 2:
            raise UsageError("--multi-scale takes MIN and MAX: --multi-scale 320 --multi-scale 608")
        scheme = None
        if quantized is not None and quantized.strip() != "-1":  # the reference's default -1: float
            from edgeyolo.compress.quant import parse_scheme

            scheme = parse_scheme(quantized)
        if fpga:
            if scheme not in (None, "pow2"):
                raise UsageError(f"--FPGA means --quantized pow2; it cannot be combined with --quantized {quantized}")
            scheme = "pow2"
        if lr0 is None:
            # QAT fine-tunes a trained model through fake quantizers: at the float default the burn-in's
            # high-LR phase cost 3.4 (affine) and 9 (pow2) mAP points on edgeyolo-res, at 0.1x it lost none
            lr0 = QAT_LR0 if scheme else FLOAT_LR0
            if scheme:
                typer.echo(f"quantization-aware training: --lr0 {lr0:g} (0.1x the float default; pass --lr0 to change)")
        config = TrainConfig(
            data=str(data),
            cfg=str(resolve_cfg(cfg)),
            weights=str(weights) if weights else None,
            pretrained=pretrained,
            cutoff=cutoff,
            img_size=img_size,
            multi_scale=tuple(multi_scale) if multi_scale else None,
            batch_size=batch_size,
            epochs=epochs,
            device=device,
            out=str(out),
            name=name,
            workers=workers,
            seed=seed,
            threads=threads,
            optimizer=optimizer,
            lr0=lr0,
            augment=not no_augment,
            aug=parse_aug(aug or []),
            close_aug=close_aug,
            amp=amp,
            sparse=sparse,
            s=s,
            prune=prune,
            sr_schedule=sr_schedule,
            sr_target=sr_target,
            sr_penalty=sr_penalty,
            sr_t=sr_t,
            sr_ramp=sr_ramp,
            sr_polar_mean=sr_polar_mean,
            sr_layer_cap=sr_layer_cap,
            sr_rank=sr_rank,
            cache=cache,
            max_val_images=max_val_images,
            kd_strategy=max(kd_strategy, 0),  # the reference's default -1 means none
            t_cfg=str(resolve_cfg(t_cfg)) if t_cfg else None,
            t_weights=str(t_weights) if t_weights else None,
            kd_t=kd_t,
            kd_weight=kd_weight,
            quantized=scheme,
            w_bit=w_bit,
            a_bit=a_bit,
            bn_fold=bn_fold,
            edge_bits=edge_bits,
            qat_calib=qat_calib,
        )
        trainer = Trainer(config, progress=progress, on_epoch=on_epoch)
        typer.echo(f"training into {trainer.run_dir}")
    if trainer.distiller:
        typer.echo(trainer.distiller.describe())
    if trainer.quant_spec:
        q = trainer.quant_spec
        typer.echo(
            f"quantization-aware training: {q.scheme}, w{q.w_bit}/a{q.a_bit}{', BN folded' if q.bn_fold else ''}"
            f"{f', first and head convs at {q.edge_bits} bit' if q.edge_bits else ''}; "
            f"the quantized model is written to {trainer.run_dir}/last_quant and best_quant"
        )
    if trainer.sparsity:
        typer.echo(trainer.sparsity.describe())
        c = trainer.config
        if c.sr_schedule == "local" and c.sr_penalty == "polar" and c.sr_t <= 1.0:
            # polar pulls γ above the set's mean at (t - 1)·s: with t <= 1 the channels `local` would
            # relieve are not pushed down anyway (a measured run was bit-identical to `constant`)
            typer.echo(
                f"warning: --sr-schedule local does little or nothing with --sr-penalty polar at --sr-t {c.sr_t:g}: "
                "the channels it relieves sit above the mean once polarized, and polar does not push those down",
                err=True,
            )
        reach = trainer.penalty_reach()
        if reach is not None:
            typer.echo(f"sparse training: at s {trainer.config.s:g} the penalty alone can move a γ by at most {reach:.2g} over this run")
            if reach < 1.0:
                needed = trainer.config.s * 2.0 / max(reach, 1e-12)
                # a rate above 1 per step would be absurd: the run is too short (or all in the LR burn-in)
                fix = f"raise --s to about {needed:.2g} or train for more epochs" if needed <= 1.0 else "train for more epochs"
                typer.echo(
                    f"warning: --s {trainer.config.s:g} is too weak for this run to push γ (about 1 after normal training) "
                    f"below 1e-2: {fix} (README: sparse training)",
                    err=True,
                )
    schedule = trainer.schedule
    typer.echo(schedule.describe(trainer.config, len(trainer.dataset)))
    if schedule.total_steps < MIN_OPTIMIZER_STEPS:
        typer.echo(
            f"warning: {schedule.total_steps} optimizer steps are too few to learn (under {MIN_OPTIMIZER_STEPS}; "
            f"README: training): train for more epochs, or lower --batch-size",
            err=True,
        )
    trainer.fit()
    best = trainer.best_record()
    if best is None:
        typer.echo(f"done: nothing left to train; weights in {trainer.run_dir}")
        return
    last = trainer.history[-1] if trainer.history else best
    if last.get("sparsity"):  # what is pruned is the sparsest model, the last epoch's, not the best-mAP one
        frac = last["sparsity"].get("frac_lt_1e-2", 0.0)
        reached = "reached" if frac >= trainer.config.sr_target else "below"
        best_frac = (best.get("sparsity") or {}).get("frac_lt_1e-2", 0.0)
        typer.echo(
            f"done: last epoch {last['epoch']} mAP@0.5 {last['map50']:.4f}, γ<1e-2 {frac:.1%} ({reached} the "
            f"{trainer.config.sr_target:.0%} target); prune {trainer.run_dir / 'last.safetensors'} (best.safetensors is "
            f"epoch {best['epoch']}, mAP@0.5 {best['map50']:.4f}, γ<1e-2 {best_frac:.1%})"
        )
        return
    typer.echo(f"done: best mAP@0.5 {best['map50']:.4f} at epoch {best['epoch']}; weights in {trainer.run_dir}")


def parse_aug(items: list[str]) -> dict:
    """``--aug name=value`` options as the config's ``aug`` dict; names and ranges are checked by the
    config (``TrainAugment``), the form here."""
    from edgeyolo.errors import UsageError

    values: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            values[name] = float(text)
        except ValueError:
            raise UsageError(f"--aug takes NAME=VALUE with a number, e.g. --aug scale=0.3; got '{item}'") from None
    return values


def register(app: typer.Typer) -> None:
    app.command("train")(train)
