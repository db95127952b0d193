"""Quantization schemes and calibration methods are registered classes.

A new scheme is one class plus its registration: the dummy below, registered from the test, appears
in ``parse_scheme``, ``quantize --list-schemes`` and ``quantize --help``, quantizes a model in
process and through the CLI, and is removed again afterwards.
"""
import json

import cv2
import pytest
import torch

from edgeyolo.cli.app import main
from edgeyolo.compress.quant import (
    METHODS,
    SCHEMES,
    QuantScheme,
    QuantSpec,
    calibrate,
    load_quantized,
    parse_scheme,
    prepare_qat,
    save_quantized,
)
from edgeyolo.compress.quant.calib import HistogramObserver, choose_amax, method_names
from edgeyolo.compress.quant.fakequant import affine_scale
from edgeyolo.compress.quant.modules import QuantConvBlock
from edgeyolo.compress.quant.schemes import scheme_names
from edgeyolo.errors import UsageError
from edgeyolo.model.checkpoint import save_checkpoint
from edgeyolo.model.init import synthetic_images
from tests.compress.quant.conftest import res_model, synthetic_batches

DUMMY = "dummy-per-tensor"


class PerTensorAffineScheme(QuantScheme):
    """A test scheme: affine scales, but one scale per weight tensor."""

    description = "test dummy: float scales, one per weight tensor"

    def act_scale(self, amax, bits):
        return affine_scale(amax, bits)

    def weight_scale(self, w, bits):
        return affine_scale(w.detach().abs().max(), bits)


@pytest.fixture
def dummy():
    SCHEMES.add(DUMMY, PerTensorAffineScheme)
    try:
        yield DUMMY
    finally:
        SCHEMES.remove(DUMMY)
    assert DUMMY not in SCHEMES
    with pytest.raises(UsageError, match="unknown quantization scheme"):
        parse_scheme(DUMMY)


def test_builtin_schemes_and_methods_are_registered_in_order():
    assert scheme_names() == ["affine", "dorefa", "pow2", "vitis-sim"]
    assert method_names() == ["minmax", "percentile", "entropy", "mse"]
    assert QuantSpec("affine").scheme_obj.per_channel and not QuantSpec("pow2").scheme_obj.per_channel
    dorefa = QuantSpec("dorefa").scheme_obj
    assert not (dorefa.uses_ranges or dorefa.quantize_input or dorefa.quantize_adds)
    with pytest.raises(UsageError, match="expected one of affine, dorefa, pow2, vitis-sim"):
        parse_scheme("int3")


def test_vitis_sim_is_a_scheme_recorded_as_pow2_with_the_flag():
    by_name, by_flag = QuantSpec("vitis-sim"), QuantSpec(vitis_sim=True)
    assert by_name == by_flag and by_name.to_dict() == QuantSpec("pow2", vitis_sim=True).to_dict()
    assert (by_name.scheme, by_name.vitis_sim, by_name.equal_scales) == ("pow2", True, True)
    scheme = by_name.scheme_obj
    assert scheme.narrow and scheme.leaky_slope == 26 / 256 and not scheme.per_channel
    assert [scheme.rounding(r) for r in ("weight", "input", "act")] == ["away", "away", "up"]
    assert QuantSpec("pow2").scheme_obj.rounding("act") == "even" and not QuantSpec("pow2").narrow
    with pytest.raises(UsageError, match="8-bit"):
        QuantSpec("vitis-sim", w_bit=4)


def test_choose_amax_takes_a_scheme_name_or_object():
    obs = HistogramObserver()
    obs.update(torch.linspace(-3.0, 2.5, 1000))
    for method in METHODS:
        assert choose_amax(obs, method, 8, "pow2") == choose_amax(obs, method, 8, QuantSpec("vitis-sim").scheme_obj)
    assert choose_amax(obs, "minmax", 8, "affine") == 3.0 and choose_amax(obs, "minmax", 8, "pow2") == 4.0
    with pytest.raises(UsageError, match="expected one of minmax, percentile, entropy, mse"):
        choose_amax(obs, "max", 8, "affine")


def test_a_registered_scheme_is_parsed_listed_and_quantizes(dummy, tmp_path, capsys):
    assert parse_scheme(dummy.upper()) == dummy
    with pytest.raises(UsageError, match=f"expected one of affine, dorefa, pow2, vitis-sim, {dummy}"):
        parse_scheme("int3")
    spec = QuantSpec(dummy)
    assert isinstance(spec.scheme_obj, PerTensorAffineScheme) and spec.scheme_obj.name == dummy and not spec.per_channel

    assert main(["quantize", "--list-schemes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["affine", "dorefa", "pow2", "vitis-sim", dummy]
    assert listed[-1].split(None, 2)[1:] == ["per-tensor", PerTensorAffineScheme.description]
    assert main(["quantize", "--help"]) == 0
    assert dummy in capsys.readouterr().out

    model = prepare_qat(res_model(), spec)
    calibrate(model, synthetic_batches(4, 64, 3), "mse")
    blocks = [m for m in model.module_list if isinstance(m, QuantConvBlock)]
    assert blocks and all(b.w_q.scale(b.folded_params()[0]).dim() == 0 for b in blocks)
    x = synthetic_batches(2, 64, 9)[0]
    with torch.no_grad():
        ref = torch.cat([t.flatten(1) for t in res_model().forward_raw(x)], 1)
        got = torch.cat([t.flatten(1) for t in model.forward_raw(x)], 1)
    assert 0 < float((ref - got).abs().max()) < 0.2 * float(ref.abs().max())
    back = load_quantized(save_quantized(model, tmp_path / "q"))
    with torch.no_grad():
        assert torch.equal(torch.cat([t.flatten(1) for t in back.forward_raw(x)], 1), got)


def test_the_cli_quantizes_with_a_registered_scheme(dummy, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(synthetic_images(2, 64, 64, seed=5)):
        cv2.imwrite(str(calib / f"s{i}.png"), img)
    weights = save_checkpoint(res_model(), tmp_path / "res.safetensors")
    out = tmp_path / "q"
    assert main(["quantize", "--weights", str(weights), "--calib", str(calib), "--scheme", dummy, "--out", str(out)]) == 0
    assert f"({dummy} int8" in capsys.readouterr().out
    assert json.loads((out / "quant.json").read_text())["spec"]["scheme"] == dummy
    assert main(["quantize", "--weights", str(weights), "--calib", str(calib), "--scheme", dummy, "--pow2", "--out", str(out)]) == 2
    assert "give only one of them" in capsys.readouterr().err
    assert main(["quantize", "--weights", str(weights), "--calib", str(calib), "--scheme", "dorefa", "--out", str(out)]) == 2
    assert "fixed formulas" in capsys.readouterr().err
