"""--random-init gives non-degenerate networks; plain random init does not."""
import numpy as np
import pytest
import torch

from edgeyolo.contract import Contract
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import calibration_batch, health, synthetic_images
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path
from tests.oracle import calibrated_model, letterboxed


@pytest.mark.parametrize("name", DARKNET_CFGS + OWN_CFGS)
def test_random_init_is_non_degenerate(name, photos):
    cfg = parse_cfg(cfg_path(name))
    model = calibrated_model(cfg, 256, seed=0, photos=photos)
    # judged on images not used for calibration
    held_out = calibration_batch(Contract(256, 256), synthetic_images(3, 256, 256, seed=99) + [
        __import__("cv2").imread(str(photos[-1]))
    ])
    h = health(model, held_out)
    assert h["finite"] == 1.0
    assert h["objectness_in_range"] >= 0.5, h
    assert h["max_abs"] < 1e5  # boxes stay anchor-sized, no overflow


def test_plain_random_init_is_degenerate():
    """Why calibration exists: default torch init on yolov3 saturates objectness."""
    torch.manual_seed(0)
    model = Darknet(parse_cfg(cfg_path("yolov3"))).eval()
    batch = calibration_batch(Contract(256, 256), synthetic_images(2, 256, 256, seed=1))
    h = health(model, batch)
    assert h["objectness_in_range"] < 0.5 or h["finite"] == 0.0, h


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
    assert 0.3 <= gammas.min() and gammas.max() <= 1.0 and np.std(gammas) > 0.1
