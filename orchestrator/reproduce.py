"""The paper's comparison (Table 3) on MovieLens, as one pipeline: import -> pretrain -> grid -> report.

    OUT/data/                  the imported MovieLens data directory (never part of the repository)
    OUT/backbones/<arch>/      one pretrained checkpoint per architecture (noncausal, causal)
    OUT/grid/<arch>.toml       the grid as a task spec: one [[task]] per cell, its settings as overrides
    OUT/jobs/<arch>/           one orchestrated fine-tuning job per backbone (results.parquet + bundle)
    OUT/results.parquet        every cell of both jobs, with arch, task, method, seed, valid and test metric
    OUT/results.md             Table 3 per architecture (orchestrator/report.py), OUT/tradeoff.png

A job holds one backbone, so the two architectures are two jobs, run one after the other on the same
Ray session; the two pretrainings run side by side as two Ray tasks of that session first.

Settings: one set per method (ReproduceConfig, REPRODUCE_LR), chosen on the VALIDATION split with
`--select-lr` (its report shows validation metrics only); the table reports the TEST split. Each run
keeps the weights of its best validation epoch (training.TrainConfig.keep_best).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

ARCHS = ("noncausal", "causal")  # the paper's Table 3 is the non-causal one: it comes first


@dataclass(frozen=True)
class Method:
    """One row of Table 3: a fine-tuning mode and its patch insertion."""

    name: str  # grid id, part of the cell name
    label: str  # table row
    mode: str  # peterrec.modes.MODES
    insertion: str = "serial"


METHODS = (
    Method("finecls", "FineCLS", "finecls"),
    Method("finelast", "FineLast", "finelast"),
    Method("fineall", "FineAll", "fineall"),
    Method("peterrec_serial", "PeterRec (serial)", "peterrec", "serial"),
    Method("peterrec_parallel", "PeterRec (parallel)", "peterrec", "parallel"),
    Method("peterzero", "PeterZero", "peterzero", "serial"),
)


@dataclass(frozen=True)
class GridTask:
    """One column of Table 3: an imported MovieLens task."""

    name: str  # the task's name in the imported data directory
    label: str  # table column


GRID_TASKS = (GridTask("coldrec", "ColdRec MRR@5"), GridTask("gender", "Gender acc"), GridTask("age", "Age acc"))

# Fine-tuning learning rate per method, chosen on the validation split by
# `reproduce --select-lr 3e-4,1e-3,3e-3,1e-2` (docs/RESULTS.md, "Settings"); the rule is mechanical
# (orchestrator/report.py, select_lrs), so a near tie is settled by validation noise, not by judgement.
REPRODUCE_LR = {
    "finecls": 3e-3,
    "finelast": 1e-3,
    "fineall": 1e-2,
    "peterrec_serial": 3e-3,
    "peterrec_parallel": 3e-3,
    "peterzero": 1e-3,
}


@dataclass(frozen=True)
class ReproduceConfig:
    """Everything that shapes a reproduction besides the data: backbone, pretraining, fine-tuning, grid."""

    seeds: int = 3  # fine-tuning seeds per cell (initialisation, shuffling, sampled negatives)
    methods: tuple[str, ...] = tuple(m.name for m in METHODS)
    tasks: tuple[str, ...] = tuple(t.name for t in GRID_TASKS)
    archs: tuple[str, ...] = ARCHS
    # backbone: the reference code's block (kernel 3, dilations [1,4] repeated) at C = 64; two repeats
    # already see 60 positions back, more than max_len
    channels: int = 64
    dilations: tuple[int, ...] = (1, 4, 1, 4)
    max_len: int = 50
    # pretraining (reference code: Adam, lr 1e-3, batch 32); the best validation-loss epoch is kept
    pretrain_epochs: int = 40  # a cap: stops once the validation loss has not improved for `patience` epochs
    pretrain_patience: int = 5
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    pretrain_valid_fraction: float = 0.05
    pretrain_seed: int = 0
    pretrain_windows: bool = True  # every max_len window of a sequence is an example, not only the latest
    # fine-tuning: epochs are a cap, the best validation epoch is kept
    epochs_classify: int = 15
    epochs_coldrec: int = 20
    batch_size: int = 64
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
        for what, values, allowed in (("methods", self.methods, known),
                                      ("tasks", self.tasks, {t.name for t in GRID_TASKS}),
                                      ("archs", self.archs, set(ARCHS))):
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
        small = dict(seeds=1, channels=16, dilations=(1, 4), max_len=20, pretrain_epochs=1, pretrain_batch=64,
                     epochs_classify=1, epochs_coldrec=1, max_steps=4)
        return cls(**{**small, **changes})

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("methods", "tasks", "archs", "dilations"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReproduceConfig":
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    """One grid cell: a task fine-tuned by a method with a seed (and, in a selection, a learning rate)."""

    task: str
    method: Method
    seed: int
    lr: float

    def name(self, tag_lr: bool = False) -> str:
        lr = f"__lr{self.lr:g}" if tag_lr else ""
        return f"{self.task}__{self.method.name}{lr}__s{self.seed}"

    def overrides(self, config: ReproduceConfig, kind: str) -> dict:
        epochs = config.epochs_coldrec if kind == "coldrec" else config.epochs_classify
        out = {"mode": self.method.mode, "insertion": self.method.insertion, "seed": self.seed, "lr": self.lr,
               "epochs": epochs, "batch_size": config.batch_size}
        if config.max_steps:
            out["max_steps"] = config.max_steps
        return out


def method(name: str) -> Method:
    return next(m for m in METHODS if m.name == name)


def grid_cells(config: ReproduceConfig, lrs: list[float] | None = None) -> list[Cell]:
    """The grid, costliest cells first (cold-start has 3x the rows; FineAll trains the most), so that
    the last tasks of a job are short ones and the cores do not idle at its end."""
    cost_task = {"coldrec": 0, "age": 1, "gender": 2}
    cost_method = {"fineall": 0, "finelast": 1, "peterrec_parallel": 2, "peterrec_serial": 3, "peterzero": 4,
                   "finecls": 5}
    cells = [Cell(task, method(m), seed, lr)
             for task in config.tasks for m in config.methods for seed in range(config.seeds)
             for lr in (lrs or [config.lr[m]])]
    return sorted(cells, key=lambda c: (cost_task.get(c.task, 9), cost_method[c.method.name], c.lr, c.seed))


# Data --------------------------------------------------------------------------------------------------


def import_data(movielens: Path, data_dir: Path, config: ReproduceConfig, resume: bool) -> Path:
    """OUT/data from a MovieLens folder (kept as it is on --resume); returns its spec path."""
    from tasks.importers import import_movielens

    spec = data_dir / "tasks.toml"
    if resume and spec.exists():
        return spec
    spec, _ = import_movielens(movielens, data_dir, seed=config.import_seed, force=True)
    return spec


# Pretraining -------------------------------------------------------------------------------------------


def backbone_config(config: ReproduceConfig, arch: str, vocab_size: int):
    from peterrec.config import BackboneConfig

    return BackboneConfig(vocab_size=vocab_size, channels=config.channels, dilations=config.dilations,
                          causal=arch == "causal", max_len=config.max_len)


def window_arrays(sequences, rows: np.ndarray, width: int, step: int) -> np.ndarray:
    """Left-padded (N, width) windows over the given rows' sequences, cut from the most recent item back
    every `step` items, so the whole history is trained on and not only its latest `width` items.
    Windows with fewer than 2 items (nothing to predict from) are dropped."""
    windows = []
    for row in rows:
        items = sequences.sequence(int(row))
        for end in range(len(items), 1, -step):
            windows.append(items[max(0, end - width):end])
    cut = type(sequences).from_lists([str(i) for i in range(len(windows))], windows, sequences.vocab_size)
    return cut.padded(np.arange(len(windows)), width)


def pretrain_one(sequences, backbone_cfg, config: ReproduceConfig, threads: int = 1) -> dict:
    """Pretrain one backbone, validating after every epoch; keeps the epoch with the lowest validation
    loss. Returns its tensors as numpy arrays (backbone.*, output.*) and the validation curve."""
    import torch

    from peterrec.backbone import Backbone
    from peterrec.objectives import make_objective
    from peterrec.pretrain import mean_loss, pretrain_arrays, split_users
    from peterrec.training import TrainConfig, train

    torch.set_num_threads(threads)
    torch.manual_seed(config.pretrain_seed)
    device = torch.device("cpu")
    backbone = Backbone(backbone_cfg)
    objective = make_objective(backbone)
    train_rows, valid_rows = split_users(len(sequences), config.pretrain_valid_fraction, config.pretrain_seed)
    valid_items = pretrain_arrays(sequences, backbone_cfg, valid_rows)  # the latest window of held-out users
    if config.pretrain_windows:  # causal windows overlap by one item, so every item is a target once
        train_items = window_arrays(sequences, train_rows, valid_items.shape[1], backbone_cfg.max_len)
    else:
        train_items = pretrain_arrays(sequences, backbone_cfg, train_rows)
    before = mean_loss(objective, valid_items, device)
    train_config = TrainConfig(epochs=config.pretrain_epochs, batch_size=config.pretrain_batch,
                               lr=config.pretrain_lr, seed=config.pretrain_seed, keep_best=True)
    best = {"loss": float("inf"), "epoch": 0}

    def patience(progress) -> bool:  # after each epoch's validation: stop once it has flattened
        if -progress.metric < best["loss"]:
            best.update(loss=-progress.metric, epoch=progress.epoch)
        return progress.epoch - best["epoch"] >= config.pretrain_patience

    # The loop maximises its metric: the negated validation loss.
    result = train(objective, (train_items,), train_config, device,
                   evaluate=lambda: -mean_loss(objective, valid_items, device), on_epoch_end=patience)
    after = mean_loss(objective, valid_items, device)
    curve = [{"epoch": h["epoch"] + 1, "step": h["step"], "train_loss": h["loss"], "valid_loss": -h["metric"]}
             for h in result.history]
    tensors = {f"backbone.{k}": v.detach().cpu().numpy() for k, v in backbone.state_dict().items()}
    tensors |= {f"output.{k}": v.detach().cpu().numpy() for k, v in objective.output.state_dict().items()}
    return {"tensors": tensors, "curve": curve, "steps": result.steps, "examples": len(train_items),
            "seconds": result.seconds, "valid_loss_before": before, "valid_loss_after": after,
            "best_epoch": min(curve, key=lambda c: c["valid_loss"])["epoch"] if curve else None,
            "train": train_config.to_dict()}


def save_pretrained(path: Path, backbone_cfg, outcome: dict) -> None:
    import torch

    from peterrec.backbone import Backbone
    from peterrec.checkpoint import save_checkpoint
    from peterrec.objectives import ItemSoftmax

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in outcome["tensors"].items()}
    backbone = Backbone(backbone_cfg)
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in tensors.items()
                              if k.startswith("backbone.")})
    output = ItemSoftmax(backbone_cfg.channels, backbone_cfg.vocab_size)
    output.load_state_dict({k.removeprefix("output."): v for k, v in tensors.items() if k.startswith("output.")})
    info = {"pretraining": {key: outcome[key] for key in ("curve", "steps", "examples", "seconds", "valid_loss_before",
                                                          "valid_loss_after", "best_epoch", "train")}}
    info["pretraining"]["objective"] = "next-item" if backbone_cfg.causal else "cloze"
    save_checkpoint(path, backbone, output, info, force=True)


def pretrain_backbones(spec_path: Path, out: Path, config: ReproduceConfig, resume: bool,
                       log: Callable[[str], None] = print) -> dict[str, Path]:
    """OUT/backbones/<arch> for every architecture, pretrained side by side as Ray tasks of the session
    (one CPU each); kept as they are on --resume."""
    import ray

    from tasks import load_spec, read_sequences

    paths = {arch: out / "backbones" / arch for arch in config.archs}
    todo = [arch for arch, path in paths.items() if not (resume and (path / "config.json").exists())]
    if not todo:
        return paths
    job = load_spec(spec_path)
    sequences = read_sequences(job.sequences, job.vocab_size)
    sequences_ref = ray.put(sequences)
    remote = ray.remote(num_cpus=1, max_retries=0)(pretrain_one)
    configs = {arch: backbone_config(config, arch, job.vocab_size) for arch in todo}
    refs = {remote.remote(sequences_ref, configs[arch], config): arch for arch in todo}
    log(f"pretraining {', '.join(todo)} backbone(s) on {len(sequences):,} users, {job.vocab_size - 1:,} items, "
        f"{config.pretrain_epochs} epochs each, side by side")
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        arch = refs[ready[0]]
        outcome = ray.get(ready[0])
        save_pretrained(paths[arch], configs[arch], outcome)
        log(f"  {arch}: validation loss {outcome['valid_loss_before']:.3f} -> {outcome['valid_loss_after']:.3f} "
            f"(best epoch {outcome['best_epoch']} of {config.pretrain_epochs}, {outcome['seconds']:.0f} s)")
    return paths


# The grid as orchestrated jobs -----------------------------------------------------------------------


def write_grid_spec(data_spec: Path, path: Path, cells: list[Cell], config: ReproduceConfig, command: str,
                    tag_lr: bool = False) -> Path:
    """A task spec whose tasks are the grid cells: each points at the imported task's table, with the
    cell's method, seed and learning rate as overrides."""
    from tasks import load_spec, write_spec

    data = load_spec(data_spec)
    tasks = []
    for cell in cells:
        base = data.task(cell.task)
        tasks.append(replace(base, name=cell.name(tag_lr), overrides=cell.overrides(config, base.kind)))
    grid = replace(data, path=path, tasks=tasks)
    return write_spec(path, grid, command, notes=[f"The reproduction grid: {len(cells)} cells "
                                                  "(task__method__seed), one orchestrated job per backbone."])


def finetune_settings(config: ReproduceConfig):
    """The job-wide settings under each cell's overrides."""
    from peterrec.finetune import FinetuneSettings
    from peterrec.training import TrainConfig

    return FinetuneSettings(train=TrainConfig(batch_size=config.batch_size), eval_negatives=config.eval_negatives)


def run_job(spec: Path, backbone: Path, job_dir: Path, config: ReproduceConfig, options, resume: bool,
            display: Callable | None = None):
    """One orchestrated fine-tuning job over the grid spec (the Ray session is already up)."""
    from orchestrator.client import JobClient
    from orchestrator.job import FinetuneJob
    from orchestrator.plan import plan_job

    plan = plan_job(spec, backbone, job_dir, finetune_settings(config), resume=resume, force=not resume)
    try:
        job = FinetuneJob(plan, options)
        if display is None:
            return job.run()
        with display(JobClient(plan.job_dir, job)) as shown:
            return job.run(on_tick=shown.update)
    finally:
        plan.release()


def references(spec_path: Path, config: ReproduceConfig) -> dict[str, float]:
    """What the test split gives without any model: the training split's majority class (classify) and
    item popularity in the training split (coldrec, scored on the candidates each seed's evaluation
    draws, averaged over seeds). A row of the table, so that the methods can be read against it."""
    import torch

    from peterrec.finetune import TaskEvaluator
    from tasks import load_job

    job, _, task_data = load_job(spec_path)
    out = {}
    for name in config.tasks:
        data = task_data[name]
        spec = data.spec
        _, train_labels = data.part("train")
        _, test_labels = data.part("test")
        counts = np.bincount(train_labels, minlength=spec.num_outputs).astype(np.float64)
        if spec.kind == "classify":
            out[name] = float(np.mean(test_labels == counts.argmax()))
            continue
        values = []
        for seed in range(config.seeds):  # finetune_task draws the test candidates with seed + 1
            evaluator = TaskEvaluator(spec.kind, spec.metric, spec.num_outputs, np.zeros((len(test_labels), 1)),
                                      test_labels, negatives=config.eval_negatives, seed=seed + 1)
            ties = np.random.default_rng(seed).uniform(0, 0.5, spec.num_outputs)  # equal counts: a random order
            scores = torch.as_tensor(counts + ties).expand(len(test_labels), -1)
            values.append(_ranked(evaluator, scores)[spec.metric])
        out[name] = float(np.mean(values))
    return out


def _ranked(evaluator, scores) -> dict[str, float]:
    from peterrec.metrics import rank_metrics_for

    return rank_metrics_for(scores, evaluator.labels, evaluator.negatives, evaluator.k)


# Results -----------------------------------------------------------------------------------------------

RESULT_COLUMNS = ("arch", "task", "method", "method_label", "mode", "insertion", "seed", "lr", "cell", "kind",
                  "status", "metric", "value", "valid_value", "trained_params", "backbone_params",
                  "fineall_params", "ratio_vs_fineall", "seconds", "error")


def collect(jobs: dict[str, Path], cells: list[Cell], tag_lr: bool = False) -> list[dict]:
    """Every cell of every job: the job's results row, the cell's coordinates and its validation metric
    (from the cell's bundle entry)."""
    from orchestrator.results import bundle_path, read_results
    from peterrec.bundle import open_bundle

    by_name = {cell.name(tag_lr): cell for cell in cells}
    rows = []
    for arch, job_dir in jobs.items():
        bundle = open_bundle(bundle_path(job_dir)) if (bundle_path(job_dir) / "index.json").exists() else None
        try:
            for row in read_results(job_dir):
                cell = by_name.get(row["task"])
                if cell is None:
                    continue
                valid = fineall = None
                if row["status"] == "done" and bundle is not None:
                    entry = bundle.config(row["task"])
                    valid = entry["metrics"].get("valid", {}).get(row["metric"])
                    if row["ratio_vs_fineall"]:
                        fineall = round(100.0 * row["trained_params"] / row["ratio_vs_fineall"])
                m = cell.method
                rows.append({"arch": arch, "task": cell.task, "method": m.name, "method_label": m.label,
                             "mode": m.mode, "insertion": m.insertion if m.mode in ("peterrec", "peterzero") else None,
                             "seed": cell.seed, "lr": cell.lr, "cell": row["task"], "kind": row["kind"],
                             "status": row["status"], "metric": row["metric"], "value": row["value"],
                             "valid_value": valid, "trained_params": row["trained_params"],
                             "backbone_params": row["backbone_params"], "fineall_params": fineall,
                             "ratio_vs_fineall": row["ratio_vs_fineall"], "seconds": row["seconds"],
                             "error": row["error"]})
        finally:
            if bundle is not None:
                bundle.close()
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("arch", pa.string()), ("task", pa.string()), ("method", pa.string()), ("method_label", pa.string()),
        ("mode", pa.string()), ("insertion", pa.string()), ("seed", pa.int32()), ("lr", pa.float64()),
        ("cell", pa.string()), ("kind", pa.string()), ("status", pa.string()), ("metric", pa.string()),
        ("value", pa.float64()), ("valid_value", pa.float64()), ("trained_params", pa.int64()),
        ("backbone_params", pa.int64()), ("fineall_params", pa.int64()), ("ratio_vs_fineall", pa.float64()),
        ("seconds", pa.float64()), ("error", pa.string()),
    ])
    table = pa.Table.from_pylist([{c: r.get(c) for c in RESULT_COLUMNS} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path


# The whole pipeline --------------------------------------------------------------------------------------


@dataclass
class ReproduceOutcome:
    out: Path
    rows: list[dict]
    files: dict[str, Path]
    seconds: float
    timings: dict[str, float]

    @property
    def failed(self) -> list[str]:
        return [f"{r['arch']}/{r['cell']}" for r in self.rows if r["status"] != "done"]


CONFIG_FILE = "reproduce.json"
OUTPUTS = ("data", "backbones", "grid", "jobs", "selection", CONFIG_FILE, "results.parquet", "results.md",
           "tradeoff.png", "selection.parquet", "selection.md", "timings.json")


def prepare_out(out: Path, config: ReproduceConfig, resume: bool, force: bool, source: str) -> None:
    """Take OUT: empty or new; --force clears what an earlier reproduction wrote there (nothing else);
    --resume needs the same settings as the run it continues."""
    if resume and force:
        raise ValueError("--resume keeps an earlier run's outputs and --force deletes them: pass only one")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    record = {"config": config.to_dict(), "movielens": source}
    saved = out / CONFIG_FILE
    if resume:
        if not saved.exists():
            raise FileNotFoundError(f"{saved}: not found, nothing to resume (run without --resume)")
        earlier = json.loads(saved.read_text())
        if earlier != record:
            changed = sorted(k for k in set(earlier["config"]) | set(record["config"])
                             if earlier["config"].get(k) != record["config"].get(k))
            raise ValueError(f"{saved}: the run in {out} used other settings ({', '.join(changed) or 'data'}); "
                             f"resume it with the same flags, or pass --force to start over")
        return
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} already exists and is not empty (pass --resume to continue it, "
                                  f"--force to start over)")
        for name in OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(record, indent=2) + "\n")


def record_timings(path: Path, timings: dict[str, float], resume: bool) -> None:
    """OUT/timings.json: one entry per invocation (a resumed run adds one, so the first run's wall time
    is kept)."""
    runs = json.loads(path.read_text()).get("runs", []) if resume and path.exists() else []
    runs.append({"resumed": resume, **{k: round(v, 1) for k, v in timings.items()}})
    path.write_text(json.dumps({"runs": runs}, indent=2) + "\n")


def reproduce(movielens: Path, out: Path, config: ReproduceConfig, options, *, command: str,
              resume: bool = False, force: bool = False, select_lrs: list[float] | None = None,
              display: Callable | None = None, log: Callable[[str], None] = print) -> ReproduceOutcome:
    """Import, pretrain every architecture, run the grid as one job per backbone on one Ray session, and
    write the merged results, the tables and the plot. With `select_lrs` the grid is every method at
    each of those learning rates (one seed): the validation report that chose REPRODUCE_LR."""
    from orchestrator.cluster import connect
    from orchestrator.report import selection_markdown, table_markdown, tradeoff_plot

    start = time.perf_counter()
    out = Path(out)
    movielens = Path(movielens)
    if not movielens.is_dir():
        raise FileNotFoundError(f"{movielens}: no such MovieLens folder (expected u.data + u.user, or ratings.dat)")
    prepare_out(out, config, resume, force, str(movielens.absolute()))
    timings = {}
    spec = import_data(movielens, out / "data", config, resume)
    timings["import"] = time.perf_counter() - start
    log(f"imported {movielens} into {out / 'data'} ({timings['import']:.0f} s)")
    tag_lr = bool(select_lrs)
    cells = grid_cells(config, select_lrs)
    stage = "selection" if tag_lr else "jobs"
    cluster = connect(options.address, options.num_cpus, options.num_gpus, options.object_store_mb)
    try:
        backbones = pretrain_backbones(spec, out, config, resume, log)
        timings["pretrain"] = time.perf_counter() - start - timings["import"]
        jobs = {}
        for arch in config.archs:
            grid = write_grid_spec(spec, out / "grid" / f"{arch}{'.select' if tag_lr else ''}.toml", cells, config,
                                   command, tag_lr)
            jobs[arch] = out / stage / arch
            log(f"fine-tuning the {arch} grid: {len(cells)} cells ({len(config.methods)} methods x "
                f"{len(config.tasks)} tasks x {config.seeds if not tag_lr else 1} seed(s)"
                f"{f' x {len(select_lrs)} learning rates' if tag_lr else ''}) -> {jobs[arch]}")
            t0 = time.perf_counter()
            run_job(grid, backbones[arch], jobs[arch], config, options, resume, display)
            timings[f"finetune_{arch}"] = time.perf_counter() - t0
    finally:
        cluster.shutdown()
    rows = collect(jobs, cells, tag_lr)
    files = {}
    if tag_lr:
        files["results"] = write_rows(out / "selection.parquet", rows)
        _, text = selection_markdown(rows, config)
        files["table"] = out / "selection.md"
        files["table"].write_text(text)
    else:
        files["results"] = write_rows(out / "results.parquet", rows)
        files["table"] = out / "results.md"
        reference = references(spec, config)
        pretraining = {arch: json.loads((path / "config.json").read_text()).get("pretraining", {})
                       for arch, path in backbones.items()}
        files["table"].write_text(table_markdown(rows, config, command=command, references=reference,
                                                 pretraining=pretraining))
        files["plot"] = tradeoff_plot(rows, out / "tradeoff.png", list(config.tasks), reference)
    seconds = time.perf_counter() - start
    timings["total"] = seconds
    record_timings(out / "timings.json", timings, resume)
    return ReproduceOutcome(out, rows, files, seconds, timings)
