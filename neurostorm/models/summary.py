"""A readable summary of a model: input shape, parameters in total and per stage, window layout."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from neurostorm.models.baselines.fc_linear import FCLinear
from neurostorm.models.baselines.swift import SwiFT
from neurostorm.models.encoder import NeuroSTORM, count_parameters
from neurostorm.models.mamba import describe_scan_backends
from neurostorm.models.storm import STORM
from neurostorm.models.windows import WindowLayout


def load_any(name_or_folder: str) -> nn.Module | FCLinear:
    """A registered model name, or a folder written by ``save_pretrained``."""
    if Path(name_or_folder).is_dir():
        from neurostorm.models.weights import load_pretrained

        return load_pretrained(name_or_folder)
    from neurostorm.models import build_model

    return build_model(name_or_folder)


def encoder_lines(encoder: NeuroSTORM) -> list[str]:
    c = encoder.config
    lines = [f"input (B, {c.in_chans}, {', '.join(map(str, c.img_size))}, T): T up to {c.frames} frames, "
             f"a multiple of {c.frame_multiple}",
             f"encoder parameters {count_parameters(encoder):,}  (embedding (B, {c.out_dim}))"]
    counts = encoder.stage_parameter_counts()
    lines.append(f"  {'patch_embed':<12}{counts['patch_embed']:>12,}  {c.patch_size[0]}×{c.patch_size[1]}×"
                 f"{c.patch_size[2]}×1 voxels → {c.embed_dim} channels")
    for i, (stage, grid, dim) in enumerate(zip(encoder.layers, c.stage_grids(), c.stage_dims(), strict=True)):
        block = stage.blocks[0]
        layout = WindowLayout.for_grid(grid, block.window, shifted=len(stage.blocks) > 1 and stage.blocks[1].shifted)
        lines.append(f"  {f'stage{i + 1}':<12}{counts[f'stage{i + 1}']:>12,}  grid {'×'.join(map(str, grid))}, "
                     f"width {dim}, {len(stage.blocks)} blocks, {layout.n_windows} windows of "
                     f"{layout.tokens_per_window} tokens, shift {layout.shift}")
    if c.prompt_tokens:
        lines.append(f"  prompts: {c.prompt_tokens} per block")
    if c.voxel_zscore:
        lines.append("  input: each voxel z-scored over the clip's frames (voxel_zscore)")
    return lines


def describe(model: nn.Module | FCLinear) -> list[str]:
    """Lines describing a model of the registry: input shape and parameter counts."""
    if isinstance(model, FCLinear):
        return ["FC + linear (a scikit-learn model, no network): input (B, R, R) Fisher-z FC; features its "
                "R(R−1)/2 upper-triangle entries, standardised; logistic regression or ridge, regularisation by "
                "subject-grouped inner CV",
                "parameters R(R−1)/2 + 1 per output, known once fitted (34,717 per output at Power-264)"]
    if isinstance(model, STORM):
        decoder = count_parameters(model.decoder)
        return [f"STORM pretraining model: {count_parameters(model):,} parameters "
                f"(encoder {count_parameters(model.encoder):,}, mask tokens {model.window_mask_token.numel():,}, "
                f"decoder {decoder:,}); mask {model.config.mask_mode} at ratio {model.config.mask_ratio}",
                *encoder_lines(model.encoder), describe_scan_backends()]
    if isinstance(model, SwiFT):  # a NeuroSTORM subclass with attention in place of the scan
        return [f"SwiFT encoder (window attention, heads {'/'.join(map(str, model.config.heads))})",
                *encoder_lines(model)]
    if isinstance(model, NeuroSTORM):
        return ["NeuroSTORM encoder", *encoder_lines(model), describe_scan_backends()]
    config = getattr(model, "config", None)
    n_rois = getattr(config, "n_rois", None)
    shape = f"; input (B, {n_rois}, {n_rois}) FC (sized to the atlas by data.atlas)" if n_rois else ""
    settings = [f"  {k} {v}" for k, v in config.to_dict().items() if k != "n_rois"] if config is not None else []
    return [f"{type(model).__name__}: {count_parameters(model):,} parameters{shape}", *settings]
