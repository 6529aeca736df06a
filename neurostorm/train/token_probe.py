"""Probes over a frozen encoder's tokens: an attentive probe and an MLP, trained on cached tokens.

The frozen encoder runs once per split up to ``probe_stage`` (its tokens before the stage's merging, cached
in RUN_DIR/tokens-stage<s>.npz); each clip is then a set of L = positions × frames tokens of width C. A head
is trained on the training clips for each learning rate and weight decay of a small grid, checked on the
validation subjects every quarter of its steps, and the head with the best validation score (the checkpoint
score of full fine-tuning) predicts the test clips. Tokens are standardised per channel on the training
clips first: a frozen encoder's channels differ in scale by orders of magnitude.

- ``attention``: learned queries cross-attend over the clip's tokens (multi-head attention on layer-normed
  tokens), then a layer norm and a linear output — the attentive probe of V-JEPA and Brain-JEPA;
- ``mlp``: the mean token through a layer norm, one hidden layer (GELU) and a linear output.

The ``linear`` probe (``mode=probe`` as before) reads the mean token of the stage with a regularised linear
model instead (:mod:`neurostorm.train.probe`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from neurostorm.evaluation.scores import subject_metrics
from neurostorm.evaluation.target import Target
from neurostorm.train.modules import checkpoint_score, label_loss

LEARNING_RATES = (1e-3, 1e-2)
WEIGHT_DECAYS = (1e-4, 1e-1)


class AttentiveProbe(nn.Module):
    """Tokens (B, L, C) → outputs (B, K): ``queries`` learned queries attend over the tokens."""

    def __init__(self, dim: int, outputs: int, queries: int = 1, heads: int = 4) -> None:
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.norm_tokens = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(1, queries, dim) * 0.02)
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, outputs)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keys = self.norm_tokens(tokens)
        pooled, _ = self.attend(self.queries.expand(len(tokens), -1, -1), keys, keys)  # (B, queries, C)
        return self.out(self.norm_out(pooled.mean(1)))


class MLPProbe(nn.Module):
    """Tokens (B, L, C) → outputs (B, K) from their mean: layer norm, a hidden layer, a linear output."""

    def __init__(self, dim: int, outputs: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, outputs))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens.mean(1))


HEADS = {"attention": AttentiveProbe, "mlp": MLPProbe}


@dataclass
class FittedProbe:
    head: nn.Module
    centre: torch.Tensor  # (C,) per-channel mean of the training tokens
    scale: torch.Tensor  # (C,) their standard deviation
    target_mean: float
    target_std: float
    learning_rate: float
    weight_decay: float
    step: int

    @torch.no_grad()
    def outputs(self, tokens: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, L, C) tokens → (N, K) logits, or values in the label's units."""
        self.head.eval()
        out = [self.head((torch.from_numpy(tokens[i:i + batch]).float() - self.centre) / self.scale)
               for i in range(0, len(tokens), batch)]
        return (torch.cat(out) * self.target_std + self.target_mean).numpy()


def fit_token_probe(kind: str, train: dict[str, np.ndarray], val: dict[str, np.ndarray], target: Target,
                    n_classes: int,
                    steps: int = 400, batch_size: int = 64, seed: int = 0,
                    learning_rates: tuple[float, ...] = LEARNING_RATES,
                    weight_decays: tuple[float, ...] = WEIGHT_DECAYS) -> FittedProbe:
    """Train a ``kind`` head (``attention`` or ``mlp``) on the training clips' tokens with AdamW for each
    learning rate × weight decay, ``steps`` minibatch steps each; return the head, grid point and step with
    the best validation score (validation subjects only; the test split is not read here). ``train`` and
    ``val``: tokens ``output`` (N, L, C) with ``subject`` and ``y`` (N,) per clip."""
    tokens = torch.from_numpy(train["output"]).float()  # (N, L, C)
    centre, scale = tokens.mean(dim=(0, 1)), tokens.std(dim=(0, 1)) + 1e-6
    tokens = (tokens - centre) / scale
    outputs = 1 if target.values or n_classes == 2 else n_classes
    mean, std = (float(train["y"].mean()), float(train["y"].std() or 1.0)) if target.values else (0.0, 1.0)
    y = torch.as_tensor((train["y"] - mean) / std if target.values else train["y"])
    checks = {max(1, steps * k // 4) for k in range(1, 5)}
    best: tuple[float, FittedProbe] | None = None
    for lr, decay in itertools.product(learning_rates, weight_decays):
        torch.manual_seed(seed)
        head = HEADS[kind](tokens.shape[2], outputs)
        optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=decay)
        order = torch.Generator().manual_seed(seed)
        for step in range(1, steps + 1):
            head.train()
            rows = torch.randint(0, len(tokens), (min(batch_size, len(tokens)),), generator=order)
            loss = label_loss(head(tokens[rows]), y[rows], target.values)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step in checks:
                fitted = FittedProbe(head, centre, scale, mean, std, lr, decay, step)
                score = checkpoint_score(target, subject_metrics(target, n_classes, val["subject"],
                                                                 fitted.outputs(val["output"]), val["y"]))
                if best is None or score > best[0]:
                    best = (score, dataclasses.replace(fitted, head=copy.deepcopy(head).eval()))
    assert best is not None
    return best[1]
