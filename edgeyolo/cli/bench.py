"""``edgeyolo bench``: host latency, int8, trainer, pruning and compression benchmarks, and board benchmarks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgeyolo.cli import render
from edgeyolo.cli.board import (
    BuildTimeoutOpt,
    CalibOpt,
    DeviceOpt,
    InventoryOpt,
    PrecisionOpt,
    TrtexecOpt,
    TrustOpt,
    connect_board,
    upload_progress,
)
from edgeyolo.cli.common import ImgSizeOpt, ModelCfgOpt, check_img_size, darknet_files, load_cli_model

app = typer.Typer(help="Benchmarks.", no_args_is_help=True)


@app.command("host")
def host(
    cfg: Optional[str] = ModelCfgOpt,
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (default: calibrated random init)."),
    images: Path = typer.Option(..., "--images", help="Folder of images, used round-robin."),
    img_size: Optional[int] = ImgSizeOpt,
    runs: int = typer.Option(50, "--runs", help="Timed runs per backend."),
    threads: int = typer.Option(2, "--threads", help="Threads for every runtime."),
    backends: List[str] = typer.Option(
        ["onnxruntime", "onnxruntime-int8", "opencv", "torch"], "--backend",
        help="Backends to time (repeatable): onnxruntime, onnxruntime-int8 (the host int8 layout), opencv, torch."
    ),
    calib: Optional[Path] = typer.Option(None, "--calib", help="onnxruntime-int8: calibration images (default: the --images folder)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Pre + inference + post latency (median, p90) per backend on the same images, threads pinned."""
    from rich.console import Console

    from edgeyolo.bench.host import bench_host, gemm_gflops
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track
    from edgeyolo.model.cfg import total_bflops
    from edgeyolo.model.init import load_images
    from edgeyolo.runtime.runners import make_runner

    check_img_size(img_size)
    if runs <= 0 or threads <= 0:
        raise UsageError("--runs and --threads must be positive")
    if not images.is_dir():
        raise UsageError(f"--images {images}: not a folder")
    frames = load_images(images, 64)
    if not frames:
        raise UsageError(f"--images {images}: no readable images")
    model = load_cli_model(cfg, weights, random_init=weights is None, img_size=img_size)
    size = img_size or model.cfg.net.height
    contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
    gflops = total_bflops(model.cfg, size, conv_only=True)
    files = darknet_files(cfg, weights)
    calib_frames = None
    if "onnxruntime-int8" in backends:
        calib_frames = load_images(calib, 64) if calib is not None else frames
        if not calib_frames:
            raise UsageError(f"--calib {calib}: no readable images")
    runners = {b: make_runner(b, model, contract, threads, *files, calib_images=calib_frames) for b in backends}
    ceiling = gemm_gflops(threads)
    try:
        results = bench_host(runners, contract, frames, gflops, runs=runs, threads=threads, progress=lambda r: track(r, "bench"))
    finally:
        for r in runners.values():
            r.close()
    if as_json:
        payload = {"cfg": cfg or str(weights), "img_size": size, "gflops": gflops, "gemm_gflops_per_s": ceiling, "results": [r.to_dict() for r in results]}
        typer.echo(json.dumps(payload, indent=1))
        return
    table = render.table(
        f"{cfg or weights} @ {size}, {threads} threads, {runs} runs, {gflops:.2f} GFLOP (conv)",
        ("backend", "pre ms", "infer ms (p50/p90)", "post ms", "total ms (p50/p90)", "GFLOP/s", "% GEMM", "vs slowest"),
    )
    slowest = max(r.total.median_ms for r in results)
    for r in results:
        table.add_row(
            r.backend,
            f"{r.pre.median_ms:.1f}",
            f"{r.infer.median_ms:.1f} / {r.infer.p90_ms:.1f}",
            f"{r.post.median_ms:.1f}",
            f"{r.total.median_ms:.1f} / {r.total.p90_ms:.1f}",
            f"{r.gflops_per_s:.0f}",
            f"{100 * r.gflops_per_s / ceiling:.0f}%",
            f"{slowest / r.total.median_ms:.2f}x",
        )
    console = Console(width=140)
    console.print(table)
    console.print(f"fp32 GEMM ceiling on {threads} threads: {ceiling:.0f} GFLOP/s (torch.mm 1024^3, best of 10)")


@app.command("int8")
def int8(
    cfg: Optional[str] = ModelCfgOpt,
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (default: calibrated random init)."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images (a folder)."),
    images: Path = typer.Option(..., "--images", help="Scored and timed images (a folder; none of them in --calib)."),
    img_size: Optional[int] = ImgSizeOpt,
    runs: int = typer.Option(50, "--runs", help="Timed runs per model, interleaved."),
    threads: int = typer.Option(2, "--threads", help="onnxruntime threads."),
    calibration: str = typer.Option("minmax", "--calibration", help="minmax | percentile | entropy."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Host int8 (the onnxruntime layout) against fp32: latency p50/p90 and agreement of the detections."""
    from rich.console import Console

    from edgeyolo.bench.int8 import AGREEMENT_GOAL, bench_int8
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track
    from edgeyolo.model.init import load_images

    check_img_size(img_size)
    if runs <= 0 or threads <= 0:
        raise UsageError("--runs and --threads must be positive")
    for option, folder in (("--calib", calib), ("--images", images)):
        if not folder.is_dir():
            raise UsageError(f"{option} {folder}: not a folder")
    if {p.name for p in calib.iterdir()} & {p.name for p in images.iterdir()} or calib.resolve() == images.resolve():
        raise UsageError("--calib and --images share images: calibrate on other images than the ones scored")
    calib_frames, scored = load_images(calib, 256), load_images(images, 256)
    if not calib_frames or not scored:
        raise UsageError(f"no readable images in {calib if not calib_frames else images}")
    model = load_cli_model(cfg, weights, random_init=weights is None, img_size=img_size)
    size = img_size or model.cfg.net.height
    r = bench_int8(model, calib_frames, scored, size, runs, threads, calibration, progress=lambda x: track(x, "bench int8"))
    if as_json:
        typer.echo(json.dumps({"cfg": cfg or str(weights), **r.to_dict()}, indent=1))
        return
    table = render.table(
        f"{cfg or weights} @ {size}, onnxruntime, {threads} threads, {runs} interleaved runs; {r.scored_images} scored images "
        f"({r.reference_boxes} float boxes), {r.calibration_images} calibration images",
        ("model", "infer ms (p50/p90)", "vs fp32", "mAP@0.5 vs float detections"),
    )
    table.add_row("fp32", f"{r.fp32_ms[0]:.1f} / {r.fp32_ms[1]:.1f}", "1.00x", "1 (reference)")
    bits = "7-bit" if r.reduce_range else "8-bit"
    table.add_row(f"int8 (u8 act, s8 {bits} weights)", f"{r.int8_ms[0]:.1f} / {r.int8_ms[1]:.1f}", f"{r.speedup_p50:.2f}x", f"{r.agreement_map50:.3f}")
    values = sorted(r.sabotaged.values())
    table.add_row(
        f"int8, 2x scale error in one of {len(values)} tensors", "", "",
        f"min {values[0]:.3f}, median {values[len(values) // 2]:.3f}, max {values[-1]:.3f}; {r.caught} of {len(values)} below {AGREEMENT_GOAL}",
    )
    console = Console(width=140)
    console.print(table)
    console.print(f"codes equal to the torch fake-quant model at every quantizer: min {r.min_code_match:.4%} (teacher-forced)")


@app.command("train-step")
def train_step(
    cfg: str = typer.Option("edgeyolo-res", "--cfg", help="darknet .cfg or zoo name."),
    img_size: int = typer.Option(160, "--img-size", help="Training size."),
    batch_size: int = typer.Option(16, "--batch-size", help="Batch size."),
    images: int = typer.Option(256, "--images", help="Synthetic training images (one epoch)."),
    workers: int = typer.Option(2, "--workers", help="Data loading processes."),
    sparse: bool = typer.Option(False, "-sr", "--sparse", help="Include the sparsity penalty."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Train from the decoded-image cache."),
    rounds: int = typer.Option(3, "--rounds", help="Interleaved rounds (one trainer epoch, then as many bare steps); medians."),
) -> None:
    """Trainer throughput vs a bare forward+backward on a pre-loaded batch, interleaved (aim: overhead <= 10 %)."""
    from rich.console import Console

    from edgeyolo.bench.train_step import bench_train_step
    from edgeyolo.errors import UsageError

    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    r = bench_train_step(cfg, img_size, batch_size, images, workers, sparse=sparse, cache=cache, rounds=rounds)
    table = render.table(
        f"{cfg} @ {img_size}, batch {batch_size}, {images} images, {workers} workers, cache {'on' if cache else 'off'}",
        ("round", "bare fwd+bwd img/s", "bare + loss img/s", "trainer img/s", "trainer / bare", "the loss", "data wait",
         "faults/step trainer, bare"),
    )
    for k, ((bare, timed), lossy, (ratio, loss, wait), (t_faults, b_faults)) in enumerate(
        zip(r.rounds, r.loss_rounds, r.round_parts(), r.fault_rounds), 1
    ):
        table.add_row(
            str(k), f"{bare:.1f}", f"{lossy:.1f}", f"{timed:.1f}", f"{ratio:.2f}x", f"{loss:+.0%}", f"+{wait:.0%}", f"{t_faults:.0f}, {b_faults:.0f}"
        )
    trainer_faults, bare_faults = r.faults_per_step
    table.add_row(
        "median", f"{r.bare_img_per_s:.1f}", f"{r.loss_img_per_s:.1f}", f"{r.trainer_img_per_s:.1f}", f"{r.ratio:.2f}x", f"{r.loss_share:+.0%}",
        f"+{r.wait_share:.0%}", f"{trainer_faults:.0f}, {bare_faults:.0f}",
    )
    Console(width=140).print(table)


@app.command("prune-speed")
def prune_speed(
    cfg: str = typer.Option("yolov4", "--cfg", help="darknet .cfg or zoo name."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (default: calibrated random init)."),
    methods: Optional[List[str]] = typer.Option(None, "--method", help="Methods to time (repeatable; default all)."),
    percent: Optional[str] = typer.Option(None, "--percent", help="Percent for every channel method (default: each method's)."),
    shortcuts: int = typer.Option(8, "--shortcuts", help="layer, layer-channel: residual blocks to delete."),
    repeats: int = typer.Option(1, "--repeats", help="Runs per method (the median is shown)."),
    cli: bool = typer.Option(False, "--cli", help="Also time the whole `edgeyolo prune` command per method (a fresh process)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Selection + graph surgery wall time per pruning method (model load and init excluded; aim < 5 s)."""
    import dataclasses

    from rich.console import Console

    from edgeyolo.bench.prune import prune_speed as bench_prune_speed
    from edgeyolo.compress.prune import parse_percent

    model = load_cli_model(cfg, weights, random_init=weights is None)
    rows = bench_prune_speed(model, methods, None if percent is None else parse_percent(percent), shortcuts, repeats)
    if cli:
        from edgeyolo.bench.prune import cli_prune_seconds

        rows = [r if r.error else dataclasses.replace(r, cli_seconds=cli_prune_seconds(r.method, cfg, weights and str(weights), percent, shortcuts))
                for r in rows]
    if as_json:
        typer.echo(json.dumps({"cfg": cfg, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
        return
    table = render.table(
        f"prune speed: {cfg}, {'median of ' + str(repeats) if repeats > 1 else 'one run'} per method",
        ("method", "seconds", "CLI seconds", "stages", "conv channels", "BFLOPs", "note"),
        left=("method", "note"),
    )
    for r in rows:
        if r.error is not None:
            table.add_row(r.method, "—", "", "", "", "", r.error)
            continue
        change = (r.bflops[1] - r.bflops[0]) / r.bflops[0]
        table.add_row(
            r.method,
            f"{r.seconds:.2f}",
            "" if r.cli_seconds is None else f"{r.cli_seconds:.1f}",
            str(r.stages),
            f"{r.conv_channels[0]:,} → {r.conv_channels[1]:,}",
            f"{r.bflops[0]:.2f} → {r.bflops[1]:.2f} ({change:+.0%})",
            "" if r.seconds < 5.0 else "over the 5 s aim",
        )
    Console(width=140).print(table)


@app.command("prune-latency")
def prune_latency(
    cfg: str = typer.Option("edgeyolo-res", "--cfg", help="darknet .cfg or zoo name."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Weights (default: calibrated random init)."),
    img_size: int = typer.Option(256, "--img-size", "--img_size", help="Square input size (multiple of 32)."),
    percent: float = typer.Option(0.5, "--percent", help="normal's percent; regular's is matched to its FLOPs."),
    multiple: int = typer.Option(8, "--multiple", help="regular: kept channel counts are multiples of N."),
    runs: int = typer.Option(50, "--runs", help="Timed runs per model."),
    threads: int = typer.Option(2, "--threads", help="onnxruntime threads."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """onnxruntime latency of the unpruned model, normal, and regular at the same FLOPs (interleaved)."""
    import dataclasses

    from rich.console import Console

    from edgeyolo.bench.prune import ALIGNMENT
    from edgeyolo.bench.prune import prune_latency as bench_prune_latency
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track

    check_img_size(img_size)
    if runs <= 0 or threads <= 0:
        raise UsageError("--runs and --threads must be positive")
    model = load_cli_model(cfg, weights, random_init=weights is None, img_size=img_size)
    rows = bench_prune_latency(
        model, img_size, percent, multiple, threads, runs, progress=lambda r: track(r, "bench prune-latency")
    )
    if as_json:
        payload = [{**dataclasses.asdict(r), "speedup": r.speedup, "exponent": r.exponent} for r in rows]
        typer.echo(json.dumps({"cfg": cfg, "img_size": img_size, "threads": threads, "rows": payload}, indent=1))
        return
    table = render.table(
        f"prune latency: {cfg} @ {img_size}, onnxruntime {threads} threads, {runs} interleaved runs",
        ("model", "percent", "GFLOP (conv)", "FLOPs ×", f"convs not ×{ALIGNMENT}", "infer ms (p50/p90)", "latency ×", "speed-up", "α"),
        left=("model",),
    )
    for r in rows:
        table.add_row(
            r.name,
            "" if r.percent is None else f"{r.percent:.3f}",
            f"{r.gflops:.3f}",
            f"{r.flops_ratio:.3f}",
            str(r.misaligned),
            f"{r.infer.median_ms:.2f} / {r.infer.p90_ms:.2f}",
            f"{r.latency_ratio:.3f}",
            f"{r.speedup:.2f}x",
            "" if r.exponent is None else f"{r.exponent:.2f}",
        )
    console = Console(width=150)
    console.print(table)
    console.print("α: latency ∝ FLOPs^α against the unpruned model (1 = latency falls as fast as FLOPs)")


@app.command("prune-accuracy")
def prune_accuracy(
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg or zoo name (optional with a .safetensors checkpoint)."),
    weights: Path = typer.Option(..., "--weights", help="A trained (ideally sparse-trained) model."),
    data: Path = typer.Option(..., "--data", help="Dataset whose val split is scored."),
    img_size: Optional[int] = typer.Option(None, "--img-size", "--img_size", help="Input size (default: the cfg's)."),
    methods: Optional[List[str]] = typer.Option(None, "--method", help="Methods (repeatable; default all)."),
    percent: str = typer.Option("auto", "--percent", help="Percent for the channel methods ('auto' = largest safe)."),
    shortcuts: int = typer.Option(1, "--shortcuts", help="layer, layer-channel: residual blocks to delete."),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Also fine-tune each pruned model this many epochs on --data's train split."),
    latency_runs: int = typer.Option(0, "--latency-runs", help="Also time every model in onnxruntime (interleaved runs; 2 threads)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Params, BFLOPs and mAP@0.5 before, right after each pruning method, and after a short fine-tune."""
    import dataclasses

    from rich.console import Console

    from edgeyolo.bench.prune import FineTune
    from edgeyolo.bench.prune import prune_accuracy as bench_prune_accuracy
    from edgeyolo.compress.prune import parse_percent
    from edgeyolo.data.formats import load_dataset

    model = load_cli_model(cfg, weights, img_size=img_size)
    size = img_size or model.cfg.net.height
    tune = FineTune(str(data), finetune_epochs) if finetune_epochs > 0 else None
    rows = bench_prune_accuracy(
        model, load_dataset(data, "val"), size, methods, parse_percent(percent), shortcuts, finetune=tune, latency_runs=latency_runs
    )
    if as_json:
        typer.echo(json.dumps({"weights": str(weights), "img_size": size, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
        return
    tuned = f"fine-tune {finetune_epochs} epochs" if finetune_epochs > 0 else "no fine-tune"
    table = render.table(
        f"prune accuracy: {weights.name} @ {size}, percent {percent}, {tuned}",
        ("method", "params", "BFLOPs", "mAP@0.5 before → after", "after fine-tune", "infer ms before → after", "note"),
        left=("method", "note"),
    )
    for r in rows:
        if r.error is not None:
            table.add_row(r.method, "", "", "", "", "", r.error)
            continue
        table.add_row(
            r.method,
            f"{r.params[0] / 1e6:.2f}M → {r.params[1] / 1e6:.2f}M (−{r.params_cut:.0%})",
            f"{r.bflops[0]:.2f} → {r.bflops[1]:.2f}",
            f"{r.map50[0]:.3f} → {r.map50[1]:.3f} ({100 * (r.map50[1] - r.map50[0]):+.1f} pts)",
            "" if r.map50_finetuned is None else f"{r.map50_finetuned:.3f} ({100 * (r.map50_finetuned - r.map50[0]):+.1f} pts, {r.finetune_seconds:.0f} s)",
            "" if r.infer_ms is None else f"{r.infer_ms[0]:.2f} → {r.infer_ms[1]:.2f} ({r.infer_ms[0] / r.infer_ms[1]:.2f}x)",
            "",
        )
    Console(width=150).print(table)


@app.command("prune-deep")
def prune_deep(
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg or zoo name (optional with a .safetensors checkpoint)."),
    weights: Path = typer.Option(..., "--weights", help="A trained model."),
    data: Path = typer.Option(..., "--data", help="Dataset: the loss is measured and the fine-tunes train on its train split, mAP@0.5 on val."),
    img_size: Optional[int] = typer.Option(None, "--img-size", "--img_size", help="Input size (default: the cfg's)."),
    keep: float = typer.Option(0.2, "--keep", help="Kept fraction of the unpruned size at the end (0.2: 80 % gone)."),
    epochs: str = typer.Option("3,3,4", "--epochs", help="Fine-tune epochs after each step, comma-separated (one number per step)."),
    size: str = typer.Option("params", "--size", help="What --keep counts: params | bflops."),
    mode: str = typer.Option("slim", "--mode", help="slim (residual channel spaces too, one unit each) | normal."),
    multiple: int = typer.Option(8, "--multiple", help="Kept widths are multiples of N."),
    lr0: float = typer.Option(0.002, "--lr0", help="Fine-tune learning rate (the control uses the same)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Fine-tune batch size."),
    control: bool = typer.Option(True, "--control/--no-control", help="Fine-tune the dense model for the same total epochs."),
    latency_runs: int = typer.Option(50, "--latency-runs", help="Interleaved onnxruntime runs per model (0: no timing)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Prune to a fraction of the parameters (or BFLOPs) in steps with fine-tuning between, against the dense control."""
    import dataclasses

    from rich.console import Console

    from edgeyolo.bench.deep import deep_prune
    from edgeyolo.bench.prune import FineTune
    from edgeyolo.compress.prune.budget import SIZES
    from edgeyolo.data.formats import load_dataset
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track

    if size not in SIZES:
        raise UsageError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    try:
        per_step = [int(t) for t in epochs.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--epochs takes comma-separated whole numbers, got {epochs!r}") from None
    model = load_cli_model(cfg, weights, img_size=img_size)
    img = img_size or model.cfg.net.height
    check_img_size(img)
    tune = FineTune(str(data), lr0=lr0, batch_size=batch_size, workers=0)
    _, rows = deep_prune(
        model, load_dataset(data, "train"), load_dataset(data, "val"), tune, img, keep, per_step, size, mode, multiple,
        control=control, latency_runs=latency_runs, progress=lambda r: track(r, "bench prune-deep"),
    )
    if as_json:
        typer.echo(json.dumps({"weights": str(weights), "img_size": img, "keep": keep, "size": size, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
        return
    base = rows[0]
    table = render.table(
        f"deep pruning: {weights.name} @ {img}, to {keep:g} of the {size} in {len(per_step)} steps, fine-tune {epochs} epochs (lr0 {lr0:g})",
        ("model", "goal", "params", "BFLOPs", "infer ms p50", "mAP@0.5 at the cut", "mAP@0.5", "epochs", "wall s"),
        left=("model",),
    )
    for r in rows:
        table.add_row(
            r.name,
            "" if r.goal is None else f"{r.goal:.3f}",
            f"{r.params / 1e6:.3f}M (−{1 - r.params / base.params:.1%})",
            f"{r.bflops:.3f} (−{1 - r.bflops / base.bflops:.1%})",
            "" if r.infer_ms is None else f"{r.infer_ms:.2f}",
            "" if r.map50_cut is None else f"{r.map50_cut:.3f}",
            f"{r.map50:.3f}",
            str(r.epochs),
            f"{r.seconds:.0f}",
        )
    Console(width=170).print(table)


@app.command("latency-prune")
def latency_prune(
    cfg: str = typer.Option("edgeyolo-res", "--cfg", help="darknet .cfg or zoo name."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Trained (ideally sparse-trained) weights."),
    random_init: bool = typer.Option(False, "--random-init", help="Calibrated random weights instead of --weights."),
    img_size: int = typer.Option(256, "--img-size", "--img_size", help="Square input size (multiple of 32)."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Comma-separated fractions of the unpruned latency, e.g. 0.8,0.65,0.5."),
    target_ms: Optional[str] = typer.Option(None, "--target-ms", help="Comma-separated latency targets in ms (this host)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset whose val split is scored (mAP@0.5)."),
    multiple: int = typer.Option(8, "--multiple", help="Kept widths are multiples of N."),
    mode: str = typer.Option("normal", "--mode", help="normal (independent convs) | slim (residual groups too)."),
    runs: int = typer.Option(30, "--runs", help="Timed runs per model (interleaved)."),
    threads: int = typer.Option(2, "--threads", help="onnxruntime threads."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Folder for the per-layer latency table (JSON)."),
    match_rounds: int = typer.Option(4, "--match-rounds", help="Measured corrections of each baseline's latency (1: match the prediction only)."),
    rank: Optional[str] = typer.Option(
        None, "--rank", help="What a removed channel costs: loss (each layer's measured loss increase; needs --data; the default with it) | gamma (|γ|)."
    ),
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Also score the latency-targeted and uniform models after N fine-tune epochs each (needs --data)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Latency-targeted pruning vs uniform-width and global-threshold pruning at equal latency (onnxruntime)."""
    import dataclasses

    from rich.console import Console

    from edgeyolo.bench.latency import latency_prune_bench
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track

    check_img_size(img_size)
    if runs <= 0 or threads <= 0:
        raise UsageError("--runs and --threads must be positive")

    def numbers(text: Optional[str], flag: str) -> list[float]:
        try:
            return [float(t) for t in text.split(",") if t.strip()] if text else []
        except ValueError:
            raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None

    fractions, ms = numbers(targets, "--targets"), numbers(target_ms, "--target-ms")
    if not fractions and not ms:
        raise UsageError("give --targets 0.8,0.65,0.5 (fractions of the unpruned latency) or --target-ms")
    rank = rank or ("loss" if data is not None else "gamma")
    if rank not in ("loss", "gamma"):
        raise UsageError(f"--rank must be loss or gamma, got {rank!r}")
    if data is None and (rank == "loss" or finetune_epochs):
        raise UsageError("--rank loss and --finetune-epochs need --data")
    if finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    model = load_cli_model(cfg, weights, random_init=random_init, img_size=img_size)
    dataset = damage = finetune = None
    if data is not None:
        from edgeyolo.bench.latency import loss_damage
        from edgeyolo.bench.prune import FineTune
        from edgeyolo.data.formats import load_dataset

        dataset = load_dataset(data, "val")
        damage = loss_damage(load_dataset(data, "train"), img_size) if rank == "loss" else None
        finetune = FineTune(str(data), epochs=finetune_epochs, workers=0) if finetune_epochs else None
    bench = latency_prune_bench(
        model, img_size, fractions, ms, multiple, mode, threads, runs, dataset, cache_dir=cache, match_rounds=match_rounds,
        progress=lambda r: track(r, "bench latency-prune"), damage=damage, finetune=finetune,
    )
    table = bench.table
    if as_json:
        rows = [{**dataclasses.asdict(r), "ratio": r.ratio, "error": r.error} for r in (bench.unpruned, *bench.rows)]
        payload = {
            "cfg": cfg, "img_size": img_size, "threads": threads, "mode": mode, "multiple": multiple,
            "table": {"seconds": table.seconds, "samples": len(table.samples), "fit_error": table.fit_error, "full_ms": table.full_ms},
            "rows": rows, "refused": bench.refused,
            "widths": {f"{r.target_ms:.3f}": {str(i): w for i, w in r.widths.items()} for r in bench.results},
        }
        typer.echo(json.dumps(payload, indent=1))
        return
    scored = data is not None
    out = render.table(
        f"latency-targeted pruning: {cfg} @ {img_size}, mode {mode}, onnxruntime {threads} threads, {runs} interleaved runs",
        ("target", "method", "setting", "pred ms", "meas ms (×unpruned)", "error", "params", "BFLOPs")
        + (("mAP@0.5",) if scored else ())
        + ((f"mAP@0.5 +{finetune_epochs} ep",) if finetune else ()),
        left=("target", "method", "setting"),
    )
    u = bench.unpruned
    out.add_row(
        "", "unpruned", "", f"{u.predicted_ms:.2f}", f"{u.measured_ms:.2f}", "", f"{u.params / 1e6:.2f}M", f"{u.bflops:.3f}",
        *((f"{u.map50:.3f}",) if scored else ()),
        *(("",) if finetune else ()),
    )
    for r in bench.rows:
        out.add_row(
            r.target if r.method == "latency" else "",
            r.method,
            r.setting,
            f"{r.predicted_ms:.2f}",
            f"{r.measured_ms:.2f} ({r.ratio:.3f})",
            f"{100 * r.error:+.1f}%" if r.method == "latency" else f"{100 * (r.ratio - r.target_ratio) / r.target_ratio:+.1f}%",
            f"{r.params / 1e6:.2f}M",
            f"{r.bflops:.3f}",
            *((f"{r.map50:.3f}",) if scored else ()),
            *(("" if r.map50_finetuned is None else f"{r.map50_finetuned:.3f}",) if finetune else ()),
        )
    console = Console(width=180)
    console.print(out)
    console.print(
        f"table: {len(table.samples)} width samples in {table.seconds:.1f} s, prediction within {100 * table.fit_error:.0f}% of them; "
        "pred ms on the table's clock; error = measured / unpruned vs the requested fraction (medians, models interleaved)"
    )
    for label, why in bench.refused.items():
        console.print(f"target {label}: {why}")


@app.command("suite")
def suite(
    ctx: typer.Context,
    preset: str = typer.Option("smoke", "--preset", help="smoke (minutes; not representative) | full (the published table)."),
    out: Path = typer.Option(..., "--out", help="Folder: data/, runs/, prune/, quant/, suite.json, suite.md."),
    as_json: bool = typer.Option(False, "--json", help="Print suite.json instead of the table."),
) -> None:
    """The compression table end to end on the synthetic set: every row an edgeyolo command, measured alike."""
    from edgeyolo.bench.suite import SUITE_FILE, TABLE_FILE, Suite, get_preset
    from edgeyolo.cli.invoke import root_runner

    chosen = get_preset(preset)
    if not chosen.representative:
        typer.echo("smoke preset: checks the plumbing end to end; its numbers are not representative")
    Suite(chosen, out, run=root_runner(ctx), echo=(lambda _: None) if as_json else typer.echo).run()
    typer.echo((out / (SUITE_FILE if as_json else TABLE_FILE)).read_text(encoding="utf-8"))


@app.command("device")
def bench_device(
    device: str = DeviceOpt,
    model: Path = typer.Option(..., "--model", help="Model file (.onnx/.engine/.xmodel) or a bundle folder."),
    duration: float = typer.Option(30.0, "--duration", help="Timed seconds per phase (1 stream, then N)."),
    warmup: float = typer.Option(3.0, "--warmup", help="Untimed seconds before each phase."),
    threads: int = typer.Option(0, "--threads", help="Streams of the second phase (0: min(4, board CPUs))."),
    ort_threads: int = typer.Option(0, "--ort-threads", help="onnxruntime intra-op threads on the board (0: its default)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images to time on (default: seeded noise)."),
    map_data: Optional[Path] = typer.Option(None, "--map", help="Also score mAP on this dataset's val split (host-side)."),
    metric: str = typer.Option("coco", "--metric", help="coco | voc07 | voc12 (with --map)."),
    engine: Optional[bool] = typer.Option(
        None, "--engine/--no-engine", help="On a jetson-* device an .onnx is timed as its TensorRT engine built on the board; --no-engine times the ONNX with onnxruntime."
    ),
    precision: Optional[str] = PrecisionOpt,
    calib: Optional[Path] = CalibOpt,
    trtexec: Optional[str] = TrtexecOpt,
    build_timeout: float = BuildTimeoutOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    record: bool = typer.Option(False, "--record", help="Store the run in the results database (see 'edgeyolo results')."),
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results database for --record (default: $EDGEYOLO_RESULTS_DB, else $XDG_DATA_HOME/edgeyolo/results.sqlite)."
    ),
    label: Optional[str] = typer.Option(None, "--label", help="With --record: label the run (e.g. a baseline name for 'results check')."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Deploy and time a model on a board: FPS (1 and N streams), latency p50/p90/p99, pre/infer/post, power."""
    import contextlib
    import shlex
    import sys

    if (db is not None or label is not None) and not record:
        from edgeyolo.errors import UsageError

        raise UsageError("--db and --label only apply with --record")
    if record:
        from edgeyolo.bench.results import record_device_bench

        # committed as 'running' before the board is touched; the inventory is read once, here
        recording = record_device_bench(db, device=device, inventory=inventory, artifact=model, label=label,
                                        command=shlex.join(["edgeyolo", *sys.argv[1:]]))
    else:
        recording = contextlib.nullcontext()
    build = {"engine": engine, "precision": precision, "calib_cache": calib, "trtexec": trtexec, "build_timeout": build_timeout}
    with recording as run:
        _bench_device(device, model, duration, warmup, threads, ort_threads, images, map_data, metric, inventory,
                      trust_new_host_key, as_json, run, build)


def _bench_device(device, model, duration, warmup, threads, ort_threads, images, map_data, metric, inventory,
                  trust_new_host_key, as_json, run, build) -> None:
    from rich.console import Console

    from edgeyolo.bench.board import predict_on_device
    from edgeyolo.errors import TargetError
    from edgeyolo.targets.runner import bench_device as run_bench

    with connect_board(device if run is None else run.device, inventory, trust_new_host_key) as transport:
        log = transport.on_stderr
        result = run_bench(transport, model, duration, warmup, threads, ort_threads, images, on_log=log, progress=upload_progress(),
                           **build)
        evaluation = None
        if map_data is not None and result.error is None:
            from edgeyolo.data.formats import load_dataset

            evaluation = predict_on_device(transport, model, load_dataset(map_data, "val"), metric, on_log=log, **build)
    payload = result.to_dict()
    if evaluation is not None:
        payload["accuracy"] = {"data": str(map_data), "metric": metric, "skipped": evaluation.skipped, **evaluation.result.to_dict()}
    if run is not None:
        payload["recorded_run"] = run.store(payload)
    if as_json:
        typer.echo(json.dumps(payload, indent=1, default=str))
    else:
        fmt = render.number_or_dash
        size = "x".join(map(str, result.input_size))
        out = render.table(
            f"{device}: {Path(result.model).name} on {result.backend} {result.runtime_version} @ {size}"
            + (f", {result.power_mode}" if result.power_mode else ""),
            ("streams", "frames", "FPS", "latency ms p50 / p90 / p99", "pre / infer / post ms", "W", "FPS/W"),
        )
        for p in result.phases:
            out.add_row(
                str(p.streams), str(p.frames) + ("" if p.complete else " (partial)"), f"{p.fps:.1f}",
                f"{fmt(p.latency_ms.p50)} / {fmt(p.latency_ms.p90)} / {fmt(p.latency_ms.p99)}",
                f"{fmt(p.pre_ms, '.2f')} / {fmt(p.infer_ms, '.2f')} / {fmt(p.post_ms, '.2f')}",
                fmt(p.power_w, ".2f"), fmt(p.fps_per_w, ".2f"),
            )
        console = Console(width=140)
        console.print(out)
        if result.engine is not None:
            e, t = result.engine, result.engine.get("trtexec") or {}
            console.print(f"engine {'cached' if e['cached'] else 'built'}: {e['engine']} ({e['precision']}, TensorRT {e['tensorrt']}, {e['gpu']})"
                          + (f"; trtexec measured {t['throughput_qps']:.1f} qps" if t.get("throughput_qps") else ""))
        d = result.deploy
        if d is not None:
            console.print(f"deploy: {d.unchanged}/{len(d.uploads)} files unchanged, {render.size_text(d.bytes_sent)} sent; "
                          f"results in {result.results_file} on the board")
        if evaluation is not None:
            r = evaluation.result
            console.print(f"{metric} on {map_data} (scored on the host, {r.num_images} images): mAP@0.5 {r.map50:.4f}   mAP@0.5:0.95 {r.map50_95:.4f}")
    if result.error is not None:
        if run is not None:  # raised inside the recording: the run is stored as 'failed', never gated on
            raise TargetError(f"the run did not finish (recorded as failed run {run.id}): {result.error}")
        typer.echo(f"warning: the run did not finish; the table shows what was timed before: {result.error}", err=True)
        raise typer.Exit(TargetError.exit_code)
    if run is not None and not as_json:
        typer.echo(f"recorded run {run.id}")


@app.command("deploy-throughput")
def bench_deploy_throughput(
    device: str = DeviceOpt,
    size_mb: int = typer.Option(128, "--size-mb", help="Size of the random payload."),
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
) -> None:
    """Upload speed of edgeyolo's SFTP transport vs scp on the same link (not a test: prints a table)."""
    from rich.console import Console

    from edgeyolo.targets.runner import upload_throughput

    with connect_board(device, inventory, trust_new_host_key) as transport:
        rows = upload_throughput(transport, size_mb)
    out = render.table(f"upload of {size_mb} MB to {device}", ("method", "seconds", "MB/s"), left=("method",))
    for r in rows:
        out.add_row(r.method, f"{r.seconds:.2f}", f"{r.mb_per_s:.0f}" if r.megabytes else "—")
    Console(width=120).print(out)


def register(root: typer.Typer) -> None:
    """The ``bench`` group."""
    root.add_typer(app, name="bench")
