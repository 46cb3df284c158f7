"""The fine-tuning modes: the one registry every other module reads (no torch here, so `--help` is fast).

A mode says where a task's backbone comes from and what the task trains on top of it; how that is
wired into a model lives in task_model.py (one function per kind of training, UNFREEZE there).
Adding a mode is one entry below (and, for a new kind of training, one function in task_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass

BACKBONES = {
    "shared": "the frozen pretrained backbone, held once and shared by every task",
    "copy": "a copy of the pretrained backbone of its own, partly or wholly trained",
    "random": "a frozen, randomly initialised backbone of its own (never pretrained)",
}
TRAINS = {
    "head": "the task head only",
    "patches": "model patches in every residual block (+ each block's second LayerNorm) and the head",
    "last_blocks": "the last k residual blocks (finelast_blocks) and the head",
    "all": "every parameter and the head",
}


@dataclass(frozen=True)
class Mode:
    name: str
    label: str  # as the paper's tables name it
    help: str  # one line for --help, the TUI and the docs
    backbone: str  # a key of BACKBONES
    trains: str  # a key of TRAINS

    def __post_init__(self):
        if self.backbone not in BACKBONES or self.trains not in TRAINS:
            raise ValueError(f"mode {self.name!r}: backbone must be one of {list(BACKBONES)} and trains one of "
                             f"{list(TRAINS)} (got {self.backbone!r}, {self.trains!r})")

    @property
    def patched(self) -> bool:
        """Whether the task trains model patches (PatchConfig applies)."""
        return self.trains == "patches"

    @property
    def shares_backbone(self) -> bool:
        """Whether the task runs over the one shared backbone object: such tasks can train in one fused
        pass (peterrec.fused) and are stored as a patch set only."""
        return self.backbone == "shared"

    @property
    def needs_shared_backbone(self) -> bool:
        """Whether the task reads the shared pretrained backbone when it runs: over it, or from its frozen
        part (finelast); not with a whole backbone of its own (a trained copy of all of it, or random)."""
        return self.backbone == "shared" or (self.backbone == "copy" and self.trains != "all")

    @property
    def stores_backbone(self) -> bool:
        """Whether its bundle entry holds a whole backbone of its own besides what it trains."""
        return self.backbone == "random"


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("peterrec", "PeterRec", "patches in every block + head over the shared frozen backbone", "shared", "patches"),
    Mode("finecls", "FineCLS", "the head only, over the shared frozen backbone", "shared", "head"),
    Mode("finelast", "FineLast", "a trained copy of the last k blocks + head", "copy", "last_blocks"),
    Mode("fineall", "FineAll", "a trained copy of the whole backbone + head (one full model per task)", "copy", "all"),
    Mode("peterzero", "PeterZero", "PeterRec's patches over a random, never pretrained backbone", "random", "patches"),
)}
MODE_NAMES = tuple(MODES)
PATCHED_MODES = tuple(m.name for m in MODES.values() if m.patched)
PACKABLE_MODES = tuple(m.name for m in MODES.values() if m.shares_backbone)


def get_mode(name: str) -> Mode:
    """The Mode called `name` (ValueError listing the known ones otherwise)."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r} (expected one of {', '.join(MODES)})")
    return MODES[name]


def modes_help() -> str:
    """One line per mode, for --help texts."""
    return "; ".join(f"{m.name}: {m.help}" for m in MODES.values())
