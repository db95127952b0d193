"""Golden numbers for the rounding modes, the DPU's integer LeakyReLU, saturation and pow2 scales."""
import pytest
import torch
from torch import nn

from edgeyolo.compress.quant import QuantSpec, parse_scheme
from edgeyolo.compress.quant.fakequant import (
    dorefa_act,
    dorefa_weight,
    dpu_leaky_codes,
    is_pow2,
    pow2_ceil_exponent,
    pow2_scale,
    qrange,
    round_half_away,
    round_half_even,
    round_half_up,
)
from edgeyolo.compress.quant.modules import ActQuantizer, WeightQuantizer
from edgeyolo.compress.quant.spec import DPU_LEAKY_SLOPE
from edgeyolo.errors import UsageError

TIES = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])


def test_rounding_modes_on_ties():
    assert round_half_even(TIES).tolist() == [-2, -2, 0, 0, 2, 2]  # ONNX QuantizeLinear, torch.round
    assert round_half_away(TIES).tolist() == [-3, -2, -1, 1, 2, 3]  # vai_q std_round
    assert round_half_up(TIES).tolist() == [-2, -1, 0, 1, 2, 3]  # vai_q half_up: floor(x + 0.5)


def test_dpu_leaky_golden_codes():
    q = torch.tensor([-127, -100, -84, -10, -5, -4, -1, 0, 5, 127])
    assert dpu_leaky_codes(q).tolist() == [-13, -10, -9, -1, -1, 0, 0, 0, 5, 127]
    assert DPU_LEAKY_SLOPE == 26 / 256 == 0.1015625
    # darknet's 0.1 gives another code at -84 (-8.4 -> -8): the slope matters
    assert int(round_half_up(torch.tensor(-84 * 0.1))) == -8


def _vitis_act(amax: float) -> ActQuantizer:
    q = ActQuantizer(QuantSpec(vitis_sim=True), role="act").eval()
    q.amax.fill_(amax)
    return q


def test_float_simulation_equals_integer_leaky_for_every_code():
    q = _vitis_act(8.0)  # scale 2^3 / 2^7 = 1/16
    s = float(q.scale())
    assert s == 1 / 16
    codes = torch.arange(-127, 128)
    x = nn.LeakyReLU(DPU_LEAKY_SLOPE)(codes.float() * s)
    with torch.no_grad():
        got = torch.round(q(x) / s).long()
    assert torch.equal(got, dpu_leaky_codes(codes))


def test_narrow_range_saturation():
    assert qrange(8, narrow=True) == (-127, 127) and qrange(8) == (-128, 127)
    x = torch.tensor([-2.0, -1.0, -127 / 128, 0.99, 1.0, 5.0])
    vitis, plain = _vitis_act(1.0), ActQuantizer(QuantSpec("pow2")).eval()
    plain.amax.fill_(1.0)
    with torch.no_grad():
        assert (vitis(x) * 128).tolist() == [-127, -127, -127, 127, 127, 127]
        assert (plain(x) * 128).tolist() == [-128, -128, -127, 127, 127, 127]


def test_vitis_sim_differs_from_plain_pow2_on_a_crafted_tensor():
    s = 1 / 128
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, -1.0 / s]) * s
    vitis, plain = _vitis_act(1.0), ActQuantizer(QuantSpec("pow2")).eval()
    plain.amax.fill_(1.0)
    with torch.no_grad():
        v, p = (vitis(x) / s).tolist(), (plain(x) / s).tolist()
    assert p == [0, 2, 2, 0, -2, -2, -128]  # half to even, full int8 range
    assert v == [1, 2, 3, 0, -1, -2, -127]  # half up, narrow range
    # weights: std_round (half away from zero) on the DPU, half to even otherwise
    w = torch.zeros(2, 1, 1, 1)
    w[0, 0, 0, 0], w[1, 0, 0, 0] = 1.0, -0.5 / 128  # max|w| = 1 -> scale 1/128
    wv, wp = WeightQuantizer(QuantSpec(vitis_sim=True))(w), WeightQuantizer(QuantSpec("pow2"))(w)
    assert float(wv[1]) * 128 == -1 and float(wp[1]) * 128 == 0
    # the input image is rounded half away from zero, activations half up
    image_q = ActQuantizer(QuantSpec(vitis_sim=True), role="input").eval()
    image_q.amax.fill_(1.0)
    with torch.no_grad():
        assert (image_q(torch.tensor([-0.5 * s])) / s).tolist() == [-1]


def test_pow2_exponent_is_exact():
    amax = torch.tensor([1.0, 1.0000001, 0.75, 2.0**-10, 3.0, 4.0])
    assert pow2_ceil_exponent(amax).tolist() == [0, 1, 0, -10, 2, 2]
    scale = pow2_scale(amax, 8)
    assert is_pow2(scale) and scale.tolist()[0] == 1 / 128
    assert not is_pow2(torch.tensor([0.3]))


def test_spec_validation_and_aliases():
    assert parse_scheme("1") == "affine" and parse_scheme("2") == "dorefa" and parse_scheme("POW2") == "pow2"
    assert QuantSpec("2").scheme == "dorefa"
    vitis = QuantSpec(vitis_sim=True)
    assert vitis.scheme == "pow2" and vitis.equal_scales and vitis.narrow
    assert QuantSpec.from_dict(vitis.to_dict()) == vitis
    for bad in (dict(scheme="int4"), dict(w_bit=1), dict(a_bit=True), dict(vitis_sim=True, scheme="dorefa"), dict(vitis_sim=True, w_bit=4)):
        with pytest.raises(UsageError):
            QuantSpec(**bad)
    with pytest.raises(UsageError, match="unknown quantization settings"):
        QuantSpec.from_dict({"scheme": "pow2", "bits": 8})


def test_dorefa_grid_and_gradient():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    wq = dorefa_weight(w, 4)
    levels = 15
    grid = (wq.detach() / w.detach().abs().max() + 1) * levels / 2
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # on DoReFa's 2^k-level grid
    wq.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # straight-through
    a = dorefa_act(torch.tensor([-1.0, 0.0, 4.0, 8.0, 100.0]), 8)
    assert a.tolist()[0] == 0.0 and a.tolist()[-1] == 8.0 and abs(a.tolist()[2] - 4.0) < 8 / 255
