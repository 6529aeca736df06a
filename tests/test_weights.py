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
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
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
    # settings of the encoder that touch no weight can be overridden on a pretraining folder too
    changed = load_encoder(tmp_path / "mae", backend="reference", voxel_zscore=True)
    assert changed.config.backend == "reference" and changed.config.voxel_zscore
    assert torch.equal(changed.patch_embed.fc.weight, encoder.patch_embed.fc.weight)
    with pytest.raises(ValueError, match="unknown encoder settings"):
        load_encoder(tmp_path / "mae", no_such_setting=1)
    add_prompts(encoder, 3)
    save_pretrained(encoder, tmp_path / "prompted")
    again = load_pretrained(tmp_path / "prompted")
    assert torch.equal(again.layers[0].blocks[1].prompt, encoder.layers[0].blocks[1].prompt)


def test_an_encoder_taken_out_of_pretraining_drops_no_tokens_in_training_mode(tmp_path):
    """STRD regularises pretraining only: the encoder of a STORM folder (which pretrains with it) has it off,
    so a fine-tuning step sees the clip as evaluation does, unless a setting turns it back on."""
    storm = build_model("neurostorm-mae-tiny", **SMALL)
    assert all(b.use_strd for s in storm.encoder.layers for b in s.blocks)
    save_pretrained(storm, tmp_path / "mae")
    encoder = load_encoder(tmp_path / "mae")
    assert not encoder.config.strd and not any(b.use_strd for s in encoder.layers for b in s.blocks)
    x = torch.randn(2, 1, 48, 48, 48, 8)
    with torch.no_grad():
        assert torch.equal(encoder.train().encode(x), encoder.eval().encode(x))
    assert load_encoder(tmp_path / "mae", strd=True).config.strd
    save_pretrained(encoder, tmp_path / "encoder")  # an adapted encoder is saved as it trained
    assert not json.loads((tmp_path / "encoder" / "config.json").read_text())["config"]["strd"]


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


def reference_block(block, x, window):
    """One encoder block written out window by window (time fastest inside a window), as the reference
    computes it: x + Mamba over each (shifted) window of LN(x), then x + MLP(LN(x))."""
    grid = x.shape[1:5]
    shift = tuple(w // 2 if block.shifted and g > w else 0 for g, w in zip(grid, window, strict=True))
    y = torch.roll(block.norm1(x), shifts=tuple(-s for s in shift), dims=(1, 2, 3, 4))
    out = torch.zeros_like(y)
    b, c = x.shape[0], x.shape[-1]
    wd, wh, ww, wt = window
    for d in range(0, grid[0], wd):
        for h in range(0, grid[1], wh):
            for w in range(0, grid[2], ww):
                for t in range(0, grid[3], wt):
                    sequence = y[:, d:d + wd, h:h + wh, w:w + ww, t:t + wt].reshape(b, -1, c)
                    out[:, d:d + wd, h:h + wh, w:w + ww, t:t + wt] = block.mamba(sequence).reshape(b, wd, wh, ww, wt, c)
    x = x + torch.roll(out, shifts=shift, dims=(1, 2, 3, 4))
    return x + block.mlp(block.norm2(x))


def test_first_stage_window_of_two_matches_a_window_by_window_computation():
    torch.manual_seed(0)
    model = build_model("neurostorm-tiny", **SMALL, first_window=(2, 2, 2, 2)).eval()
    assert [b.window for b in model.layers[0].blocks] == [(2, 2, 2, 2)] * 2
    assert model.layers[1].blocks[0].window == (4, 4, 4, 4)
    x = torch.randn(2, 1, 48, 48, 48, 8)
    with torch.no_grad():
        tokens = model.pos_embeds[0](model.embed(x))
        ours = tokens
        for block in model.layers[0].blocks:
            ours = block(ours)
        expected = tokens
        for block in model.layers[0].blocks:
            expected = reference_block(block, expected, (2, 2, 2, 2))
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
        # the same weights under the 4⁴ first window compute another function: a window size must be read
        other = build_model("neurostorm-tiny", **SMALL)
        other.load_state_dict(model.state_dict())
        assert (other.eval().encode(x) - model.encode(x)).abs().max() > 1e-3


def reference_checkpoint(tmp_path, source, **hparams):
    """A reference Lightning checkpoint of ``model`` with the reference's argparse hyper-parameters."""
    c = (source.encoder if hasattr(source, "encoder") else source).config
    settings = {"model": "neurostorm", "img_size": [*c.img_size, c.frames], "in_chans": 1,
                "patch_size": [*c.patch_size, 1], "embed_dim": c.embed_dim, "depths": list(c.depths),
                "window_size": list(c.window), "first_window_size": list(c.first_window), "c_multiplier": 2,
                "last_layer_full_MSA": c.full_last_stage, "use_prompt_tuning": False, "prompt_len": 0,
                "use_mae": hasattr(source, "encoder"), "mask_ratio": 0.5, "use_strd": False,
                "num_heads": [3, 6, 12, 24], **hparams}
    path = tmp_path / "reference.ckpt"
    torch.save({"state_dict": reference_state_dict(source), "hyper_parameters": settings}, path)
    return path


def test_a_reference_checkpoint_with_the_2x2x2x2_first_window_is_built_as_trained(tmp_path):
    from neurostorm import from_pretrained

    torch.manual_seed(2)
    source = build_model("neurostorm-tiny", **SMALL, first_window=(2, 2, 2, 2)).eval()
    path = reference_checkpoint(tmp_path, source)
    loaded = from_pretrained(path).eval()
    assert loaded.config.first_window == (2, 2, 2, 2) and loaded.config.img_size == (48, 48, 48)
    x = torch.randn(1, 1, 48, 48, 48, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), source.encode(x))
    # loading the same file by name into a model with the other window is refused, naming the setting
    with pytest.raises(InputError, match=r"first_window_size \[2, 2, 2, 2\] ≠ first_window \(4, 4, 4, 4\)"):
        load_official_checkpoint(path, build_model("neurostorm-tiny", **SMALL))
    with pytest.raises(InputError, match="window_size"):  # an override that contradicts the checkpoint
        from_pretrained(path, window=(2, 2, 2, 2))


def test_a_released_mae_checkpoint_gives_the_pretraining_model(tmp_path):
    from neurostorm import from_pretrained
    from neurostorm.models import STORM

    torch.manual_seed(3)
    source = build_model("neurostorm-mae-tiny", **SMALL)
    path = reference_checkpoint(tmp_path, source, model="swin4d_mae", spatial_mask="window", mask_ratio=0.7)
    loaded = from_pretrained(path)
    assert isinstance(loaded, STORM) and loaded.config.mask_ratio == 0.7 and loaded.config.mask_mode == "window"
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize(("hparams", "message"), [
    ({"model": "swin4d_ver7"}, "model 'swin4d_ver7', not NeuroSTORM"),
    ({"embed_dim": 12}, "does not fit"),  # hyper-parameters of another size than the tensors
    ({"patch_size": [6, 6, 6, 2]}, "time patch of 2 frames"),
    ({"c_multiplier": 3}, "c_multiplier 3"),
])
def test_a_checkpoint_of_another_architecture_is_refused_naming_the_problem(tmp_path, hparams, message):
    from neurostorm import from_pretrained

    path = reference_checkpoint(tmp_path, build_model("neurostorm-tiny", **SMALL), **hparams)
    with pytest.raises(InputError, match=message) as refused:
        from_pretrained(path)
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


def test_hub_ids_load_offline_from_the_cache_and_fail_in_one_line_without_it(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from neurostorm import from_pretrained

    torch.manual_seed(4)
    model = build_model("neurostorm-tiny", **SMALL).eval()
    snapshot = tmp_path / "hub" / "models--lab--storm-tiny" / "snapshots" / ("a" * 40)
    save_pretrained(model, snapshot)  # the Hub cache's layout: refs/<revision> → snapshots/<commit>
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    x = torch.randn(1, 1, 48, 48, 48, 8)
    with torch.no_grad():
        assert torch.equal(from_pretrained("lab/storm-tiny").eval().encode(x), model.encode(x))
        assert torch.equal(from_pretrained("lab/storm-tiny@main").eval().encode(x), model.encode(x))
    with pytest.raises(InputError, match="lab/absent: not in the local Hub cache") as refused:
        from_pretrained("lab/absent")
    assert "\n" not in str(refused.value)
    with pytest.raises(InputError, match="not a Hub id"):
        from_pretrained(tmp_path / "no" / "such" / "folder")


def test_saved_folders_carry_a_model_card_and_push_fails_cleanly_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = build_model("neurostorm-tiny", **SMALL)
    preprocessing = {"grid": {"name": "mni152-fsl-4mm-48", "shape": [48, 48, 48]},
                     "params": {"tr": 0.8, "normalization": "zscore", "storage": "int8"}}
    with pytest.raises(InputError, match="lab/storm: upload to the Hub failed"):
        save_pretrained(model, tmp_path / "w", preprocessing=preprocessing, training={"runs": 12, "subjects": 6},
                        push_to_hub=True, repo_id="lab/storm")
    card = (tmp_path / "w" / "README.md").read_text()  # the folder is complete before any upload
    assert "mni152-fsl-4mm-48" in card and "normalization: zscore" in card and "runs: 12" in card
    assert '"first_window"' in card
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["README.md", "config.json", "model.safetensors"]
