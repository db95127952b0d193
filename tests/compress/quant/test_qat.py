"""prepare_qat semantics, QAT range tracking and STE, BN-folded QAT, calibration, save/load."""
import math

import pytest
import torch

from edgeyolo.compress.quant import (
    QuantSpec,
    calibrate,
    float_layers,
    freeze_bn,
    freeze_ranges,
    load_quantized,
    prepare_qat,
    quant_layers,
    save_quantized,
    set_float_layers,
)
from edgeyolo.compress.quant.analysis import analyze, auto_keep_float, tensor_sqnr
from edgeyolo.compress.quant.calib import METHODS
from edgeyolo.compress.quant.fakequant import is_pow2
from edgeyolo.compress.quant.modules import ActQuantizer, QuantConvBlock, QuantShortcut, act_quantizers, only_quantized
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.model.darknet import ConvBlock, Darknet
from tests.compress.quant.conftest import res_model, synthetic_batches


def _heads(model, x):
    return torch.cat([h.flatten(1) for h in model.forward_raw(x)], 1)


def test_prepare_is_in_place_and_keeps_semantics(res):
    x = synthetic_batches(2, 64, 1)[0]
    with torch.no_grad():
        ref_raw, ref_dec = _heads(res, x), res(x)
    same = prepare_qat(res, QuantSpec())
    assert same is res and isinstance(res, Darknet)
    assert [i for i, _ in res.conv_blocks()] == [0, 1, 2, 3, 6]  # still ConvBlocks for every other tool
    assert isinstance(res.module_list[4], QuantShortcut) and isinstance(res.module_list[0], QuantConvBlock)
    assert quant_layers(res) == [0, 1, 2, 3, 4, 6]
    with pytest.raises(UsageError, match="no range"):
        res(x)  # eval before calibration or QAT: a clear error, not garbage
    with only_quantized(res, []), torch.no_grad():
        assert torch.equal(_heads(res, x), ref_raw)  # quantization off: the float model exactly
        assert torch.equal(res(x), ref_dec)
    with pytest.raises(UsageError, match="already prepared"):
        prepare_qat(res, QuantSpec())


def test_qat_tracks_ranges_in_training_and_freezes_in_eval(res):
    prepare_qat(res, QuantSpec("pow2"))
    q = res.module_list[2].in_q
    x1, x2 = synthetic_batches(4, 64, 2)
    res.train()
    res.forward_raw(x1)
    first = float(q.amax)
    assert first > 0
    res.forward_raw(x2 * 3)
    second = float(q.amax)
    assert second != first  # EMA moved
    res.eval()
    with torch.no_grad():
        res(x1)
    assert float(q.amax) == second  # eval never updates
    freeze_ranges(res)
    res.train()
    res.forward_raw(x1 * 5)
    assert float(q.amax) == second


def test_ste_gradients_reach_weights_and_bn(res):
    prepare_qat(res, QuantSpec("affine", bn_fold=True))
    res.train()
    x = synthetic_batches(2, 64, 3)[0].requires_grad_(True)
    loss = _heads(res, x).pow(2).mean()
    loss.backward()
    block = res.module_list[3]
    assert block.conv.weight.grad.abs().sum() > 0 and block.bn.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bn_fold_qat_uses_batch_stats_then_frozen_running_stats(res):
    prepare_qat(res, QuantSpec("pow2", bn_fold=True))
    bn = res.module_list[1].bn
    before = bn.running_mean.clone()
    res.train()
    x = synthetic_batches(2, 64, 4)[0] * 2.0
    res.forward_raw(x)
    moved = (bn.running_mean - before).abs().max()
    assert moved > 0
    freeze_bn(res)
    after = bn.running_mean.clone()
    res.forward_raw(x)
    assert torch.equal(bn.running_mean, after)  # frozen: running statistics are used and not updated


@pytest.mark.parametrize("method", METHODS)
def test_calibration_methods(method):
    model = prepare_qat(res_model(), QuantSpec("pow2"))
    seen = calibrate(model, synthetic_batches(4, 64, 5), method)
    assert seen == 2
    for name, q in act_quantizers(model).items():
        assert math.isfinite(float(q.amax)) and float(q.amax) > 0, name
        assert is_pow2(q.scale()), name
    x = synthetic_batches(2, 64, 6)[0]
    with torch.no_grad():
        got = _heads(model, x)
        with only_quantized(model, []):
            ref = _heads(model, x)
    assert tensor_sqnr(ref, got) > 10


def test_percentile_range_within_minmax():
    ranges = {}
    for method in ("minmax", "percentile"):
        model = prepare_qat(res_model(), QuantSpec("affine"))
        calibrate(model, synthetic_batches(4, 64, 7), method)
        ranges[method] = {n: float(q.amax) for n, q in act_quantizers(model).items()}
    assert all(ranges["percentile"][n] <= ranges["minmax"][n] + 1e-6 for n in ranges["minmax"])


def test_equal_scales_share_one_quantizer():
    model = prepare_qat(res_model(), QuantSpec(vitis_sim=True))
    add = model.module_list[4]
    assert add.qb is None
    calibrate(model, synthetic_batches(2, 64, 8))
    other = prepare_qat(res_model(), QuantSpec("pow2"))
    assert other.module_list[4].qb is not None
    assert isinstance(model.module_list[3].act, torch.nn.LeakyReLU) and model.module_list[3].act.negative_slope == 26 / 256


def test_keep_float_and_analysis():
    model = prepare_qat(res_model(), QuantSpec("pow2"))
    calibrate(model, synthetic_batches(4, 64, 9))
    reports = analyze(model, synthetic_batches(2, 64, 10))
    assert [r.layer for r in reports] == quant_layers(model)
    keep = auto_keep_float({r.layer: r.solo_sqnr_db for r in reports})
    worst = min(reports, key=lambda r: r.solo_sqnr_db).layer
    assert keep == [worst]
    set_float_layers(model, keep)
    assert float_layers(model) == keep and not model.module_list[worst].quantized
    with pytest.raises(UsageError, match="carry no quantizer"):
        set_float_layers(model, [5])  # a route


def test_save_load_roundtrip_and_bad_folders(tmp_path):
    model = prepare_qat(res_model(), QuantSpec("affine"))
    calibrate(model, synthetic_batches(4, 64, 11), "mse")
    set_float_layers(model, [6])
    out = save_quantized(model, tmp_path / "q", {"method": "mse"})
    assert sorted(p.name for p in out.iterdir()) == ["model.cfg", "model.safetensors", "quant.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed
    back = load_quantized(out)
    x = synthetic_batches(2, 64, 12)[0]
    with torch.no_grad():
        assert torch.equal(_heads(back, x), _heads(model, x))
    assert back.quant_spec == model.quant_spec and float_layers(back) == [6]
    with pytest.raises(InputFileError, match="quant.json is missing"):
        load_quantized(tmp_path)
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(Exception) as err:
        load_quantized(out)
    assert "not a valid safetensors" in str(err.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        save_quantized(model, tmp_path / "file")


def test_prepare_rejects_non_models():
    with pytest.raises(UsageError):
        prepare_qat(torch.nn.Linear(2, 2), QuantSpec())
    with pytest.raises(UsageError):
        calibrate(res_model(), [])
    model = prepare_qat(res_model(), QuantSpec())
    with pytest.raises(UsageError, match="no batches"):
        calibrate(model, [])
    with pytest.raises(UsageError, match="unknown calibration method"):
        calibrate(model, synthetic_batches(2, 64, 1), "kl")
    assert isinstance(next(iter(act_quantizers(model).values())), ActQuantizer)
    assert isinstance(model.module_list[0], ConvBlock)


def test_a_diverged_activation_range_is_passed_on_as_nan_not_a_missing_calibration() -> None:
    """A NaN range (activations blew up during QAT) gives NaN outputs, so the trainer's divergence
    stop applies; a range that was never observed is still the calibration error."""
    import math

    import pytest
    import torch

    from edgeyolo.compress.quant import QuantSpec
    from edgeyolo.compress.quant.modules import ActQuantizer
    from edgeyolo.errors import UsageError

    q = ActQuantizer(QuantSpec("affine"))
    q.eval()
    with pytest.raises(UsageError, match="no range yet"):
        q.apply(torch.ones(3))
    q.amax.fill_(float("nan"))
    assert all(math.isnan(v) for v in q.apply(torch.ones(3)).tolist())


def test_edge_bits_keep_the_input_and_head_convs_wider(tmp_path):
    model = prepare_qat(res_model(), QuantSpec("affine", w_bit=4, a_bit=4, edge_bits=8))
    heads = {y.index - 1 for y in model.cfg.yolo_layers}
    bits = {i: (b.w_q.bits, b.in_q.bits) for i, b in enumerate(model.module_list) if isinstance(b, QuantConvBlock)}
    assert heads and all(bits[i] == (8, 8) for i in heads | {0})
    assert all(v == (4, 4) for i, v in bits.items() if i not in heads | {0}) and len(bits) > len(heads) + 1
    calibrate(model, synthetic_batches(2, 64, 1))
    save_quantized(model, tmp_path / "q")
    again = load_quantized(tmp_path / "q")
    assert again.quant_spec.edge_bits == 8
    assert {i: (b.w_q.bits, b.in_q.bits) for i, b in enumerate(again.module_list) if isinstance(b, QuantConvBlock)} == bits
    with pytest.raises(UsageError, match="edge_bits must be an integer in 2..16"):
        QuantSpec("affine", edge_bits=1)
