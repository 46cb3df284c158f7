"""Model patches: small bottleneck modules grafted into a frozen backbone, one set per task.

A patch computes W_up(GELU(W_down(x))) per position. Serial insertion adds it to each dilated conv's
output (h + patch(h)); parallel insertion reads the conv's input instead (h + patch(x)). Each residual
block gets two patches, and optionally its own trainable copy of the block's second LayerNorm.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from peterrec.backbone import Backbone
from peterrec.config import PatchConfig


class Patch(nn.Module):
    """Bottleneck C -> width -> C. With cardinality g the width is split into g branches whose
    outputs are summed; per position (1x1) that sum is one matmul over the concatenated branches,
    so the branches are computed together."""

    def __init__(self, channels: int, config: PatchConfig):
        super().__init__()
        width = config.width(channels)
        self.down = nn.Linear(channels, width)
        self.up = nn.Linear(width, channels)
        nn.init.xavier_normal_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        # Near identity: the patch starts as a tiny perturbation of the pretrained function.
        nn.init.normal_(self.up.weight, std=config.init_std)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))  # (B, L, C)


# What a patch reads, per insertion kind (config.INSERTIONS): the conv's output (serial) or its input
# (parallel). The patch's output is always added to the conv's output.
PATCH_INPUT = {
    "serial": lambda conv_in, conv_out: conv_out,
    "parallel": lambda conv_in, conv_out: conv_in,
}


class BlockPatches(nn.Module):
    """The two patches (and optional LayerNorm2) of one residual block; a BlockAdapter."""

    def __init__(self, channels: int, config: PatchConfig, layer_norm2: nn.LayerNorm):
        super().__init__()
        self.read = PATCH_INPUT[config.insertion]
        self.patch1 = Patch(channels, config)
        self.patch2 = Patch(channels, config)
        self.ln2 = copy.deepcopy(layer_norm2) if config.train_layernorm2 else None
        if self.ln2 is not None:
            self.ln2.requires_grad_(True)

    def conv(self, which: int, conv_in: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor:
        patch = self.patch1 if which == 0 else self.patch2
        return conv_out + patch(self.read(conv_in, conv_out))

    def norm2(self, h: torch.Tensor, layer_norm: nn.LayerNorm) -> torch.Tensor:
        return (self.ln2 or layer_norm)(h)


class EmbeddingPatch(nn.Module):
    """A task's low-rank change of the frozen item embedding: A[item] @ B (A: vocab x r, B: r x C), added to
    E[item]. A starts at zero, so a fresh patch leaves the pretrained model as it is; padding stays zero."""

    def __init__(self, vocab: int, channels: int, rank: int, pad_id: int):
        super().__init__()
        self.a = nn.Embedding(vocab, rank, padding_idx=pad_id)
        nn.init.zeros_(self.a.weight)
        self.b = nn.Parameter(torch.randn(rank, channels) / rank ** 0.5)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.a(items) @ self.b.to(self.a.weight.dtype)  # (B, L, C)


class TaskPatches(nn.Module):
    """All patches of one task, one BlockPatches per residual block of the backbone, and optionally an
    EmbeddingPatch (PatchConfig.embedding_rank)."""

    def __init__(self, backbone: Backbone, config: PatchConfig):
        super().__init__()
        self.config = config
        cfg = backbone.config
        self.blocks = nn.ModuleList(BlockPatches(cfg.channels, config, b.ln2) for b in backbone.blocks)
        self.embedding = (EmbeddingPatch(cfg.vocab_size + 1, cfg.channels, config.embedding_rank, cfg.pad_id)
                          if config.embedding_rank else None)

    def block(self, i: int) -> BlockPatches:
        return self.blocks[i]

    def embed(self, items: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The item embeddings x (B, L, C) of items (B, L), with this task's embedding patch added."""
        return x if self.embedding is None else x + self.embedding(items).to(x.dtype)
