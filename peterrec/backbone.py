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

from peterrec.config import BackboneConfig


class BlockAdapter(Protocol):
    """What a task may change inside one residual block."""

    def conv(self, which: int, conv_in: torch.Tensor, conv_out: torch.Tensor) -> torch.Tensor: ...

    def norm2(self, h: torch.Tensor, layer_norm: nn.LayerNorm) -> torch.Tensor: ...


def taps(x: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """(B, L, C) -> (B, L, k*C) whose column block i holds x[:, t + offsets[i]] (zero outside 0..L-1):
    the k shifted copies a dilated convolution multiplies, written once, side by side."""
    b, length, c = x.shape
    out = x.new_empty(b, length, len(offsets), c)  # (B, L, k, C)
    for i, o in enumerate(offsets):
        lo, hi = min(max(0, -o), length), max(min(length, length - o), 0)  # rows t with 0 <= t + o < L
        if lo < hi:
            out[:, lo:hi, i].copy_(x[:, lo + o:hi + o])
        for zeros in (slice(0, lo), slice(max(lo, hi), length)):  # fill_ with a number: the fast path
            if zeros.start < zeros.stop:
                out[:, zeros, i].fill_(0.0)
    return out.view(b, length, -1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of x runs in: autocast's where it is on for x's device, else x's own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _live_taps(weight: torch.Tensor, live: list[int]) -> torch.Tensor:
    """The (C_out, C_in, k) weight's taps at indices `live` (the weight itself when all are)."""
    return weight if len(live) == weight.shape[2] else weight[:, :, live]


class DilatedConvFunction(torch.autograd.Function):
    """y[t] = sum_i W_i x[t + o_i] + b over channel-last (B, L, C), as one matmul over the k taps.

    Its gradient has the same form with the taps mirrored (dx[u] = sum_i W_i^T dy[u - o_i]), so both
    directions build their taps once and run one matmul. Through autograd, padding, slicing and
    concatenating cost a zero-filled padded tensor per tap in backward, plus their sum: more time than
    the matmuls at C <= 256. Under autocast the taps are built and multiplied in its dtype; the
    weight's gradient (fine-tuned or pretrained backbones only) is returned in the weight's dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, offsets):
        dtype = compute_dtype(x)
        c_out, c_in, _ = weight.shape
        # Taps that reach past either end of the sequence read only zeros: skipped, with their weights
        # (a short sequence through a wide dilation; a tap that stays at t itself needs no copy at all).
        live = [i for i, o in enumerate(offsets) if -x.shape[1] < o < x.shape[1]]
        live_offsets = [offsets[i] for i in live]
        ctx.live, ctx.offsets, ctx.dtype, ctx.x_dtype = live, live_offsets, dtype, x.dtype
        x = x.to(dtype)
        x_taps = x if live_offsets == [0] else taps(x, live_offsets)  # (B, L, k_live*C_in)
        w = _live_taps(weight, live).to(dtype).permute(0, 2, 1).reshape(c_out, len(live) * c_in)  # W_live side by side
        y = F.linear(x_taps, w, None if bias is None else bias.to(dtype))  # (B, L, C_out)
        ctx.save_for_backward(weight, x_taps if ctx.needs_input_grad[1] else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, x_taps = ctx.saved_tensors
        c_out, c_in, k = weight.shape
        live, n = ctx.live, len(ctx.live)
        dy = dy.to(ctx.dtype).contiguous()  # (B, L, C_out)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            w = _live_taps(weight, live).to(ctx.dtype).permute(2, 0, 1).reshape(n * c_out, c_in)  # W_live stacked
            dy_taps = dy if ctx.offsets == [0] else taps(dy, [-o for o in ctx.offsets])
            dx = (dy_taps @ w).to(ctx.x_dtype)  # (B, L, C_in)
        if ctx.needs_input_grad[1]:
            dw_live = dy.reshape(-1, c_out).t() @ x_taps.reshape(-1, n * c_in)  # (C_out, k_live*C_in)
            dw_live = dw_live.view(c_out, n, c_in).permute(0, 2, 1).to(weight.dtype)  # (C_out, C_in, k_live)
            dw = dw_live if n == k else weight.new_zeros(weight.shape)
            if n < k:  # the skipped taps read only zeros: their gradient is zero
                dw[:, :, live] = dw_live
        if ctx.needs_input_grad[2]:
            db = dy.sum((0, 1), dtype=torch.float32).to(weight.dtype)
        return dx, dw, db, None


class DilatedConv(nn.Module):
    """1-D dilated convolution over (B, L, C); causal pads left only, non-causal pads both sides.

    Computed channel-last by DilatedConvFunction: no (B, L, C) <-> (B, C, L) transposes, which cost
    more than the convolution itself at these widths, and no per-tap autograd copies. The weights stay
    an nn.Conv1d's, so checkpoints are unchanged."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        span = (kernel_size - 1) * dilation
        self.padding = (span, 0) if causal else (span // 2, span - span // 2)
        self.offsets = [i * dilation - self.padding[0] for i in range(kernel_size)]  # x[t + o] feeds y[t]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DilatedConvFunction.apply(x, self.conv.weight, self.conv.bias, self.offsets)  # (B, L, C)


class ResidualBlock(nn.Module):
    """conv(d) -> LN -> ReLU -> conv(2d) -> LN -> ReLU, added to the input."""

    def __init__(self, config: BackboneConfig, dilation: int):
        super().__init__()
        c, k = config.channels, config.kernel_size
        self.conv1 = DilatedConv(c, k, dilation, config.causal)
        self.ln1 = nn.LayerNorm(c)
        self.conv2 = DilatedConv(c, k, 2 * dilation, config.causal)
        self.ln2 = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor, adapter: BlockAdapter | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """keep (B, L, 1): 1 at real positions, 0 at padding, whose states are then held at zero (what
        the second conv reads there, and the block's output)."""
        h = self.conv1(x)  # (B, L, C)
        if adapter is not None:
            h = adapter.conv(0, x, h)
        h = F.relu(self.ln1(h), inplace=True)  # in place: LayerNorm keeps its input, not its output
        if keep is not None:
            h = h * keep
        h2 = self.conv2(h)
        if adapter is not None:
            h2 = adapter.norm2(adapter.conv(1, h, h2), self.ln2)
        else:
            h2 = self.ln2(h2)
        out = x + F.relu(h2, inplace=True)
        return out if keep is None else out * keep


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
        """items (B, L) int64; adapters: None or an object with .block(i) -> BlockAdapter.

        With config.mask_padding the padding positions stay zero after every block: they then act as the
        convolution's own zero padding, so a real position's state does not depend on the padding."""
        x = self.embedding(items)  # (B, L, C); the padding row is zero
        embed = getattr(adapters, "embed", None)
        if embed is not None:  # a task's embedding patch (patches.EmbeddingPatch)
            x = embed(items, x)
        keep = (items != self.config.pad_id).unsqueeze(-1).to(x.dtype) if self.config.mask_padding else None
        if keep is not None and embed is not None:  # whatever a patch did to the padding row, it stays zero
            x = x * keep
        for i, block in enumerate(self.blocks):
            x = block(x, None if adapters is None else adapters.block(i), keep)
        return x

    def trimmed(self, items: torch.Tensor) -> torch.Tensor:
        """items without their leading all-padding columns where that changes nothing (mask_padding), else
        as they are: what every caller runs before a forward, to save those columns' work."""
        return trim_padding(items, self.config.pad_id) if self.config.mask_padding else items


def limit_items(items: torch.Tensor, input_len: int, pad_id: int = 0) -> torch.Tensor:
    """A left-padded batch with only each row's latest `input_len` items kept (the rest set to padding,
    same width); 0 keeps everything. With mask_padding this is exactly the shorter input."""
    if not input_len or input_len >= items.shape[1]:
        return items
    items = items.clone()
    items[:, :-input_len] = pad_id
    return items


def trim_padding(items: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """A left-padded batch without its leading columns that are padding in every row (at least one column
    kept). Exact for a backbone with mask_padding; it saves the work of those columns."""
    real = (items != pad_id).any(dim=0)
    first = int(real.to(torch.int8).argmax()) if bool(real.any()) else items.shape[1] - 1
    return items[:, first:] if first else items


def user_representation(hidden: torch.Tensor, causal: bool, how: str = "auto", items: torch.Tensor | None = None,
                        pad_id: int = 0, attention=None) -> torch.Tensor:
    """One vector per user from hidden states (B, L, C) of a left-padded sequence (peterrec.pooling);
    items (B, L) tell the real positions apart from padding (None: every position counts)."""
    from peterrec.pooling import pool

    mask = None if items is None else items != pad_id
    return pool(hidden, mask, how, causal, attention)
