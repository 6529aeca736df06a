"""LoRA (Hu et al., 2022): low-rank updates of chosen linear layers; the rest of the encoder stays frozen.

A wrapped layer computes y = W x + (α / r) · B A x with W frozen, A (r, in) Kaiming-initialised and B (out, r)
zero, so training starts from the pretrained function. By default the Mamba layers' input and output
projections are adapted (``in_proj``, ``out_proj``: the encoder's largest matrices). ``merge_lora`` folds
B A into W, giving back plain ``nn.Linear`` layers that compute the same function: an adapted encoder is
saved and loaded as an ordinary one. A small implementation rather than ``peft``: the math is three lines,
and the merged export keeps our safetensors folders free of adapter formats.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from neurostorm.models.prompts import TrainableReport


class LoRALinear(nn.Module):
    """``base`` (frozen) plus a rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T.to(x.dtype)) @ self.lora_b.T.to(x.dtype) * self.scale

    def merged(self) -> nn.Linear:
        """A plain linear layer with W + (α / r) B A: the same function."""
        layer = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                          device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer


def _replace(model: nn.Module, wanted, make) -> int:
    """Replace every submodule ``child`` with ``make(child)`` where ``wanted(name, child)``; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if wanted(name, child):
                setattr(parent, name, make(child))
                count += 1
    return count


def lora_tuning(encoder: nn.Module, head: nn.Module, rank: int = 8, alpha: float = 16.0,
                targets: tuple[str, ...] = ("in_proj", "out_proj")) -> TrainableReport:
    """Wrap the linear layers named in ``targets``, freeze the encoder but the adapters, keep the head
    trainable; report the parameter counts."""
    wrapped = _replace(encoder, lambda name, child: name in targets and isinstance(child, nn.Linear),
                       lambda child: LoRALinear(child, rank, alpha))
    if wrapped == 0:
        raise ValueError(f"no linear layer named {', '.join(targets)} in {type(encoder).__name__}")
    for name, p in encoder.named_parameters():
        p.requires_grad_(name.endswith(("lora_a", "lora_b")))
    for p in head.parameters():
        p.requires_grad_(True)
    adapters = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    params = [*encoder.parameters(), *head.parameters()]
    return TrainableReport(trainable=sum(p.numel() for p in params if p.requires_grad),
                           total=sum(p.numel() for p in params), prompts=adapters,
                           encoder=sum(p.numel() for p in encoder.parameters()) - adapters, added="LoRA adapters")


def merge_lora(encoder: nn.Module) -> int:
    """Fold every LoRA update into its layer, in place; returns how many layers were merged."""
    return _replace(encoder, lambda name, child: isinstance(child, LoRALinear), lambda child: child.merged())
