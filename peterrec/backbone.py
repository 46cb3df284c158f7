"""NextItNet-style dilated CNN: causal (NextItNet) or non-causal (GRec encoder).

The backbone is shared and frozen across tasks, so it never holds task state itself: a block takes an
optional per-task *adapter* (see patches.py) that may rewrite each conv's output and the second
LayerNorm. Tensors are (B, L, C) throughout.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from peterrec.config import REPRESENTATIONS, BackboneConfig


class BlockAdapter(Protocol):
    """What a task may change inside one residual block."""

    def conv(self, which: int, conv_in: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor: ...

    def norm2(self, h: torch.Tensor, layer_norm: nn.LayerNorm) -> torch.Tensor: ...


class DilatedConv(nn.Module):
    """1-D dilated convolution over (B, L, C); causal pads left only, non-causal pads both sides.

    Computed channel-last as one matmul over the k shifted copies of the input side by side
    (B, L, k*C) @ (k*C, C): no (B, L, C) <-> (B, C, L) transposes, which cost more than the
    convolution itself at these widths (1.05-1.3x faster steps on CPU, benchmarks/bench_fused.py).
    The weights stay an nn.Conv1d's, so checkpoints are unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        span = (kernel_size - 1) * dilation
        self.padding = (span, 0) if causal else (span // 2, span - span // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, (k,), (d,) = x.shape[1], self.conv.kernel_size, self.conv.dilation
        padded = F.pad(x, (0, 0, *self.padding))  # (B, L + span, C)
        shifted = torch.cat([padded[:, i * d:i * d + length] for i in range(k)], dim=-1)  # (B, L, k*C)
        weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, -1)  # (C_out, k*C_in)
        return F.linear(shifted, weight, self.conv.bias)  # (B, L, C)


class ResidualBlock(nn.Module):
    """conv(d) -> LN -> ReLU -> conv(2d) -> LN -> ReLU, added to the input."""

    def __init__(self, config: BackboneConfig, dilation: int):
        super().__init__()
        c, k = config.channels, config.kernel_size
        self.conv1 = DilatedConv(c, k, dilation, config.causal)
        self.ln1 = nn.LayerNorm(c)
        self.conv2 = DilatedConv(c, k, 2 * dilation, config.causal)
        self.ln2 = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor, adapter: BlockAdapter | None = None) -> torch.Tensor:
        h = self.conv1(x)  # (B, L, C)
        if adapter is not None:
            h = adapter.conv(0, x, h)
        h = F.relu(self.ln1(h))
        h2 = self.conv2(h)
        if adapter is not None:
            h2 = adapter.norm2(adapter.conv(1, h, h2), self.ln2)
        else:
            h2 = self.ln2(h2)
        return x + F.relu(h2)


class Backbone(nn.Module):
    """Item embedding + a stack of residual blocks; returns hidden states (B, L, C)."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        # One extra row for the [MASK] token of cloze pretraining.
        self.embedding = nn.Embedding(config.vocab_size + 1, config.channels, padding_idx=config.pad_id)
        self.blocks = nn.ModuleList(ResidualBlock(config, d) for d in config.dilations)
        nn.init.normal_(self.embedding.weight, std=config.channels**-0.5)
        with torch.no_grad():
            self.embedding.weight[config.pad_id].zero_()

    def forward(self, items: torch.Tensor, adapters=None) -> torch.Tensor:
        """items (B, L) int64; adapters: None or an object with .block(i) -> BlockAdapter."""
        x = self.embedding(items)  # (B, L, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if adapters is None else adapters.block(i))
        return x


def user_representation(hidden: torch.Tensor, causal: bool, how: str = "auto") -> torch.Tensor:
    """One vector per user from hidden states (B, L, C) of a left-padded sequence.

    auto: the last position for a causal backbone (it has seen the whole sequence), the sum of the
    first and last positions for a non-causal one (as the paper's reference code does).
    """
    if how == "auto":
        how = "last" if causal else "first_last"
    if how == "last":
        return hidden[:, -1]
    if how == "first_last":
        return hidden[:, 0] + hidden[:, -1]
    if how == "mean":
        return hidden.mean(dim=1)
    raise ValueError(f"unknown user representation {how!r} (expected one of {', '.join(REPRESENTATIONS)})")
