"""Self-supervised pretraining objectives over the backbone's hidden states."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peterrec.backbone import Backbone


class ItemSoftmax(nn.Module):
    """Output layer over the source catalogue, used only during pretraining."""

    def __init__(self, channels: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(channels, vocab_size)

    def full_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden (N, C), targets (N,) -> mean cross-entropy over the whole catalogue."""
        return F.cross_entropy(self.linear(hidden), targets)

    def sampled_loss(self, hidden: torch.Tensor, targets: torch.Tensor, samples: int, generator=None):
        """Sampled softmax: the true item against `samples` uniform negatives shared by the batch.
        With a uniform proposal the log-Q correction is a constant and cancels."""
        vocab = self.linear.out_features
        negatives = torch.randint(1, vocab, (samples,), device=targets.device, generator=generator)
        w, b = self.linear.weight, self.linear.bias
        pos = (hidden * w[targets]).sum(-1) + b[targets]  # (N,)
        neg = hidden @ w[negatives].T + b[negatives]  # (N, S)
        neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([pos[:, None], neg], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(targets))


class NextItemObjective(nn.Module):
    """Causal pretraining: predict item t+1 from positions <= t (NextItNet)."""

    def __init__(self, backbone: Backbone, sampled_softmax: int = 0):
        super().__init__()
        self.backbone = backbone
        self.output = ItemSoftmax(backbone.config.channels, backbone.config.vocab_size)
        self.sampled_softmax = sampled_softmax

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (B, L+1) left-padded -> mean loss over real next items."""
        items = self.backbone.trimmed(items)
        hidden = self.backbone(items[:, :-1])  # (B, L, C)
        targets = items[:, 1:]
        keep = targets != self.backbone.config.pad_id
        h, t = hidden[keep], targets[keep]  # (N, C), (N,)
        if self.sampled_softmax:
            return self.output.sampled_loss(h, t, self.sampled_softmax)
        return self.output.full_loss(h, t)


class ClozeObjective(nn.Module):
    """Non-causal pretraining (GRec encoder): mask a share of items and predict them."""

    def __init__(self, backbone: Backbone, mask_prob: float = 0.3, sampled_softmax: int = 0):
        super().__init__()
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask_prob must lie in (0, 1) (got {mask_prob})")
        self.backbone = backbone
        self.output = ItemSoftmax(backbone.config.channels, backbone.config.vocab_size)
        self.mask_prob = mask_prob
        self.sampled_softmax = sampled_softmax

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        cfg = self.backbone.config
        items = self.backbone.trimmed(items)
        real = items != cfg.pad_id
        masked = real & (torch.rand(items.shape, device=items.device) < self.mask_prob)
        # Every sequence masks at least its last item so that no batch is empty of targets.
        masked[:, -1] |= real[:, -1]
        hidden = self.backbone(items.masked_fill(masked, cfg.mask_id))  # (B, L, C)
        h, t = hidden[masked], items[masked]
        if self.sampled_softmax:
            return self.output.sampled_loss(h, t, self.sampled_softmax)
        return self.output.full_loss(h, t)


def make_objective(backbone: Backbone, sampled_softmax: int = 0) -> nn.Module:
    if backbone.config.causal:
        return NextItemObjective(backbone, sampled_softmax)
    return ClozeObjective(backbone, sampled_softmax=sampled_softmax)
