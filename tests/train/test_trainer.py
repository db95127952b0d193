"""Training runs end to end, resumes bit-exactly after SIGKILL, stops cleanly on NaN, runs under DDP."""
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from edgeyolo.data.synth import make_synthetic
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import parse_cfg_text
from edgeyolo.model.checkpoint import load_pretrained
from edgeyolo.model.darknet import Darknet
from edgeyolo.train.trainer import (
    MIN_OPTIMIZER_STEPS,
    MIN_STEPS_PER_EPOCH,
    RunSchedule,
    TrainConfig,
    Trainer,
    TrainingDiverged,
    lr_factor,
)
from tests.conftest import cfg_path
from tests.train.resume import assert_same_weights, straight_and_resumed

CLI = [sys.executable, "-c", "import sys; from edgeyolo.cli.app import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic(root / "ds", classes=12, train=24, val=6, img_size=128, seed=5).data_yaml


def base_args(synth, out, epochs, workers=0):
    return [
        "train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "128", "--batch-size", "8",
        "--epochs", str(epochs), "--workers", str(workers), "--out", str(out), "--name", "run", "--threads", "1",
        "--seed", "3",
    ]


def state_of(run):
    return torch.load(run / "state.pt", weights_only=True)


def test_run_folder_contents(synth, tmp_path):
    proc = subprocess.run(CLI + base_args(synth, tmp_path, 2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    for name in ("config.json", "last.safetensors", "best.safetensors", "state.pt", "metrics.csv", "curves.png"):
        assert (run / name).exists(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["loss_obj"]) > 0 for r in rows)
    assert proc.stdout.count("epoch ") >= 2 and "mAP@.5" in proc.stdout
    # 24 images in mini-batches of 8 for 2 epochs: a step after each, far too few all the same
    assert "3 optimizer steps per epoch, 6 in the run" in proc.stdout
    assert f"warning: 6 optimizer steps are too few to learn (under {MIN_OPTIMIZER_STEPS}" in proc.stderr
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_after_sigkill_is_bitwise_identical(synth, tmp_path):
    epochs = 3
    straight = subprocess.run(CLI + base_args(synth, tmp_path / "a", epochs, workers=2), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(CLI + base_args(synth, tmp_path / "b", epochs, workers=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    metrics = tmp_path / "b" / "run" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:  # epoch 0 done, epoch 1 running
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data workers
    proc.wait()
    assert state_of(tmp_path / "b" / "run")["epoch"] < epochs - 1, "killed too late to test a resume"
    resumed = subprocess.run(CLI + ["train", "--resume", str(tmp_path / "b" / "run")], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = state_of(tmp_path / "a" / "run"), state_of(tmp_path / "b" / "run")
    assert a["epoch"] == b["epoch"] == epochs - 1
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth, tmp_path):
    config = TrainConfig(data=str(synth), cfg=str(cfg_path("edgeyolo-mobile")), img_size=128, batch_size=8, epochs=3, workers=0, out=str(tmp_path), name="nan", threads=1)
    trainer = Trainer(config)
    real = trainer.criterion

    def poisoned(raw, targets, h, w):
        loss, parts = real(raw, targets, h, w)
        return loss * float("nan") if trainer_epoch[0] == 1 else loss, parts

    trainer_epoch = [0]
    original = trainer.train_epoch

    def tracked(epoch, accumulate):
        trainer_epoch[0] = epoch
        return original(epoch, accumulate)

    trainer.train_epoch = tracked
    trainer.criterion = poisoned
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        trainer.fit()
    assert state_of(tmp_path / "nan")["epoch"] == 0


def test_pretrained_darknet_weights_skip_only_heads(tiny_weights):
    text = cfg_path("yolov3-tiny").read_text().replace("classes=80", "classes=12").replace("filters=255", "filters=51")
    model = Darknet(parse_cfg_text(text))
    skipped = load_pretrained(model, tiny_weights)
    assert skipped == ["module_list.15.conv.bias", "module_list.15.conv.weight", "module_list.22.conv.bias", "module_list.22.conv.weight"]


@pytest.mark.skipif(shutil.which("edgeyolo") is None, reason="the edgeyolo console script is not installed")
def test_ddp_two_cpu_processes_with_gloo(synth, tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", shutil.which("edgeyolo"),
        *base_args(synth, tmp_path, 1),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "state.pt").exists()
    assert len(list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))) == 1


def test_sparse_training_logs_gamma_statistics(synth, tmp_path):
    args = base_args(synth, tmp_path, 1) + ["-sr", "--s", "0.01", "--prune", "1", "--sr-schedule", "dynamic"]
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert (run / "gamma.png").stat().st_size > 1000
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["sparsity.s"]) > 0 and 0 <= float(row["sparsity.frac_lt_1e-2"]) <= 1
    assert "γ<1e-2" in proc.stdout
    assert "sparse training: --prune 1 (shortcut) penalises" in proc.stdout and "schedule dynamic" in proc.stdout
    # the end line names what to prune: the last (sparsest) epoch, not the best-mAP one
    assert f"prune {run / 'last.safetensors'} (best.safetensors is epoch 0" in proc.stdout.splitlines()[-1]


def test_resume_of_taylor_ranked_sparse_training_is_bitwise_identical(synth, tmp_path):
    """The running importance decides which γ are pulled; a resume must carry it exactly."""
    import json

    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=64, batch_size=4, nominal_batch=8, epochs=2, workers=0,
        out=str(tmp_path), threads=1, seed=3, max_val_images=2, sparse=True, s=0.05, prune=1,
        sr_penalty="gradual", sr_rank="taylor", sr_target=0.3, sr_ramp=0.5,
    )
    a, b, _ = straight_and_resumed(config)
    assert_same_weights(a, b)
    importance = json.loads(a["sparsity"])["importance"]
    assert importance and any(v > 0 for layer in importance for v in layer)
    assert json.loads(b["sparsity"])["importance"] == importance


def test_sparse_training_refuses_an_empty_prunable_set(synth, tmp_path):
    tiny12 = tmp_path / "tiny12.cfg"  # no residual blocks, so --prune 2 has nothing to sparsify
    tiny12.write_text(cfg_path("yolov3-tiny").read_text().replace("classes=80", "classes=12").replace("filters=255", "filters=51"))
    args = base_args(synth, tmp_path, 1) + ["--cfg", str(tiny12), "-sr", "--prune", "2"]
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and "finds no prunable BN layer" in proc.stderr


def test_sparsity_penalty_is_added_after_amp_unscaling(synth, tmp_path):
    """--s is in true-gradient units: a loss scale of 1024 must not shrink the penalty (the
    reference's AMP path divides it by the scale). Runs the trainer's own step on CPU with an
    enabled GradScaler and a loss that has no gradient, so γ.grad at the step is the penalty alone."""
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=128, batch_size=8, epochs=1, workers=0,
        out=str(tmp_path), name="amp", threads=1, sparse=True, s=0.01, prune=1,
    )
    trainer = Trainer(config)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.criterion = lambda raw, targets, h, w: (sum(r.sum() for r in raw) * 0.0, torch.zeros(3))
    trainer.validate = lambda: None
    bns = [trainer.model.module_list[i].bn for i in trainer.sparsity.layers]
    seen = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append([bn.weight.grad.clone() for bn in bns])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train_epoch(0, accumulate=2)
    assert seen, "the optimizer never stepped"
    for grads in seen:
        for grad, bn in zip(grads, bns):
            assert torch.allclose(grad, 0.01 * torch.sign(bn.weight.detach()), atol=0, rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP training needs a CUDA device; none here")
def test_amp_training_on_cuda(synth, tmp_path):
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=128, batch_size=8, epochs=2, workers=0,
        out=str(tmp_path), name="amp", device="cuda", amp=True, sparse=True, s=0.001, prune=1,
    )
    trainer = Trainer(config)
    history = trainer.fit()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1.0
    assert all(torch.isfinite(torch.tensor([h["loss_box"], h["loss_obj"], h["loss_cls"]])).all() for h in history)
    assert len(history) == 2 and 0.0 <= history[-1]["map50"] <= 1.0
    resumed = Trainer.resume(tmp_path / "amp")
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_bad_training_data_warns_with_file_and_line_and_the_epoch_completes(synth, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(synth.parent, root)
    yaml = root / "data.yaml"
    yaml.write_text(yaml.read_text().replace(str(synth.parent), str(root)))
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    images = sorted((root / "images" / "train").glob("*.png"))
    images[0].unlink()  # missing image
    (root / "images" / "train" / images[1].name).write_bytes(b"not a png")  # undecodable image
    labels[2].write_text("0 0.5 0.5 0.2 0.2\n99 0.5 0.5 0.2 0.2\n")  # class out of range on line 2
    labels[3].write_text("1 0.5 nan 0.2\n")  # invalid line
    labels[4].write_text("")  # empty: an image without objects
    args = base_args(yaml, tmp_path / "out", 1)
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{labels[2]}:2:" in proc.stderr and "out of range" in proc.stderr
    assert f"{labels[3]}:1:" in proc.stderr
    assert images[1].name in proc.stderr  # the unreadable image is named
    assert f"{labels[0]}: label file without an image" in proc.stderr  # and the label of the deleted one
    assert (tmp_path / "out" / "run" / "last.safetensors").exists()


def test_penalty_reach_bounds_the_gamma_movement_of_a_run(synth, tmp_path):
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=64, batch_size=4, epochs=2, workers=0,
        out=str(tmp_path), name="reach", threads=1, sparse=True, s=0.02, prune=1, burn_in=4, ema=False, nominal_batch=8,
    )
    trainer = Trainer(config)
    trainer.criterion = lambda raw, targets, h, w: (sum(r.sum() for r in raw) * 0.0, torch.zeros(3))  # penalty only
    trainer.validate = lambda: None
    bns = [trainer.model.module_list[i].bn for i in trainer.sparsity.layers]
    before = torch.cat([bn.weight.detach().abs().clone() for bn in bns])
    assert float(before.min()) > 0.5  # no γ can cross zero on the way
    reach = trainer.penalty_reach()
    trainer.fit()
    moved = before - torch.cat([bn.weight.detach().abs() for bn in bns])
    assert torch.allclose(moved, torch.full_like(moved, reach), rtol=1e-3, atol=0)  # exact for the penalty alone


def test_sparse_runs_keep_as_best_the_best_epoch_that_reached_the_target(synth, tmp_path):
    dense = Trainer(TrainConfig(data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=64, workers=0, out=str(tmp_path), name="d"))
    sparse = Trainer(TrainConfig(data=str(synth), cfg=str(cfg_path("edgeyolo-res")), img_size=64, workers=0, out=str(tmp_path), name="s", sparse=True, s=0.01, prune=1, sr_target=0.5))
    history = [
        {"epoch": 0, "map50": 0.40, "sparsity": {"frac_lt_1e-2": 0.0}},
        {"epoch": 1, "map50": 0.20, "sparsity": {"frac_lt_1e-2": 0.55}},
        {"epoch": 2, "map50": 0.30, "sparsity": {"frac_lt_1e-2": 0.52}},
        {"epoch": 3, "map50": 0.35, "sparsity": {"frac_lt_1e-2": 0.45}},
    ]
    dense.history = sparse.history = history
    assert dense.best_record()["epoch"] == 0
    assert sparse.best_record()["epoch"] == 2
    sparse.history = history[:1]
    assert sparse.best_record()["epoch"] == 0  # none reached it yet: the best so far


def test_a_cfg_for_other_classes_is_adapted_to_the_dataset_and_pt_loads_the_rest(synth, tmp_path, tiny_weights, caplog):
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("yolov3-tiny")), weights=str(tiny_weights), pretrained=True, img_size=64,
        epochs=1, workers=0, out=str(tmp_path), name="tiny",
    )
    with caplog.at_level("WARNING"):
        trainer = Trainer(config)
    assert trainer.model.num_classes == 12 and "training with classes=12" in caplog.text
    assert [trainer.model.cfg.layers[y.index - 1].filters for y in trainer.model.cfg.yolo_layers] == [51, 51]
    fresh = Darknet(trainer.model.cfg)  # every layer but the two heads came from the COCO file
    assert load_pretrained(fresh, tiny_weights) == [
        "module_list.15.conv.bias", "module_list.15.conv.weight", "module_list.22.conv.bias", "module_list.22.conv.weight"
    ]
    assert torch.equal(fresh.module_list[0].conv.weight, trainer.model.module_list[0].conv.weight)
    strict = TrainConfig(data=str(synth), cfg=str(cfg_path("yolov3-tiny")), weights=str(tiny_weights), img_size=64, epochs=1, workers=0, out=str(tmp_path))
    with pytest.raises(UsageError, match="add -pt"):
        Trainer(strict)


def test_local_schedule_with_polar_warns_that_it_does_little(synth, tmp_path, capsys):
    """Measured: 10 epochs of polar (t = 1) with `local` were bit-identical to `constant`."""
    from edgeyolo.cli.app import main

    args = base_args(synth, tmp_path, 1) + ["--max-val-images", "2", "-sr", "--s", "0.01", "--sr-penalty", "polar"]
    assert main(args + ["--sr-schedule", "local"]) == 0
    assert "--sr-schedule local does little or nothing with --sr-penalty polar" in capsys.readouterr().err
    assert main(args + ["--sr-schedule", "local", "--sr-t", "1.5", "--name", "t15"]) == 0
    assert "does little or nothing" not in capsys.readouterr().err


def test_epoch_record_measures_the_wait_for_batches(synth, tmp_path):
    """``data_wait`` is the share of the training loop spent waiting for the next batch: a loader
    that takes 0.2 s more per batch shows up there, and in the epoch's log line."""
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-mobile")), img_size=128, batch_size=8, epochs=2, workers=0,
        out=str(tmp_path), name="wait", threads=1,
    )

    def slow(batches, desc, steps):
        for batch in batches:
            time.sleep(0.2)
            yield batch

    trainer = Trainer(config)
    trainer.validate = lambda: None
    fast = trainer.train_epoch(0, trainer.accumulate)
    trainer.progress = slow
    delayed = trainer.train_epoch(1, trainer.accumulate)
    steps = 3  # 24 images, batch 8
    assert delayed.data_wait * delayed.seconds >= 0.2 * steps
    assert fast.data_wait < delayed.data_wait
    assert f"data wait {delayed.data_wait:.0%}" in delayed.line()


def test_a_small_set_makes_optimizer_steps_every_epoch(tmp_path):
    """23 images in mini-batches of 8 (3 per epoch) against a nominal batch of 64: gradients
    accumulate over a MIN_STEPS_PER_EPOCH-th of the epoch's batches at most, so every epoch steps
    the optimizer, here after each mini-batch."""
    synth23 = make_synthetic(tmp_path / "ds", classes=2, train=23, val=2, img_size=64, seed=1).data_yaml
    config = TrainConfig(
        data=str(synth23), cfg=str(cfg_path("edgeyolo-mobile")), img_size=64, batch_size=8, epochs=3, workers=0,
        out=str(tmp_path), name="small", threads=1,
    )
    trainer = Trainer(config)
    plan = trainer.schedule
    assert plan.batches_per_epoch == 3 and plan.accumulate == 1
    assert plan.steps_per_epoch == 3 and plan.total_steps == 9
    assert plan.nominal_batch == 8
    # the summed loss makes a step's data gradient proportional to its images: the decay follows
    assert plan.weight_decay == pytest.approx(config.weight_decay * plan.nominal_batch / 64)
    assert trainer.optimizer.param_groups[1]["weight_decay"] == plan.weight_decay
    # a step of 8 images instead of 64: the learning rate rises by sqrt(8) (SGD only)
    assert plan.lr_scale == pytest.approx(8**0.5)
    assert RunSchedule.plan(dataclasses.replace(config, optimizer="adam"), 3).lr_scale == 1.0
    trainer.validate = lambda: None
    steps = []
    step = trainer.optimizer.step

    def counted(*args, **kwargs):
        steps.append(1)
        return step(*args, **kwargs)

    trainer.optimizer.step = counted
    for epoch in range(3):
        before = len(steps)
        trainer.train_epoch(epoch, trainer.accumulate)
        assert len(steps) - before == plan.steps_per_epoch >= 1
    assert trainer.ema.updates == len(steps)


@pytest.mark.parametrize("images,batch,epochs", [(23, 8, 60), (23, 8, 3), (30, 8, 400), (2000, 16, 100), (2000, 16, 2), (7, 16, 1)])
def test_warm_up_is_a_bounded_fraction_of_the_run(images, batch, epochs):
    config = TrainConfig(data="d", batch_size=batch, epochs=epochs)
    batches = -(-images // batch)
    plan = RunSchedule.plan(config, batches)
    run = epochs * batches
    assert plan.burn_in <= config.burn_in and plan.burn_in <= config.burn_in_fraction * run
    assert plan.burn_in_steps <= max(config.burn_in_fraction * plan.total_steps, 1) + 1
    assert 1 <= plan.accumulate <= batches and plan.steps_per_epoch >= min(batches, MIN_STEPS_PER_EPOCH)
    # the learning rate is full from the end of the warm-up on (cosine aside)
    epoch, step = divmod(plan.burn_in, batches)
    if epoch < epochs:
        full, _ = lr_factor(config, epoch, step, batches, plan.burn_in)
        cosine, _ = lr_factor(config, epoch, step, batches, 0)
        assert full == cosine


def test_a_large_set_keeps_the_nominal_batch_and_burn_in():
    config = TrainConfig(data="d", batch_size=16, epochs=40)
    plan = RunSchedule.plan(config, 125)
    assert (plan.accumulate, plan.nominal_batch, plan.burn_in, plan.weight_decay, plan.lr_scale) == (4, 64, 300, config.weight_decay, 1.0)


def test_a_config_written_before_the_scaled_schedule_resumes_as_it_started():
    old = TrainConfig.from_json(json.dumps({"data": "d", "batch_size": 8, "epochs": 60}))
    assert old.schedule == "fixed" and old.augment_spec().scale == 0.5 and old.augment_spec().hsv_s == 0.7
    plan = RunSchedule.plan(old, 3)
    assert (plan.accumulate, plan.burn_in, plan.weight_decay, plan.lr_scale) == (8, 300, old.weight_decay, 1.0)
    new = TrainConfig(data="d", aug={"scale": 0.3})
    assert TrainConfig.from_json(new.to_json()) == new
    assert old.plain_epochs == 0 and new.close_aug == 0.1 and new.plain_epochs == 10  # closed at the end since


@pytest.mark.parametrize("epochs,close,augment,plain", [
    (200, 0.1, True, 20), (150, 0.1, True, 15), (8, 0.1, True, 0), (10, 0.1, True, 1), (30, 0.0, True, 0),
    (30, 1.0, True, 30), (200, 0.1, False, 0),
])
def test_the_last_epochs_train_without_augmentation(epochs, close, augment, plain):
    config = TrainConfig(data="d", epochs=epochs, close_aug=close, augment=augment)
    assert config.plain_epochs == plain
    text = RunSchedule.plan(config, 5).describe(config, 35)
    assert (f"the last {plain} epoch{'s' if plain > 1 else ''} without augmentation;" in text + ";") == bool(plain)


@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.1"])
def test_close_aug_must_be_a_fraction(bad):
    with pytest.raises(UsageError, match="--close-aug must be a fraction"):
        TrainConfig(data="d", close_aug=bad)


@pytest.mark.parametrize("option,message", [
    ("scale=1.5", "augment 'scale' must lie in [0, 1), got 1.5"),
    ("scal=0.3", "unknown augmentation 'scal'; known: hsv_h"),
    ("scale", "--aug takes NAME=VALUE with a number, e.g. --aug scale=0.3; got 'scale'"),
    ("scale=big", "got 'scale=big'"),
])
def test_a_bad_aug_option_is_a_one_line_error(synth, tmp_path, option, message):
    proc = subprocess.run(CLI + base_args(synth, tmp_path, 1) + ["--aug", "hsv_s=0.3", "--aug", option], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
