"""A task model: a backbone (shared or its own), optional task patches and a task head, wired for a mode.

The modes themselves are the registry in modes.py; here is how each kind of backbone and each kind of
training (UNFREEZE) is set up. The shared backbone is never modified.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from peterrec.backbone import Backbone, limit_items
from peterrec.config import PatchConfig, resolve_representation
from peterrec.heads import make_head
from peterrec.modes import get_mode
from peterrec.patches import TaskPatches
from peterrec.pooling import make_pool, pool


class TaskModel(nn.Module):
    """A backbone (shared or owned), optional task patches, a pooling (learned for 'attention') and a
    task head."""

    def __init__(self, backbone: Backbone, head: nn.Module, patches: TaskPatches | None, mode: str,
                 representation: str = "last", pooling: nn.Module | None = None, input_len: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patches = patches
        self.mode = mode
        self.representation = representation  # resolved: never 'auto' (bundles record this name)
        self.pooling = pooling
        self.input_len = input_len  # the latest items it reads (0: all the backbone's max_len)

    def represent(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, L, C) hidden states of items (B, L) -> user representation (B, C)."""
        cfg = self.backbone.config
        return pool(hidden, items != cfg.pad_id, self.representation, cfg.causal, self.pooling)

    def forward(self, items: torch.Tensor, run_backbone=None) -> torch.Tensor:
        """items (B, L) -> user representation (B, C). run_backbone(backbone, items, patches): how the
        backbone runs (peterrec.compiled); default: eagerly."""
        items = self.backbone.trimmed(limit_items(items, self.input_len, self.backbone.config.pad_id))
        hidden = self.backbone(items, self.patches) if run_backbone is None else \
            run_backbone(self.backbone, items, self.patches)
        return self.represent(hidden, items)

    def loss(self, items: torch.Tensor, labels: torch.Tensor, run_backbone=None) -> torch.Tensor:
        return self.head.loss(self(items, run_backbone), labels)

    def scores(self, items: torch.Tensor) -> torch.Tensor:
        """Class logits (classify) or scores over the whole target vocabulary (coldrec)."""
        return self.head.scores(self(items))

    def task_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything this task needs beyond the shared pretrained backbone."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if get_mode(self.mode).stores_backbone:  # its random backbone is not the shared one
            names |= {f"backbone.{n}" for n, _ in self.backbone.named_parameters()}
        return {n: t.detach() for n, t in self.state_dict().items() if n in names}

    def load_task_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.task_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise KeyError(f"task state does not fit mode {self.mode!r}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        with torch.no_grad():
            current = self.state_dict()
            for name, tensor in state.items():
                if current[name].shape != tensor.shape:
                    raise ValueError(f"task tensor {name}: shape {tuple(tensor.shape)}, expected "
                                     f"{tuple(current[name].shape)}")
                current[name].copy_(tensor)


def _unfreeze_last_blocks(backbone: Backbone, finelast_blocks: int) -> None:
    if not 1 <= finelast_blocks <= len(backbone.blocks):
        raise ValueError(f"finelast_blocks must lie in 1..{len(backbone.blocks)} (got {finelast_blocks})")
    for block in backbone.blocks[-finelast_blocks:]:
        block.requires_grad_(True)


def _unfreeze_all(backbone: Backbone, finelast_blocks: int) -> None:
    backbone.requires_grad_(True)


# What each kind of training (modes.TRAINS) unfreezes in the task's backbone; head and patches always train.
UNFREEZE = {"head": None, "patches": None, "last_blocks": _unfreeze_last_blocks, "all": _unfreeze_all}


def task_backbone(backbone: Backbone, kind: str) -> Backbone:
    """The backbone a task of this backbone kind (modes.BACKBONES) runs over, frozen."""
    if kind == "copy":  # these baselines train their own copy
        backbone = copy.deepcopy(backbone)
    elif kind == "random":
        backbone = Backbone(backbone.config).to(next(backbone.parameters()).device)
    return backbone.requires_grad_(False)


def build_task_model(backbone: Backbone, kind: str, num_outputs: int, mode: str = "peterrec",
                     patch_config: PatchConfig | None = None, finelast_blocks: int = 1,
                     representation: str = "auto", seed: int = 0, input_len: int = 0) -> TaskModel:
    """Wire a task model around `backbone` for `mode`; the shared backbone is never modified."""
    spec = get_mode(mode)
    torch.manual_seed(seed)  # patch and head initialisation are repeatable
    if spec.shares_backbone:
        backbone.requires_grad_(False)
    else:
        backbone = task_backbone(backbone, spec.backbone)
    if UNFREEZE[spec.trains] is not None:
        UNFREEZE[spec.trains](backbone, finelast_blocks)
    device = next(backbone.parameters()).device
    patches = TaskPatches(backbone, patch_config or PatchConfig()).to(device) if spec.patched else None
    head = make_head(kind, backbone.config.channels, num_outputs).to(device)
    representation = resolve_representation(representation, kind, backbone.config.causal)
    pooling = make_pool(representation, backbone.config.channels)
    # Only the new parts move: the backbone is already there (walking it costs more than the rest).
    return TaskModel(backbone, head, patches, mode, representation,
                     None if pooling is None else pooling.to(device), input_len)


class _SkipValueOps(TorchFunctionMode):
    """Skips initialisers and other in-place value ops. On the meta device they would only waste time
    (their python meta kernels import torch._dynamo, seconds on first use); shapes stay exact."""

    OPS = {"normal_", "uniform_", "zero_", "zeros_", "ones_", "fill_", "copy_", "mul_", "add_", "div_", "sub_",
           "clamp_", "erfinv_", "random_", "bernoulli_", "exponential_", "constant_", "orthogonal_",
           "xavier_normal_", "xavier_uniform_", "kaiming_normal_", "kaiming_uniform_", "trunc_normal_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.OPS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextmanager
def shapes_only():
    """Build task models with their shapes only (the meta device, initialisers skipped): a 100-task budget
    or a bundle's expected tensors cost no memory and need no backbone weights."""
    with torch.device("meta"), _SkipValueOps():
        yield
