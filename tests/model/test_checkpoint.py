"""Native safetensors checkpoints and reference-repo .pt state dicts."""
import pickle

import pytest
import torch

from edgeyolo.errors import WeightsError
from edgeyolo.fileio import sha256_file
from edgeyolo.model.checkpoint import (
    Provenance,
    checkpoint_cfg,
    load_model,
    read_checkpoint,
    reference_key_map,
    save_checkpoint,
)
from tests.conftest import cfg_path


def test_safetensors_carries_cfg_and_provenance(tiny_weights, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    out = save_checkpoint(model, tmp_path / "m.safetensors", Provenance(sha256_file(tiny_weights), "edgeyolo x"))
    _, meta = read_checkpoint(out)
    assert meta["edgeyolo.source_sha256"] == sha256_file(tiny_weights)
    assert meta["edgeyolo.command"] == "edgeyolo x" and meta["edgeyolo.version"]
    assert checkpoint_cfg(out).layers == model.cfg.layers
    again = load_model(None, out)  # the cfg comes from the checkpoint itself
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])


def test_safetensors_refuses_the_wrong_cfg(tiny_weights, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    out = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="does not match the cfg"):
        load_model(cfg_path("edgeyolo-res"), out)


def test_reference_pt_loads_through_key_map(tiny_weights, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    ref_state = {}
    for key, value in model.state_dict().items():
        ref_state["module." + key.replace(".conv.", ".Conv2d.").replace(".bn.", ".BatchNorm2d.")] = value.clone()
    path = tmp_path / "last.pt"
    torch.save({"epoch": 3, "best_fitness": 0.5, "model": ref_state}, path)
    again = load_model(cfg_path("yolov3-tiny"), path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert reference_key_map("module_list.7.BatchNorm2d.running_var") == "module_list.7.bn.running_var"
    assert reference_key_map("yolo.anchors") is None


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_reference_pt_never_unpickles_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": {}, "payload": _Evil()}, fh)
    with pytest.raises(WeightsError, match="weights_only"):
        load_model(cfg_path("yolov3-tiny"), path)
    assert not (tmp_path / "PWNED").exists()
