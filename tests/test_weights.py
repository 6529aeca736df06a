"""Weights: safetensors folders, reference Lightning checkpoints by name, and refusal of unsafe pickles."""

import json
import os
import pickle
import sys
import types

import pytest
import torch

from neurostorm import InputError, build_model
from neurostorm.models.prompts import add_prompts
from neurostorm.models.weights import (
    load_encoder,
    load_official_checkpoint,
    load_pretrained,
    read_checkpoint,
    save_pretrained,
)

SMALL = {"img_size": (48, 48, 48), "patch_size": (6, 6, 6), "embed_dim": 8, "frames": 8}


def reference_state_dict(model):
    """Our weights under the reference implementation's names and layouts (what its .ckpt files hold)."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith(".pos_embed"):  # (D, H, W, C) → (1, C, D, H, W, 1)
            value = value.permute(3, 0, 1, 2)[None, ..., None]
        elif key.endswith(".time_embed"):  # (T, C) → (1, C, 1, 1, 1, T)
            value = value.T[None, :, None, None, None, :]
        elif key.endswith(".prompt"):
            value = value[None]
        key = key.removeprefix("encoder.").removeprefix("decoder.")
        state["model." + key] = value.clone()
    return state


def test_safetensors_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("neurostorm-tiny", **SMALL).eval()
    folder = save_pretrained(model, tmp_path / "weights", preprocessing={"grid": "MNI152_FSL_2mm_96", "tr": 0.8})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "NeuroSTORM" and config["preprocessing"]["tr"] == 0.8
    loaded = load_pretrained(folder).eval()
    x = torch.randn(1, 1, 48, 48, 48, 8)
    with torch.no_grad():
        assert torch.equal(model.encode(x), loaded.encode(x))


def test_encoder_comes_out_of_a_pretraining_folder_and_prompts_survive(tmp_path):
    storm = build_model("neurostorm-mae-tiny", **SMALL)
    save_pretrained(storm, tmp_path / "mae")
    encoder = load_encoder(tmp_path / "mae")
    assert torch.equal(encoder.patch_embed.fc.weight, storm.encoder.patch_embed.fc.weight)
    add_prompts(encoder, 3)
    save_pretrained(encoder, tmp_path / "prompted")
    again = load_pretrained(tmp_path / "prompted")
    assert torch.equal(again.layers[0].blocks[1].prompt, encoder.layers[0].blocks[1].prompt)


def test_damaged_weights_are_reported_with_the_file(tmp_path):
    save_pretrained(build_model("neurostorm-tiny", **SMALL), tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(InputError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(tmp_path / "w")


@pytest.mark.parametrize("name", ["neurostorm-tiny", "neurostorm-mae-tiny"])
def test_reference_checkpoint_loads_by_name(tmp_path, monkeypatch, name):
    torch.manual_seed(1)
    source = build_model(name, **SMALL)
    add_prompts(source.encoder if hasattr(source, "encoder") else source, 2)
    state = reference_state_dict(source)
    state["model.output_head.fc.weight"] = torch.zeros(1, 64)  # a task head we do not have
    # a Lightning checkpoint carries hyper-parameters in Lightning's AttributeDict
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = parsing.__name__, "AttributeDict"
    parsing.AttributeDict = AttributeDict
    packages = {name: types.ModuleType(name) for name in ("pytorch_lightning", "pytorch_lightning.utilities")}
    packages[parsing.__name__] = parsing
    for module_name, module in packages.items():
        monkeypatch.setitem(sys.modules, module_name, module)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": AttributeDict(lr=5e-5)}, path)
    for module_name in packages:  # loading must not need Lightning 1.x installed
        monkeypatch.delitem(sys.modules, module_name)

    target = build_model(name, **SMALL)
    add_prompts(target.encoder if hasattr(target, "encoder") else target, 2)
    report = load_official_checkpoint(path, target)
    assert report.unexpected == ["model.output_head.fc.weight"] and report.missing == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_with_other_sizes_is_an_error(tmp_path):
    state = reference_state_dict(build_model("neurostorm-tiny", **SMALL))
    torch.save({"state_dict": state}, tmp_path / "a.ckpt")
    with pytest.raises(InputError, match="other model sizes"):
        load_official_checkpoint(tmp_path / "a.ckpt", build_model("neurostorm-tiny", **{**SMALL, "embed_dim": 12}))


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def test_a_pickle_carrying_code_is_refused_and_never_runs(tmp_path):
    Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "x": Payload()}, f, protocol=2)
    with pytest.raises(InputError, match="evil.ckpt: refused") as refused:
        read_checkpoint(path)
    assert not Payload.marker.exists()
    assert "could run code" in str(refused.value)
    assert "weights_only=False" not in str(refused.value)  # never advise the unsafe retry
    with pytest.raises(InputError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_the_weights_functions_are_exported_where_users_look():
    import neurostorm
    import neurostorm.models
    from neurostorm.models import weights

    for name in ("save_pretrained", "load_pretrained", "load_encoder", "load_official_checkpoint"):
        assert getattr(neurostorm, name) is getattr(neurostorm.models, name) is getattr(weights, name)
