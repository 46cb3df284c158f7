"""The grid of the paper's comparison: methods (a mode and its patch insertion), tasks, seeds, and the one
documented set of settings (ReproduceConfig), as cells that become the tasks of an orchestrated job."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from peterrec.config import DEFAULT_ITEM_INIT, ITEM_INITS
from peterrec.modes import MODES

ARCHS = ("noncausal", "causal")  # the paper's Table 3 is the non-causal one: it comes first


@dataclass(frozen=True)
class Method:
    """One row of Table 3: a fine-tuning mode and its patch insertion."""

    name: str  # grid id, part of the cell name
    label: str  # table row
    mode: str  # a key of peterrec.modes.MODES
    insertion: str = "serial"
    embedding_rank: int = 0  # PatchConfig.embedding_rank: a low-rank patch of the item embedding too


METHODS = (
    Method("finecls", MODES["finecls"].label, "finecls"),
    Method("finelast", MODES["finelast"].label, "finelast"),
    Method("fineall", MODES["fineall"].label, "fineall"),
    Method("peterrec_serial", f"{MODES['peterrec'].label} (serial)", "peterrec", "serial"),
    Method("peterrec_parallel", f"{MODES['peterrec'].label} (parallel)", "peterrec", "parallel"),
    Method("peterzero", MODES["peterzero"].label, "peterzero", "serial"),
    # Not the paper's: PeterRec with a rank-4 embedding patch (issue 14's findings); opt-in (--methods)
    Method("peterrec_emb", f"{MODES['peterrec'].label} + embedding patch (r=4)", "peterrec", "serial", 4),
)
DEFAULT_METHODS = tuple(m.name for m in METHODS if m.name != "peterrec_emb")  # the paper's grid


@dataclass(frozen=True)
class GridTask:
    """One column of Table 3: an imported MovieLens task."""

    name: str  # the task's name in the imported data directory
    label: str  # table column


GRID_TASKS = (GridTask("coldrec", "ColdRec MRR@5"), GridTask("gender", "Gender acc"), GridTask("age", "Age acc"))

# Fine-tuning learning rate per method, chosen on the validation split by
# `reproduce --select-lr 3e-4,1e-3,3e-3,1e-2` (docs/RESULTS.md, "Settings"); the rule is mechanical
# (reproduce/report.py, select_lrs), so a near tie is settled by validation noise, not by judgement.
REPRODUCE_LR = {
    "finecls": 3e-3,
    "finelast": 1e-3,
    "fineall": 1e-2,
    "peterrec_serial": 3e-3,
    "peterrec_parallel": 3e-3,
    "peterzero": 1e-3,
    "peterrec_emb": 3e-3,  # PeterRec's (not selected on its own)
}


@dataclass(frozen=True)
class ReproduceConfig:
    """Everything that shapes a reproduction besides the data: backbone, pretraining, fine-tuning, grid."""

    seeds: int = 1  # fine-tuning seeds per cell and fold (initialisation, shuffling, sampled negatives)
    # user-level K-fold (tasks.folds): every labelled user is tested once; each fold validates on its own
    # valid_fraction of the users
    folds: int = 5
    fold_seed: int = 0
    fold_valid_fraction: float = 0.1
    methods: tuple[str, ...] = DEFAULT_METHODS
    tasks: tuple[str, ...] = tuple(t.name for t in GRID_TASKS)
    archs: tuple[str, ...] = ARCHS
    # backbone: kernel 3 at C = 64, dilations 1,4,16,64 (sees 511 items back); max_len 200 covers 94% of
    # ML-100K's ratings (issue 14's findings: longer histories carry the profile signal; docs/RESULTS.md)
    channels: int = 64
    dilations: tuple[int, ...] = (1, 4, 16, 64)
    max_len: int = 200
    coldrec_input_len: int = 50  # cold start reads the latest items only (recency; chosen on validation)
    # pretraining (reference code: Adam, lr 1e-3, batch 32); the best validation-loss epoch is kept
    pretrain_epochs: int = 40  # a cap: stops once the validation loss has not improved for `patience` epochs
    pretrain_patience: int = 5
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    pretrain_valid_fraction: float = 0.05
    pretrain_seed: int = 0
    pretrain_windows: bool = True  # every max_len window of a sequence is an example, not only the latest
    item_init: str = DEFAULT_ITEM_INIT  # how the item embedding starts (peterrec.item_init.ITEM_INITS)
    # fine-tuning: epochs are a cap, the best validation epoch is kept
    epochs_classify: int = 8
    epochs_coldrec: int = 20
    batch_size: int = 32
    max_steps: int | None = None
    lr: dict = field(default_factory=lambda: dict(REPRODUCE_LR))
    eval_negatives: int = 99  # the paper's protocol: the true item among 100 candidates
    import_seed: int = 0  # MovieLens catalogue and user split

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "archs", tuple(self.archs))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        problems = []
        known = {m.name for m in METHODS}
        if self.seeds < 1:
            problems.append(f"seeds must be >= 1 (got {self.seeds})")
        if self.folds < 2:
            problems.append(f"folds must be >= 2 (got {self.folds})")
        if not 0 < self.fold_valid_fraction < 1 - 1 / max(self.folds, 2):
            problems.append(f"fold_valid_fraction must lie in (0, {1 - 1 / max(self.folds, 2):.2f}) "
                            f"(got {self.fold_valid_fraction})")
        if not self.tasks:  # names: MovieLens' (GRID_TASKS) or a data directory's, checked against its spec
            problems.append("tasks must not be empty")
        if self.item_init not in ITEM_INITS:
            problems.append(f"item_init must be one of {', '.join(ITEM_INITS)} (got {self.item_init!r})")
        for what, values, allowed in (("methods", self.methods, known), ("archs", self.archs, set(ARCHS))):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                problems.append(f"{what} must be a non-empty subset of {sorted(allowed)} (got {list(values)})")
        missing = sorted(known.intersection(self.methods) - set(self.lr))
        if missing:
            problems.append(f"no learning rate for method(s) {missing}")
        for name, value in (("pretrain_epochs", self.pretrain_epochs), ("epochs_classify", self.epochs_classify),
                            ("epochs_coldrec", self.epochs_coldrec), ("batch_size", self.batch_size),
                            ("pretrain_batch", self.pretrain_batch), ("max_len", self.max_len)):
            if value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if problems:
            raise ValueError("invalid ReproduceConfig: " + "; ".join(problems))

    @classmethod
    def quick(cls, **changes) -> "ReproduceConfig":
        """The smoke variant: the whole grid shape (every method, task and architecture, one seed) on
        a tiny backbone with a few steps each; it shows the pipeline works, not the paper's ordering."""
        small = dict(seeds=1, folds=2, channels=16, dilations=(1, 4), max_len=20, coldrec_input_len=10,
                     pretrain_epochs=1, pretrain_batch=64, epochs_classify=1, epochs_coldrec=1, max_steps=4)
        return cls(**{**small, **changes})

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("methods", "tasks", "archs", "dilations"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReproduceConfig":
        return cls(**{"item_init": "random", **d})  # reproductions recorded before the setting existed


@dataclass(frozen=True)
class Cell:
    """One grid cell: a task of a fold fine-tuned by a method with a seed (and, in a selection, a learning
    rate)."""

    task: str
    method: Method
    seed: int
    lr: float
    fold: int = 0

    def name(self, tag_lr: bool = False) -> str:
        lr = f"__lr{self.lr:g}" if tag_lr else ""
        return f"{self.task}__{self.method.name}{lr}__s{self.seed}__f{self.fold}"

    def overrides(self, config: ReproduceConfig, kind: str) -> dict:
        epochs = config.epochs_coldrec if kind == "coldrec" else config.epochs_classify
        out = {"mode": self.method.mode, "insertion": self.method.insertion, "seed": self.seed, "lr": self.lr,
               "epochs": epochs, "batch_size": config.batch_size}
        if self.method.embedding_rank:
            out["embedding_rank"] = self.method.embedding_rank
        if kind == "coldrec" and config.coldrec_input_len < config.max_len:
            out["input_len"] = config.coldrec_input_len
        if config.max_steps:
            out["max_steps"] = config.max_steps
        return out


def method(name: str) -> Method:
    return next(m for m in METHODS if m.name == name)


def grid_cells(config: ReproduceConfig, lrs: list[float] | None = None, folds: int | None = None) -> list[Cell]:
    """The grid (every fold; one with `folds=1`, as a learning-rate selection runs on fold 0), costliest
    cells first (cold-start has 3x the rows; FineAll trains the most), so that the last tasks of a job are
    short ones and the cores do not idle at its end."""
    cost_task = {"coldrec": 0, "age": 1, "gender": 2}
    cost_method = {"fineall": 0, "finelast": 1, "peterrec_emb": 2, "peterrec_parallel": 2, "peterrec_serial": 3,
                   "peterzero": 4, "finecls": 5}
    cells = [Cell(task, method(m), seed, lr, fold)
             for task in config.tasks for m in config.methods for seed in range(config.seeds)
             for lr in (lrs or [config.lr[m]]) for fold in range(config.folds if folds is None else folds)]
    return sorted(cells, key=lambda c: (cost_task.get(c.task, 9), cost_method[c.method.name], c.lr, c.seed,
                                        c.fold))
