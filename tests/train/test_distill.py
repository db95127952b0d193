"""Distillation: each strategy's loss against values computed by hand / with plain numpy on small
crafted tensors, the object mask's full blocks, feature pairing and its errors, the frozen teacher,
and every --KDstr end to end (1 short epoch on a tiny synthetic set, plus a resume and the CLI).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeyolo.data.synth import make_synthetic
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import parse_cfg_text
from edgeyolo.model.checkpoint import save_checkpoint
from edgeyolo.model.darknet import Darknet
from edgeyolo.train.distill import (
    Distiller,
    FeaturePairingError,
    attention_kd,
    kl_rows,
    object_mask,
    spatial_attention,
)
from edgeyolo.train.loss import YoloLoss
from edgeyolo.train.trainer import TrainConfig, Trainer
from tests.train.resume import assert_same_weights, straight_and_resumed
from tests.conftest import cfg_path

# ------------------------------------------------------------------------------------------- helpers

HEAD = "[yolo]\nmask=0\nanchors=8,8\nclasses=2\nnum=1\n"


def conv(filters: int, size: int = 3, stride: int = 1, act: str = "leaky", bn: bool = True) -> str:
    return (
        f"[convolutional]\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n"
        + ("batch_normalize=1\n" if bn else "")
    )


def tiny(stages: int = 1, width: int = 32) -> Darknet:
    """16x16 conv, 8x8 conv, ``stages`` more 8x8 convs, the head conv and one [yolo] (stride 4, 1 anchor, 2 classes)."""
    text = f"[net]\nwidth={width}\nheight={width}\nchannels=3\n" + conv(4, stride=2) + conv(4, stride=2)
    text += "".join(conv(4) for _ in range(stages)) + conv(7, size=1, act="linear", bn=False) + HEAD
    return Darknet(parse_cfg_text(text, "tiny.cfg"))


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(student: np.ndarray, teacher: np.ndarray, T: float) -> float:
    """T² Σ_rows Σ p_t (log p_t − log p_s), rows on the last axis, in float64."""
    ps, pt = np_softmax(student.astype(np.float64) / T), np_softmax(teacher.astype(np.float64) / T)
    return float((pt * (np.log(pt) - np.log(ps))).sum() * T * T)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def distiller(strategy: int, student: Darknet | None = None, teacher: Darknet | None = None, **kw) -> Distiller:
    torch.manual_seed(0)
    student = student or tiny()
    teacher = teacher or tiny()
    return Distiller(student, teacher, strategy, YoloLoss(student), img_size=32, **kw)


# Two images, 8x8 input, 2x2 grid (stride 4); one target each:
# image 0: centre (0.3, 0.7), 8x8 px -> cell gj=1 gi=0, GT box (0.6, 0.4, 2, 2) in grid units
# image 1: centre (0.8, 0.2), 4x4 px -> cell gj=0 gi=1, GT box (0.6, 0.4, 1, 1)
TARGETS = torch.tensor([[0, 1, 0.3, 0.7, 1.0, 1.0], [1, 0, 0.8, 0.2, 0.5, 0.5]])
CELLS = [(0, 1, 0), (1, 0, 1)]  # (b, gj, gi)


def crafted_raw(seed: int) -> np.ndarray:
    """Random [2, 7, 2, 2] logits whose box entries at the GT cells are set by ``boxes``."""
    return np.random.default_rng(seed).normal(size=(2, 7, 2, 2)).astype(np.float32)


def set_box(raw: np.ndarray, cell: tuple[int, int, int], tx: float, ty: float, tw: float, th: float) -> None:
    b, gj, gi = cell
    raw[b, 0:4, gj, gi] = (tx, ty, tw, th)


def rows_np(raw: np.ndarray) -> np.ndarray:
    """[B, 7, H, W] -> [B, H, W, 7] (one anchor)."""
    return raw.transpose(0, 2, 3, 1)


def box_np(raw: np.ndarray, cell) -> np.ndarray:
    b, gj, gi = cell
    tx, ty, tw, th = raw[b, 0:4, gj, gi].astype(np.float64)
    return np.array([np_sigmoid(tx), np_sigmoid(ty), math.exp(tw) * 2.0, math.exp(th) * 2.0])  # anchor 8 px / stride 4


def box_raws():
    """Image 0: the teacher hits the GT exactly, the student is off (d_s 0.02 > d_t 0);
    image 1: the student hits it, the teacher is off (d_s 0 < d_t 2.02)."""
    s, t = crafted_raw(1), crafted_raw(2)
    set_box(s, CELLS[0], 0.0, 0.0, 0.0, 0.0)
    set_box(t, CELLS[0], logit(0.6), logit(0.4), 0.0, 0.0)
    set_box(s, CELLS[1], logit(0.6), logit(0.4), math.log(0.5), math.log(0.5))
    set_box(t, CELLS[1], 0.0, 0.0, 0.0, 0.0)
    return s, t


def terms(d: Distiller, s_raw: np.ndarray, t_raw: np.ndarray, s_feats=None, t_feats=None) -> dict[str, float]:
    out = d.terms([torch.from_numpy(s_raw)], s_feats or {}, [torch.from_numpy(t_raw)], t_feats or {}, TARGETS, 8, 8)
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------ loss formulas


def test_kl_rows_by_hand():
    # p_t = softmax(ln 3, 0) = (3/4, 1/4), p_s = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2), times T² = 1
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl_rows(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0).item() == pytest.approx(expected, rel=1e-5)
    # T = 2 divides the logits and multiplies by T² = 4; two rows add
    expected2 = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    got = kl_rows(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[2 * math.log(3.0), 0.0], [5.0, 5.0]]), 2.0)
    assert got.item() == pytest.approx(expected2, rel=1e-5)


def test_spatial_attention_is_the_channel_sum_of_absolute_values():
    f = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]], [[-1.0, 1.0], [2.0, 0.0]]]])  # [1, 2, 2, 2]
    assert spatial_attention(f).tolist() == [[2.0, 3.0, 2.0, 3.0]]
    # attention KD of that map against a teacher whose attention is uniform (all 1): by hand
    t = torch.ones(1, 1, 2, 2)
    e = np.exp(np.array([2.0, 3.0, 2.0, 3.0]))
    p_s = e / e.sum()
    expected = float((0.25 * (np.log(0.25) - np.log(p_s))).sum())
    assert attention_kd(f, t, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_strategy_1_is_kd_on_every_output_row():
    s, t = crafted_raw(1), crafted_raw(2)
    got = terms(distiller(1, temperature=3.0), s, t)
    assert set(got) == {"out"}
    assert got["out"] == pytest.approx(1e-3 * np_kl(rows_np(s), rows_np(t), 3.0), rel=1e-5)


def test_strategy_2_regresses_only_where_the_student_is_worse_than_the_teacher():
    s, t = box_raws()
    got = terms(distiller(2), s, t)
    gt = [np.array([0.6, 0.4, 2.0, 2.0]), np.array([0.6, 0.4, 1.0, 1.0])]
    d_s = [((box_np(s, c) - g) ** 2).sum() for c, g in zip(CELLS, gt)]
    d_t = [((box_np(t, c) - g) ** 2).sum() for c, g in zip(CELLS, gt)]
    assert d_s[0] == pytest.approx(0.02) and d_t[0] == pytest.approx(0.0, abs=1e-12)  # counted
    assert d_s[1] == pytest.approx(0.0, abs=1e-12) and d_t[1] == pytest.approx(2.02)  # not counted
    assert got["box"] == pytest.approx(1e-3 * 0.02, rel=1e-5)
    assert got["cls"] == pytest.approx(1e-4 * np_kl(rows_np(s)[..., 4:], rows_np(t)[..., 4:], 3.0), rel=1e-5)


def test_strategy_3_imitates_the_teacher_box_at_gt_cells():
    s, t = box_raws()
    got = terms(distiller(3), s, t)
    # image 0: (0.5-0.6)² + (0.5-0.4)² = 0.02; image 1: 0.02 + (1-2)² + (1-2)² = 2.02
    assert got["box"] == pytest.approx(1e-3 * 2.04, rel=1e-5)
    assert got["cls"] == pytest.approx(1e-4 * np_kl(rows_np(s)[..., 4:], rows_np(t)[..., 4:], 3.0), rel=1e-5)


def feature_dicts(seed: int = 3):
    rng = np.random.default_rng(seed)
    s = {i: rng.normal(size=(2, 4, 4, 4)).astype(np.float32) for i in (0, 1, 2)}
    t = {i: rng.normal(size=(2, 5, 4, 4)).astype(np.float32) for i in (0, 1, 2)}  # other channel count
    return s, t


def np_attention(f: np.ndarray) -> np.ndarray:
    return np.abs(f.astype(np.float64)).sum(1).reshape(f.shape[0], -1)


def torchify(feats):
    return {k: torch.from_numpy(v) for k, v in feats.items()}


def test_strategy_4_adds_spatial_attention_of_every_paired_map():
    s, t = box_raws()
    fs, ft = feature_dicts()
    d = distiller(4, temperature=2.0)
    assert d.features == [(0, 0), (1, 1), (2, 2)]
    got = terms(d, s, t, torchify(fs), torchify(ft))
    feat = sum(np_kl(np_attention(fs[i]), np_attention(ft[i]), 2.0) for i in (0, 1, 2))
    assert got["feat"] == pytest.approx(1e-3 * feat, rel=1e-5)
    assert got["box"] == pytest.approx(1e-3 * 2.04, rel=1e-5)
    assert got["cls"] == pytest.approx(1e-3 * np_kl(rows_np(s)[..., 4:], rows_np(t)[..., 4:], 2.0), rel=1e-5)


def test_object_mask_covers_the_full_block():
    # a 2x2 head grid on a 4x4 map (head twice as coarse): cell (gj 1, gi 0) covers rows 2-3, cols 0-1
    one = torch.tensor([0])
    mask = object_mask([(one, torch.tensor([1]), torch.tensor([0]), 2, 2)], 1, 4, 4)
    expected = np.zeros((1, 4, 4))
    expected[0, 2:4, 0:2] = 1
    assert np.array_equal(mask.numpy(), expected)  # the whole 2x2 block, not its diagonal
    # 4x coarser (1x1 grid): all 16 cells
    assert object_mask([(one, torch.tensor([0]), torch.tensor([0]), 1, 1)], 1, 4, 4).sum().item() == 16
    # a finer head (8x8 grid): cell (5, 2) lies in map cell (2, 1) only
    fine = object_mask([(one, torch.tensor([5]), torch.tensor([2]), 8, 8)], 1, 4, 4)
    assert fine.sum().item() == 1 and fine[0, 2, 1].item() == 1
    # 3x coarser with an uneven map (head 2x2 on 6x6 maps): a 3x3 block; batch index respected
    mask = object_mask([(torch.tensor([1]), torch.tensor([0]), torch.tensor([1]), 2, 2)], 2, 6, 6)
    expected = np.zeros((2, 6, 6))
    expected[1, 0:3, 3:6] = 1
    assert np.array_equal(mask.numpy(), expected)


def test_strategy_5_masks_the_attention_with_object_blocks():
    s, t = box_raws()
    fs, ft = feature_dicts()
    got = terms(distiller(5), s, t, torchify(fs), torchify(ft))
    # the GT cells on the 2x2 grid, mapped onto the 4x4 maps: full 2x2 blocks
    mask = np.zeros((2, 4, 4))
    mask[0, 2:4, 0:2] = 1  # image 0, cell (gj 1, gi 0)
    mask[1, 0:2, 2:4] = 1  # image 1, cell (gj 0, gi 1)
    m = mask.reshape(2, -1)
    feat = sum(np_kl(np_attention(fs[i]) * m, np_attention(ft[i]) * m, 3.0) for i in (0, 1, 2))
    assert got["feat"] == pytest.approx(1e-3 * feat, rel=1e-5)
    unmasked = terms(distiller(4), s, t, torchify(fs), torchify(ft))["feat"]
    assert got["feat"] != pytest.approx(unmasked, rel=1e-3)


def test_strategy_6_uses_only_the_map_feeding_each_head_and_differs_from_4():
    s, t = box_raws()
    fs, ft = feature_dicts()
    fs[2] = ft[2][:, :4].copy()  # the map feeding the head conv: same attention where both agree
    ft[2] = ft[2][:, :4].copy()
    d6, d4 = distiller(6), distiller(4)
    assert d6.features == [(2, 2)]  # layer yolo(4) - 2
    six = terms(d6, s, t, torchify(fs), torchify(ft))
    four = terms(d4, s, t, torchify(fs), torchify(ft))
    assert six["feat"] == pytest.approx(0.0, abs=1e-9)
    assert four["feat"] == pytest.approx(1e-3 * sum(np_kl(np_attention(fs[i]), np_attention(ft[i]), 3.0) for i in (0, 1)), rel=1e-5)
    assert four["feat"] > 1e-6
    assert six["cls"] == pytest.approx(four["cls"]) and six["box"] == pytest.approx(four["box"])


def test_loss_is_the_weighted_terms_over_64_and_parts_are_per_image():
    torch.manual_seed(0)
    student = tiny()
    student.train()
    images = torch.rand(2, 3, 8, 8)
    raw, feats = student.run(images, frozenset({0, 1, 2}))
    one = Distiller(student, tiny(), 4, YoloLoss(student), img_size=32, weight=1.0)
    two = Distiller(student, one.teacher, 4, YoloLoss(student), img_size=32, weight=2.0)
    loss1, parts1 = one(images, raw, feats, TARGETS)
    loss2, _ = two(images, raw, feats, TARGETS)
    assert loss2.item() == pytest.approx(2 * loss1.item(), rel=1e-5)
    assert sum(parts1.values()) * 2 == pytest.approx(loss1.item(), rel=1e-5)  # parts × B = loss
    t_raw, t_feats = one.teacher.run(images, one.teacher_capture)
    raw_terms = one.terms(raw, feats, t_raw, t_feats, TARGETS, 8, 8)
    assert loss1.item() == pytest.approx(sum(v.item() for v in raw_terms.values()) / 64, rel=1e-5)


# ----------------------------------------------------------------------------- pairing and teacher


def test_a_layer_pruned_student_cannot_pair_its_features_and_the_error_names_the_sizes():
    with pytest.raises(FeaturePairingError, match=r"8x8: student 2, teacher 3") as info:
        distiller(4, student=tiny(stages=1), teacher=tiny(stages=2))
    assert "--KDstr 4" in str(info.value) and "16x16" not in str(info.value)  # only the unpaired size
    with pytest.raises(FeaturePairingError, match=r"8x8: student 2, teacher 3"):
        distiller(5, student=tiny(stages=1), teacher=tiny(stages=2))
    # 6 pairs only the maps feeding the heads: the layer-pruned student pairs
    assert distiller(6, student=tiny(stages=1), teacher=tiny(stages=2)).features == [(2, 3)]
    # ... unless the teacher lacks the student's head scale (a teacher 2x larger input grid)
    wide = Darknet(parse_cfg_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + conv(4, stride=2) + conv(4) + conv(7, size=1, act="linear", bn=False) + HEAD))
    with pytest.raises(FeaturePairingError, match="stride 4"):
        distiller(6, teacher=wide)


def two_heads(coarse_first: bool) -> Darknet:
    """Heads of stride 4 (8x8 grid) and 2 (16x16) at 32x32, listed in either order."""
    net = "[net]\nwidth=32\nheight=32\nchannels=3\n"
    head = "[yolo]\nmask={}\nanchors=8,8, 4,4\nclasses=2\nnum=2\n"
    out = conv(7, size=1, act="linear", bn=False)
    if coarse_first:  # 0 16x16, 1 8x8, 2-3 head (stride 4), 4 route 0, 5-6 head (stride 2)
        text = net + conv(4, stride=2) + conv(4, stride=2) + out + head.format(0) + "[route]\nlayers=0\n" + out + head.format(1)
    else:  # 0 16x16, 1-2 head (stride 2), 3 route 0, 4 8x8, 5-6 head (stride 4)
        text = net + conv(4, stride=2) + out + head.format(1) + "[route]\nlayers=0\n" + conv(4, stride=2) + out + head.format(0)
    return Darknet(parse_cfg_text(text))


def test_heads_and_head_maps_pair_by_stride_not_by_order():
    torch.manual_seed(0)
    student, teacher = two_heads(True), two_heads(False)
    assert [h.stride for h in student.heads] == [4, 2] and [h.stride for h in teacher.heads] == [2, 4]
    d = Distiller(student, teacher, 1, YoloLoss(student), img_size=32)
    assert d.heads == [(0, 1), (1, 0)]
    rng = np.random.default_rng(4)
    s = [rng.normal(size=(1, 7, 8, 8)).astype(np.float32), rng.normal(size=(1, 7, 16, 16)).astype(np.float32)]
    t = [rng.normal(size=(1, 7, 16, 16)).astype(np.float32), rng.normal(size=(1, 7, 8, 8)).astype(np.float32)]
    got = d.terms([torch.from_numpy(x) for x in s], {}, [torch.from_numpy(x) for x in t], {}, torch.zeros(0, 6), 32, 32)
    expected = np_kl(rows_np(s[0]), rows_np(t[1]), 3.0) + np_kl(rows_np(s[1]), rows_np(t[0]), 3.0)
    assert float(got["out"]) == pytest.approx(1e-3 * expected, rel=1e-5)
    # 6: the map each head's last conv reads, paired by size: student 1 (8x8) <-> teacher 4, route 4 (16x16) <-> 0
    assert Distiller(student, teacher, 6, YoloLoss(student), img_size=32).features == [(1, 4), (4, 0)]


def test_teacher_and_student_class_counts_must_match():
    text = "[net]\nwidth=32\nheight=32\nchannels=3\n" + conv(4, stride=2) + conv(4, stride=2) + conv(4) + conv(8, size=1, act="linear", bn=False)
    three = Darknet(parse_cfg_text(text + HEAD.replace("classes=2", "classes=3")))
    with pytest.raises(UsageError, match="teacher has 3 classes and the student 2"):
        distiller(1, teacher=three)


def test_teacher_gets_no_gradients_and_the_student_does():
    d = distiller(5)
    student = d.student.train()
    images = torch.rand(2, 3, 8, 8)
    raw, feats = student.run(images, d.student_capture)
    loss, _ = d(images, raw, feats, TARGETS)
    loss.backward()
    assert not d.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in d.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# -------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("kd")
    return make_synthetic(root / "ds", classes=12, train=8, val=2, img_size=64, seed=5).data_yaml


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A 3-head edgeyolo-res teacher and an edgeyolo-mobile one (same layers as the student)."""
    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(11)
    res = save_checkpoint(Darknet(parse_cfg_text(cfg_path("edgeyolo-res").read_text())), root / "res.safetensors")
    torch.manual_seed(12)
    mobile = save_checkpoint(Darknet(parse_cfg_text(cfg_path("edgeyolo-mobile").read_text())), root / "mobile.safetensors")
    return {"res": res, "mobile": mobile}


def kd_config(synth, tmp_path, strategy, teacher, **kw) -> TrainConfig:
    return TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-mobile")), img_size=64, batch_size=4, epochs=1, workers=0,
        out=str(tmp_path), name=f"kd{strategy}", threads=1, burn_in=1, max_val_images=2,
        kd_strategy=strategy, t_weights=str(teacher), **kw,
    )


@pytest.mark.parametrize("strategy", [1, 2, 3, 4, 5, 6])
def test_each_strategy_trains_one_epoch(synth, teachers, tmp_path, strategy):
    # 4/5 pair every feature map: a teacher with the student's layers; the others distil from edgeyolo-res
    teacher = teachers["mobile" if strategy in (4, 5) else "res"]
    trainer = Trainer(kd_config(synth, tmp_path, strategy, teacher))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    t_before = {k: v.clone() for k, v in trainer.distiller.teacher.state_dict().items()}
    teacher_ids = {id(p) for p in trainer.distiller.teacher.parameters()}
    assert not teacher_ids & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    history = trainer.fit()
    kd = history[-1]["kd"]
    assert set(kd) == {1: {"out"}, 2: {"cls", "box"}, 3: {"cls", "box"}}.get(strategy, {"cls", "box", "feat"})
    assert all(math.isfinite(v) and v >= 0 for v in kd.values()) and sum(kd.values()) > 0
    assert all(math.isfinite(history[-1][k]) for k in ("loss_box", "loss_obj", "loss_cls"))
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].dtype.is_floating_point)
    assert all(torch.equal(t_before[k], v) for k, v in trainer.distiller.teacher.state_dict().items())
    row = next(csv.DictReader((tmp_path / f"kd{strategy}" / "metrics.csv").open()))
    assert all(float(row[f"kd.{k}"]) == pytest.approx(v) for k, v in kd.items())
    assert "  kd " in trainer_record_line(history[-1])


def trainer_record_line(record: dict) -> str:
    from edgeyolo.train.trainer import EpochRecord

    return EpochRecord(**record).line()


def test_kd_changes_the_update(synth, teachers, tmp_path):
    plain = Trainer(kd_config(synth, tmp_path, 6, teachers["res"], kd_weight=0.0))
    distilled = Trainer(dataclasses.replace(kd_config(synth, tmp_path, 6, teachers["res"], kd_weight=10.0), name="b"))
    plain.fit(), distilled.fit()
    a, b = plain.model.state_dict(), distilled.model.state_dict()
    assert all(torch.isfinite(v).all() for v in b.values())
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].dtype.is_floating_point)


def test_resume_with_distillation_is_bitwise_identical(synth, teachers, tmp_path):
    config = dataclasses.replace(kd_config(synth, tmp_path, 5, teachers["mobile"]), epochs=2)
    a, b, resumed = straight_and_resumed(config)
    assert resumed.start_epoch == 1 and resumed.distiller is not None
    assert_same_weights(a, b)
    assert json.loads(a["history"])[-1]["kd"] == json.loads(b["history"])[-1]["kd"]


def test_cli_seed_aliases_record_the_kd_config(synth, teachers, tmp_path, capsys):
    from edgeyolo.cli.app import main

    args = [
        "train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--batch-size", "4", "--epochs", "1",
        "--workers", "0", "--out", str(tmp_path), "--name", "cli", "--threads", "1", "--max-val-images", "2",
        "--t_cfg", "edgeyolo-res", "--t_weights", str(teachers["res"]), "--KDstr", "2", "--kd-t", "4", "--kd-weight", "0.5",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "distillation: --KDstr 2" in out and "  kd cls " in out
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (config["kd_strategy"], config["kd_t"], config["kd_weight"]) == (2, 4.0, 0.5)
    assert config["t_cfg"].endswith("edgeyolo-res.cfg") and config["t_weights"] == str(teachers["res"])
    header = (tmp_path / "cli" / "metrics.csv").read_text().splitlines()[0]
    assert header.endswith("kd.cls,kd.box")


@pytest.mark.skipif(shutil.which("edgeyolo") is None, reason="the edgeyolo console script is not installed")
def test_distillation_under_ddp_with_two_cpu_processes(synth, teachers, tmp_path):
    """The student's feature tap is what DDP wraps: gradients of the feature loss are all-reduced."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", shutil.which("edgeyolo"),
        "train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--batch-size", "4", "--epochs", "1",
        "--workers", "0", "--out", str(tmp_path), "--name", "ddp", "--threads", "1", "--max-val-images", "2",
        "--t-weights", str(teachers["mobile"]), "--KDstr", "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(csv.DictReader((tmp_path / "ddp" / "metrics.csv").open()))
    assert float(row["kd.feat"]) > 0


def test_cli_rejects_a_teacher_without_a_strategy_and_a_strategy_without_a_teacher(synth, teachers, tmp_path, capsys):
    from edgeyolo.cli.app import main

    base = ["train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--out", str(tmp_path)]
    assert main(base + ["--t-weights", str(teachers["res"])]) == 2
    assert "add --KDstr" in capsys.readouterr().err
    assert main(base + ["--kd-strategy", "3"]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main(base + ["--KDstr", "7", "--t-weights", str(teachers["res"])]) == 2


# ------------------------------------------------------- QAT flags (edgeyolo.compress.quant plumbing)


def test_cli_quantization_aware_training_writes_float_and_quantized_weights(synth, tmp_path, capsys):
    from edgeyolo.cli.app import main
    from edgeyolo.compress.quant import is_quantized, load_quantized
    from edgeyolo.model.checkpoint import load_model

    args = [
        "train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--batch-size", "4", "--epochs", "1",
        "--workers", "0", "--out", str(tmp_path), "--name", "qat", "--threads", "1", "--max-val-images", "2",
        "--quantized", "1", "--w-bit", "6", "--a_bit", "7", "--BN_Flod",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quantization-aware training: affine, w6/a7, BN folded" in out
    assert "--lr0 0.001 (0.1x the float default" in out
    run = tmp_path / "qat"
    config = json.loads((run / "config.json").read_text())
    assert (config["quantized"], config["w_bit"], config["a_bit"], config["bn_fold"]) == ("affine", 6, 7, True)
    assert config["lr0"] == 0.001  # QAT's own default; an explicit --lr0 wins
    quant = load_quantized(run / "last_quant")
    assert is_quantized(quant) and (quant.quant_spec.w_bit, quant.quant_spec.a_bit, quant.quant_spec.bn_fold) == (6, 7, True)
    plain = load_model(None, run / "last.safetensors")  # the float parameters load like any checkpoint
    assert not is_quantized(plain) and torch.equal(plain.module_list[0].conv.weight, quant.module_list[0].conv.weight)
    assert (run / "best_quant" / "quant.json").exists()


def test_fpga_flag_is_pow2_and_combines_with_distillation(synth, teachers, tmp_path, capsys):
    from edgeyolo.cli.app import main

    args = [
        "train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--batch-size", "4", "--epochs", "1",
        "--workers", "0", "--out", str(tmp_path), "--name", "fpga", "--threads", "1", "--max-val-images", "2",
        "--FPGA", "--t-weights", str(teachers["res"]), "--KDstr", "3",
    ]
    assert main(args) == 0
    config = json.loads((tmp_path / "fpga" / "config.json").read_text())
    assert config["quantized"] == "pow2" and config["kd_strategy"] == 3
    assert "  kd cls " in capsys.readouterr().out


def test_qat_resume_is_bitwise_identical(synth, tmp_path):
    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-mobile")), img_size=64, batch_size=4, epochs=2, workers=0,
        out=str(tmp_path), threads=1, burn_in=1, max_val_images=2, quantized="affine", bn_fold=True,
    )
    # the resume re-prepares the model before the state (quantizer ranges included) loads
    a, b, _ = straight_and_resumed(config)
    assert any(k.endswith("in_q.amax") for k in a["model"])
    assert_same_weights(a, b)


def test_low_bit_qat_starts_from_calibrated_ranges_with_8_bit_edges(synth, tmp_path):
    from edgeyolo.compress.quant.modules import act_quantizers

    config = TrainConfig(
        data=str(synth), cfg=str(cfg_path("edgeyolo-mobile")), img_size=64, batch_size=4, epochs=1, workers=0,
        out=str(tmp_path), name="q4", threads=1, max_val_images=2, quantized="pow2", w_bit=4, a_bit=4,
    )
    spec = config.quant_spec()
    assert spec.edge_bits == 8  # below 8 bits the first and head convs stay at 8 unless --edge-bits says otherwise
    assert dataclasses.replace(config, edge_bits=0).quant_spec().edge_bits is None
    assert TrainConfig(**{**dataclasses.asdict(config), "w_bit": 8, "a_bit": 8}).quant_spec().edge_bits is None
    calibrated = Trainer(config)
    ranges = {n: float(q.amax) for n, q in act_quantizers(calibrated.model).items()}
    assert ranges and all(r > 0 for r in ranges.values())  # set before the first step, not by its batch
    assert all(q.frozen for q in act_quantizers(calibrated.model).values())  # and kept: training does not widen them
    first_batch = Trainer(dataclasses.replace(config, name="q4max", qat_calib=0))
    assert all(float(q.amax) == 0 for q in act_quantizers(first_batch.model).values())
    with pytest.raises(UsageError, match="--qat-calib"):
        dataclasses.replace(config, qat_calib=-1)


def test_qat_flags_without_a_scheme_or_with_a_bad_one_are_refused(synth, tmp_path, capsys):
    from edgeyolo.cli.app import main

    base = ["train", "--data", str(synth), "--cfg", "edgeyolo-mobile", "--img-size", "64", "--out", str(tmp_path)]
    assert main(base + ["--bn-fold"]) == 2
    assert "add --quantized" in capsys.readouterr().err
    assert main(base + ["--quantized", "int3"]) == 2
    assert "unknown quantization scheme" in capsys.readouterr().err
    assert main(base + ["--quantized", "dorefa", "--FPGA"]) == 2
