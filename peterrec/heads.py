"""Task heads on top of the user representation (B, C)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierHead(nn.Module):
    """Profile tasks (gender, age bracket, ...): logits over the label set, cross-entropy."""

    kind = "classify"

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        return self.linear(rep)  # (B, num_classes)

    def loss(self, rep: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        return F.cross_entropy(self(rep), labels)

    def scores(self, rep: torch.Tensor) -> torch.Tensor:
        return self(rep)


class ColdRecHead(nn.Module):
    """Cold-start recommendation: a target-platform item table of its own, scored by dot product,
    trained with binary cross-entropy against sampled negatives."""

    kind = "coldrec"

    def __init__(self, channels: int, target_vocab: int, negatives: int = 20):
        super().__init__()
        self.target_vocab = target_vocab
        self.negatives = negatives
        self.items = nn.Embedding(target_vocab, channels)
        self.bias = nn.Parameter(torch.zeros(target_vocab))
        nn.init.normal_(self.items.weight, std=channels**-0.5)

    def score_items(self, rep: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """rep (B, C), items (B, N) -> scores (B, N)."""
        return torch.einsum("bc,bnc->bn", rep, self.items(items)) + self.bias[items]

    def scores(self, rep: torch.Tensor) -> torch.Tensor:
        return rep @ self.items.weight.T + self.bias  # (B, target_vocab)

    def loss(self, rep: torch.Tensor, labels: torch.Tensor, generator=None) -> torch.Tensor:
        b = labels.shape[0]
        negatives = torch.randint(
            0, self.target_vocab, (b, self.negatives), device=labels.device, generator=generator
        )
        scores = self.score_items(rep, torch.cat([labels[:, None], negatives], dim=1))  # (B, 1+N)
        targets = torch.zeros_like(scores)
        targets[:, 0] = 1.0
        # A negative that happens to be the positive is not counted against it.
        weight = torch.ones_like(scores)
        weight[:, 1:] = (negatives != labels[:, None]).to(scores.dtype)
        return F.binary_cross_entropy_with_logits(scores, targets, weight=weight, reduction="sum") / weight.sum()


def make_head(kind: str, channels: int, num_outputs: int) -> nn.Module:
    if kind == "classify":
        return ClassifierHead(channels, num_outputs)
    if kind == "coldrec":
        return ColdRecHead(channels, num_outputs)
    raise ValueError(f"unknown task kind {kind!r} (expected 'classify' or 'coldrec')")
