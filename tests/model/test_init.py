"""--random-init gives non-degenerate networks; plain random init does not."""
import numpy as np
import pytest
import torch

from edgeyolo.contract import Contract
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import calibration_batch, health, random_init, synthetic_images
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path
from tests.oracle import calibrated_model


@pytest.mark.parametrize("name", DARKNET_CFGS + OWN_CFGS)
def test_random_init_is_non_degenerate(name):
    """What `export darknet --random-init` does: calibrate on synthetic images, judge on others."""
    cfg = parse_cfg(cfg_path(name))
    model = Darknet(cfg)
    contract = Contract(256, 256)
    random_init(model, calibration_batch(contract, synthetic_images(8, 256, 256, seed=0)), seed=0)
    held_out = calibration_batch(contract, synthetic_images(4, 256, 256, seed=99))
    h = health(model, held_out)
    assert h["finite"] == 1.0
    assert h["objectness_in_range"] >= 0.5, h


def test_plain_random_init_is_degenerate():
    """Why calibration exists: He-normal init with identity BN overflows yolov3."""
    torch.manual_seed(0)
    model = Darknet(parse_cfg(cfg_path("yolov3"))).eval()
    for _, block in model.conv_blocks():
        torch.nn.init.kaiming_normal_(block.conv.weight, a=0.1)
    batch = calibration_batch(Contract(256, 256), synthetic_images(2, 256, 256, seed=1))
    h = health(model, batch)
    assert h["finite"] == 0.0 or h["objectness_in_range"] < 0.5, h


def test_random_init_is_seeded(photos):
    cfg = parse_cfg(cfg_path("edgeyolo-res"))
    a = calibrated_model(cfg, 256, seed=4, photos=photos).state_dict()
    b = calibrated_model(cfg, 256, seed=4, photos=photos).state_dict()
    c = calibrated_model(cfg, 256, seed=5, photos=photos).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["module_list.0.conv.weight"], c["module_list.0.conv.weight"])


def test_gamma_spread_for_pruning(photos):
    model = calibrated_model(parse_cfg(cfg_path("edgeyolo-res")), 256, seed=0, photos=photos)
    gammas = torch.cat([b.bn.weight.detach() for _, b in model.conv_blocks() if b.bn is not None]).numpy()
    assert 0.05 <= gammas.min() and gammas.max() <= 1.0 and np.std(gammas) > 0.1
