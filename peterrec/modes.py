"""Fine-tuning modes: which parts of a task model are trained, and which are shared and frozen.

- peterrec:  patches (+ LayerNorm2 copies) + head over the shared, frozen pretrained backbone
- finecls:   head only, over the shared frozen backbone
- finelast:  own copy of the last k residual blocks + head
- fineall:   own copy of the whole backbone + head (one full model per task)
- peterzero: peterrec over a randomly initialised (never pretrained) frozen backbone
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from peterrec.backbone import Backbone, user_representation
from peterrec.config import MODES, PATCHED_MODES, PatchConfig
from peterrec.heads import make_head
from peterrec.patches import TaskPatches



class TaskModel(nn.Module):
    """A backbone (shared or owned), optional task patches and a task head."""

    def __init__(self, backbone: Backbone, head: nn.Module, patches: TaskPatches | None, mode: str,
                 representation: str = "auto"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.patches = patches
        self.mode = mode
        self.representation = representation

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items (B, L) -> user representation (B, C)."""
        hidden = self.backbone(items, self.patches)
        return user_representation(hidden, self.backbone.config.causal, self.representation)

    def loss(self, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self(items), labels)

    def scores(self, items: torch.Tensor) -> torch.Tensor:
        """Class logits (classify) or scores over the whole target vocabulary (coldrec)."""
        return self.head.scores(self(items))

    def task_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything this task needs beyond the shared pretrained backbone."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if self.mode == "peterzero":  # its random backbone is not the shared one
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


def build_task_model(backbone: Backbone, kind: str, num_outputs: int, mode: str = "peterrec",
                     patch_config: PatchConfig | None = None, finelast_blocks: int = 1,
                     representation: str = "auto", seed: int = 0) -> TaskModel:
    """Wire a task model around `backbone` for `mode`; the shared backbone is never modified."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    torch.manual_seed(seed)  # patch and head initialisation are repeatable
    if mode in ("fineall", "finelast"):
        backbone = copy.deepcopy(backbone)  # these baselines train their own copy
    elif mode == "peterzero":
        backbone = Backbone(backbone.config).to(next(backbone.parameters()).device)
    backbone.requires_grad_(False)
    if mode == "fineall":
        backbone.requires_grad_(True)
    elif mode == "finelast":
        if not 1 <= finelast_blocks <= len(backbone.blocks):
            raise ValueError(f"finelast_blocks must lie in 1..{len(backbone.blocks)} (got {finelast_blocks})")
        for block in backbone.blocks[-finelast_blocks:]:
            block.requires_grad_(True)
    device = next(backbone.parameters()).device
    patches = None
    if mode in PATCHED_MODES:
        patches = TaskPatches(backbone, patch_config or PatchConfig()).to(device)
    head = make_head(kind, backbone.config.channels, num_outputs).to(device)
    # Only the new parts move: the backbone is already there (walking it costs more than the rest).
    return TaskModel(backbone, head, patches, mode, representation)
