"""Task-specific prompt tuning (TPT): learned prompt tokens per block; the backbone stays frozen.

Every block owns P prompt tokens (P, C), prepended to each window's sequence before its Mamba layer and
dropped from its output. The scan is causal, so the prompts act as a learned initial state of every
window. Only prompts and the task head are trained: 1,656 parameters per prompt token on the base
encoder (82,800 at P = 50, 1.6 % of the encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from neurostorm.models.encoder import NeuroSTORM, WindowBlock


@dataclass(frozen=True)
class TrainableReport:
    trainable: int  # parameters that receive gradients (added ones + head)
    total: int  # all parameters of encoder + head
    prompts: int  # parameters added to the encoder: prompt tokens, or LoRA adapters
    encoder: int  # encoder parameters without the added ones
    added: str = "prompts"

    def __str__(self) -> str:
        share = 100 * self.trainable / self.total
        return (f"trainable {self.trainable:,} of {self.total:,} parameters ({share:.2f} %); "
                f"{self.added} {self.prompts:,} = {100 * self.prompts / self.encoder:.2f} % of the encoder")


def add_prompts(encoder: NeuroSTORM, tokens: int = 50) -> None:
    """Give every block ``tokens`` prompt tokens (trunc-normal 0.02); existing prompts of that length are kept."""
    if tokens < 1:
        raise ValueError(f"prompt tuning needs at least one prompt token, got {tokens}")
    for block in encoder.modules():
        if isinstance(block, WindowBlock) and (block.prompt is None or block.prompt.shape[0] != tokens):
            dim = block.norm1.normalized_shape[0]
            ref = block.norm1.weight
            block.prompt = nn.Parameter(torch.empty(tokens, dim, device=ref.device, dtype=ref.dtype))
            nn.init.trunc_normal_(block.prompt, std=0.02)
    encoder.config.prompt_tokens = tokens


def prompt_tuning(encoder: NeuroSTORM, head: nn.Module, tokens: int = 50) -> TrainableReport:
    """Add prompts, freeze everything of the encoder but them, keep the head trainable; report the counts."""
    add_prompts(encoder, tokens)
    prompt_ids = {id(b.prompt) for b in encoder.modules() if isinstance(b, WindowBlock)}
    for p in encoder.parameters():
        p.requires_grad_(id(p) in prompt_ids)
    for p in head.parameters():
        p.requires_grad_(True)
    params = [*encoder.parameters(), *head.parameters()]
    prompts = sum(p.numel() for p in encoder.parameters() if id(p) in prompt_ids)
    return TrainableReport(trainable=sum(p.numel() for p in params if p.requires_grad),
                           total=sum(p.numel() for p in params), prompts=prompts,
                           encoder=sum(p.numel() for p in encoder.parameters()) - prompts)
