"""The paper's comparison (Table 3) on MovieLens, as one pipeline: import -> folds -> pretrain -> grid -> report.

    OUT/data/                  the imported MovieLens data directory (never part of the repository)
    OUT/folds/f<i>/            fold i of the user-level K-fold: its task tables and spec (tasks.folds)
    OUT/backbones/<arch>/      one pretrained checkpoint per architecture (noncausal, causal)
    OUT/grid/<arch>.toml       the grid as a task spec: one [[task]] per cell (task, method, seed, fold)
    OUT/jobs/<arch>/           one orchestrated fine-tuning job per backbone (results.parquet + bundle)
    OUT/results.parquet        every cell of both jobs, with arch, task, fold, method, seed, valid and test metric
    OUT/per_row.parquet        every test row's metric, per cell (re-scored from its bundle entry) and per
                               baseline (majority, popularity, bag-of-items LR, item kNN; same folds and candidates)
    OUT/baselines.json         what each baseline chose on each fold's validation users
    OUT/results.md             per architecture and task: each method over all test users with a 95% bootstrap
                               CI, paired differences with significance marks (reproduce/report.py); tradeoff.png

A job holds one backbone, so the two architectures are two jobs, run one after the other on the same
Ray session; the two pretrainings run side by side as two Ray tasks of that session first. Every fold's
cells are tasks of the same job. Pretraining is self-supervised on every user's source sequence (no labels).

Settings: one set per method (ReproduceConfig, REPRODUCE_LR), chosen on the VALIDATION split with
`--select-lr` (fold 0's valid users; its report shows validation metrics only); the tables report the TEST
users of every fold. Each run keeps the weights of its best validation epoch (training.TrainConfig.keep_best).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable


from reproduce.grid import Cell, ReproduceConfig, grid_cells
from tasks.atomic import staged_file, write_json_atomic, write_text_atomic

# Data --------------------------------------------------------------------------------------------------


def data_spec(source: Path, kind: str, data_dir: Path, config: ReproduceConfig, resume: bool) -> Path:
    """The data's spec: OUT/data imported from a MovieLens folder, or a data directory's own tasks.toml (read
    only, e.g. `synth --paper-regime`); every task of the grid must be in it."""
    from tasks import load_spec

    spec = import_data(source, data_dir, config, resume) if kind == "movielens" else source / "tasks.toml"
    names = {t.name for t in load_spec(spec).tasks}
    missing = [t for t in config.tasks if t not in names]
    if missing:
        raise ValueError(f"{spec}: no task(s) {missing} (tasks: {', '.join(sorted(names))}); pass --tasks")
    return spec


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


def pretrain_backbones(spec_path: Path, out: Path, config: ReproduceConfig, resume: bool,
                       log: Callable[[str], None] = print) -> dict[str, Path]:
    """OUT/backbones/<arch> for every architecture, pretrained side by side (one Ray task and one CPU
    each, orchestrator.pretrain.side_by_side) with peterrec.pretrain's recipe: windows over each whole
    history, the best validation-loss epoch kept; kept as they are on --resume."""
    from orchestrator.pretrain.side_by_side import pretrain_side_by_side
    from peterrec.checkpoint import save_checkpoint
    from peterrec.training import TrainConfig
    from tasks import load_spec, read_sequences

    paths = {arch: out / "backbones" / arch for arch in config.archs}
    todo = [arch for arch, path in paths.items() if not (resume and (path / "config.json").exists())]
    if not todo:
        return paths
    job = load_spec(spec_path)
    sequences = read_sequences(job.sequences, job.vocab_size)
    train_config = TrainConfig(epochs=config.pretrain_epochs, batch_size=config.pretrain_batch,
                               lr=config.pretrain_lr, seed=config.pretrain_seed, keep_best=True)
    runs = {arch: {"config": backbone_config(config, arch, job.vocab_size), "train_config": train_config,
                   "valid_fraction": config.pretrain_valid_fraction, "windows": config.pretrain_windows,
                   "patience": config.pretrain_patience, "item_init": config.item_init} for arch in todo}
    log(f"pretraining {', '.join(todo)} backbone(s) on {len(sequences):,} users, {job.vocab_size - 1:,} items, "
        f"{config.pretrain_epochs} epochs each, side by side")
    for arch, outcome in pretrain_side_by_side(sequences, runs):
        save_checkpoint(paths[arch], outcome.backbone, outcome.objective.output, outcome.info(train_config),
                        force=True)
        log(f"  {arch}: validation loss {outcome.valid_loss_before:.3f} -> {outcome.valid_loss_after:.3f} "
            f"(best epoch {outcome.best_epoch} of {config.pretrain_epochs}, {outcome.result.seconds:.0f} s)")
    return paths


# The grid as orchestrated jobs -----------------------------------------------------------------------


def write_grid_spec(fold_specs: list[Path], path: Path, cells: list[Cell], config: ReproduceConfig, command: str,
                    tag_lr: bool = False) -> Path:
    """A task spec whose tasks are the grid cells: each points at its fold's table of the task, with the
    cell's method, seed and learning rate as overrides."""
    from tasks import load_spec, write_spec

    folds = [load_spec(p) for p in fold_specs]
    tasks = []
    for cell in cells:
        base = folds[cell.fold].task(cell.task)
        tasks.append(replace(base, name=cell.name(tag_lr), overrides=cell.overrides(config, base.kind)))
    grid = replace(folds[0], path=path, tasks=tasks)
    return write_spec(path, grid, command, notes=[f"The reproduction grid: {len(cells)} cells "
                                                  "(task__method__seed__fold), one orchestrated job per backbone."])


def run_job(spec: Path, backbone: Path, job_dir: Path, config: ReproduceConfig, options, resume: bool,
            display: Callable | None = None):
    """One orchestrated fine-tuning job over the grid spec (the Ray session is already up): every cell's
    method, seed and learning rate are its overrides, over the job-wide settings below."""
    from orchestrator.client import JobClient
    from orchestrator.job import FinetuneJob
    from orchestrator.plan import plan_for
    from orchestrator.settings import JobSettings, TrainingSettings

    # fp32 whatever the machine: the paper's grid compares methods, not precisions (finetune's default is auto)
    training = TrainingSettings(batch_size=config.batch_size, eval_negatives=config.eval_negatives, precision="fp32")
    settings = JobSettings(backbone=str(backbone), tasks=str(spec), out=str(job_dir), resume=resume, force=not resume,
                           training=training)
    plan = plan_for(settings)
    try:
        job = FinetuneJob(plan, options)
        if display is None:
            return job.run()
        with display(JobClient(plan.job_dir, job)) as shown:
            return job.run(on_tick=shown.update)
    finally:
        plan.release()


# Results -----------------------------------------------------------------------------------------------

RESULT_COLUMNS = ("arch", "task", "fold", "method", "method_label", "mode", "insertion", "seed", "lr", "cell", "kind",
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
                valid = None
                if row["status"] == "done" and bundle is not None:
                    valid = bundle.config(row["task"])["metrics"].get("valid", {}).get(row["metric"])
                m = cell.method
                rows.append({"arch": arch, "task": cell.task, "fold": cell.fold, "method": m.name,
                             "method_label": m.label,
                             "mode": m.mode, "insertion": m.insertion if m.mode in ("peterrec", "peterzero") else None,
                             "seed": cell.seed, "lr": cell.lr, "cell": row["task"], "kind": row["kind"],
                             "status": row["status"], "metric": row["metric"], "value": row["value"],
                             "valid_value": valid, "trained_params": row["trained_params"],
                             "backbone_params": row["backbone_params"], "fineall_params": row["fineall_params"],
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
        ("arch", pa.string()), ("task", pa.string()), ("fold", pa.int32()), ("method", pa.string()), ("method_label", pa.string()),
        ("mode", pa.string()), ("insertion", pa.string()), ("seed", pa.int32()), ("lr", pa.float64()),
        ("cell", pa.string()), ("kind", pa.string()), ("status", pa.string()), ("metric", pa.string()),
        ("value", pa.float64()), ("valid_value", pa.float64()), ("trained_params", pa.int64()),
        ("backbone_params", pa.int64()), ("fineall_params", pa.int64()), ("ratio_vs_fineall", pa.float64()),
        ("seconds", pa.float64()), ("error", pa.string()),
    ])
    table = pa.Table.from_pylist([{c: r.get(c) for c in RESULT_COLUMNS} for r in rows], schema=schema)
    with staged_file(path) as staging:
        pq.write_table(table, staging)
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
OUTPUTS = ("data", "folds", "backbones", "grid", "jobs", "selection", CONFIG_FILE, "results.parquet", "results.md",
           "per_row.parquet", "baselines.json", "tradeoff.png", "selection.parquet", "selection.md", "timings.json")


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
        # The same data however it was reached (another working directory), and the settings as read today
        # (a run recorded before a setting existed has its old value).
        earlier = {"config": ReproduceConfig.from_dict(earlier["config"]).to_dict(),
                   "movielens": str(Path(earlier["movielens"]).resolve())}
        record = {**record, "movielens": str(Path(source).resolve())}
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
    write_json_atomic(saved, record)


def record_timings(path: Path, timings: dict[str, float], resume: bool) -> None:
    """OUT/timings.json: one entry per invocation (a resumed run adds one, so the first run's wall time
    is kept)."""
    runs = json.loads(path.read_text()).get("runs", []) if resume and path.exists() else []
    runs.append({"resumed": resume, **{k: round(v, 1) for k, v in timings.items()}})
    write_json_atomic(path, {"runs": runs})


def reproduce(source: Path, out: Path, config: ReproduceConfig, options, *, command: str, kind: str = "movielens",
              resume: bool = False, force: bool = False, select_lrs: list[float] | None = None,
              display: Callable | None = None, log: Callable[[str], None] = print) -> ReproduceOutcome:
    """Import, pretrain every architecture, run the grid as one job per backbone on one Ray session, and
    write the merged results, the tables and the plot. With `select_lrs` the grid is every method at
    each of those learning rates (one seed): the validation report that chose REPRODUCE_LR."""
    from orchestrator.cluster import check_address, connect
    from reproduce.evaluation import baseline_rows, method_rows, prepare_folds, write_per_row
    from reproduce.report import selection_markdown, summarise, table_markdown, tradeoff_plot
    from tasks.paths import check_apart, require_dir

    start = time.perf_counter()
    out = Path(out)
    flag = f"--{kind}"
    what = "a MovieLens folder (u.data + u.user, or ratings.dat)" if kind == "movielens" else \
        "a data directory with tasks.toml (synth, import)"
    source = require_dir(source, f"{flag}: {what}")
    check_apart(out, "--out", {flag: source})
    if options.address:  # within seconds, before OUT is taken
        check_address(options.address)
    prepare_out(out, config, resume, force, str(source.absolute()))
    timings = {}
    spec = data_spec(source, kind, out / "data", config, resume)
    timings["import"] = time.perf_counter() - start
    log(f"data: {spec} ({timings['import']:.0f} s)")
    fold_specs = prepare_folds(spec, out / "folds", config, resume)
    tag_lr = bool(select_lrs)
    cells = grid_cells(config, select_lrs, folds=1 if tag_lr else None)  # a selection: fold 0's valid users
    stage = "selection" if tag_lr else "jobs"
    cluster = connect(options.address, options.num_cpus, options.num_gpus, options.object_store_mb)
    try:
        backbones = pretrain_backbones(spec, out, config, resume, log)
        timings["pretrain"] = time.perf_counter() - start - timings["import"]
        jobs = {}
        for arch in config.archs:
            grid = write_grid_spec(fold_specs, out / "grid" / f"{arch}{'.select' if tag_lr else ''}.toml", cells, config,
                                   command, tag_lr)
            jobs[arch] = out / stage / arch
            log(f"fine-tuning the {arch} grid: {len(cells)} cells ({len(config.methods)} methods x "
                f"{len(config.tasks)} tasks x {config.seeds if not tag_lr else 1} seed(s) x "
                f"{1 if tag_lr else config.folds} fold(s)"
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
        write_text_atomic(files["table"], text)
    else:
        files["results"] = write_rows(out / "results.parquet", rows)
        t0 = time.perf_counter()
        per_row = method_rows(jobs, backbones, fold_specs, cells, config, log)
        base_rows, chosen = baseline_rows(fold_specs, config)
        files["per_row"] = write_per_row(out / "per_row.parquet", per_row + base_rows)
        write_json_atomic(out / "baselines.json", chosen)
        timings["evaluate"] = time.perf_counter() - t0
        files["table"] = out / "results.md"
        pretraining = {arch: json.loads((path / "config.json").read_text()).get("pretraining", {})
                       for arch, path in backbones.items()}
        summary = summarise(rows, per_row + base_rows, config)
        write_text_atomic(files["table"], table_markdown(summary, config, command=command, pretraining=pretraining,
                                                         rows=rows))
        files["plot"] = tradeoff_plot(summary, out / "tradeoff.png", list(config.tasks))
    seconds = time.perf_counter() - start
    timings["total"] = seconds
    record_timings(out / "timings.json", timings, resume)
    return ReproduceOutcome(out, rows, files, seconds, timings)
