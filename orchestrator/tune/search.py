"""Ray Tune hyper-parameter searches over the tasks of a spec: plan, run (or resume), write the outputs.

One Tuner runs the whole search: every trial's config is drawn up front (space.trial_points, seeded;
sample 0 of each task is its baseline) and fed to Tune's BasicVariantGenerator in order, which
interleaves the tasks, so all of them progress together and one pool of reused worker processes serves
every trial; with --search optuna a PerTaskSearcher (searcher.py) suggests them instead, one TPE study per
task. PerTaskScheduler (schedulers.py) keeps one ASHA, PBT or PB2 per task: trials of different tasks (and
metrics) are never compared. The backbone is put once (orchestrator.shared) and reaches every trial by
reference through tune.with_parameters. Trials checkpoint at every evaluation (trial.py). OUT/ray/search is
Tune's experiment; `resume` restores it with Tuner.restore. Design notes and measured figures: docs/TUNE.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.settings import SearchOptions, SearchSettings, resolve_spec
from tasks.atomic import write_json_atomic
from orchestrator.tune.results import BEST_FILE, DONE, FAILED, SPEC_FILE, STOPPED, TRIALS_FILE, UNFINISHED

EXPERIMENT = "search"  # Tune's experiment: OUT/ray/search
SEARCH_FILE = "search.json"  # what the search is; --resume checks it is asked the same search
KEEP_CHECKPOINTS = 4  # per trial; Tune always keeps the latest, PBT's donors need theirs a little longer


@dataclass
class SearchPlan:
    """A validated search: its inputs loaded, its space and every trial's config."""

    out_dir: Path
    job: object  # tasks.JobSpec
    sequences: object
    task_data: dict
    backbone: object
    backbone_path: Path
    settings: object  # FinetuneSettings of the command line
    tasks: list  # the TaskSpecs searched
    space: dict  # key -> space.Dim
    points: list[dict]  # every trial's config, in submission order
    identity: dict  # what search.json records
    resume: bool
    precision: dict | None = None  # --precision auto's resolution ("precision", "reason", "samples_per_s")
    lock: object = field(default=None, repr=False)

    @property
    def experiment(self) -> Path:
        return self.out_dir / "ray" / EXPERIMENT

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def plan_search(spec_path, backbone_path, out_dir, settings, options: SearchOptions, space_path=None,
                only=None, resume: bool = False, force: bool = False, vocab_prefix: bool = False) -> SearchPlan:
    """Check everything before Ray starts (DataError / CheckpointError / ValueError / FileExistsError),
    then take OUT (a lock held until `release`)."""
    import shutil

    from orchestrator.plan import check_output_dir, load_inputs, take_job_dir
    from orchestrator.tune.space import default_space, load_space, trial_points
    from peterrec.bundle import backbone_fingerprint
    from tasks import DataError
    from tasks.paths import check_apart

    out_dir = Path(out_dir).absolute()
    check_output_dir(out_dir, resume, force, "search's finished trials", "continue its search")
    job, sequences, task_data, backbone, tasks, task_settings = load_inputs(
        spec_path, backbone_path, settings, only, vocab_prefix)
    check_apart(out_dir, "--out", {"--backbone": backbone_path, "--space": space_path, **job.inputs()})
    for t in tasks:
        if len(task_data[t.name].part("valid")[0]) == 0:
            raise DataError(t.data, "no rows in split 'valid': a search ranks trials by the validation metric",
                            field="split")
    space = (load_space(space_path, settings.mode, backbone.config, settings) if space_path
             else default_space(settings.mode, backbone.config, settings))
    points = trial_points(space, tasks, task_settings, options.samples, settings.train.seed)
    identity = {"spec": str(job.path), "backbone": backbone_fingerprint(backbone), "tasks": [t.name for t in tasks],
                "settings": settings.to_dict(), "space": {k: d.to_dict() for k, d in space.items()},
                "samples": options.samples, "scheduler": options.scheduler, "search": options.search,
                "evals": options.evals}
    saved = out_dir / SEARCH_FILE
    resolved = None
    if resume and saved.exists():
        check_same_search(saved, identity)
        resolved = json.loads(saved.read_text()).get("precision")  # a resumed search keeps its precision
    elif resume and out_dir.is_dir() and any(p.name != ".lock" for p in out_dir.iterdir()):
        raise FileNotFoundError(f"{out_dir} holds no search to resume ({SEARCH_FILE} is missing)")
    lock = take_job_dir(out_dir)
    if force:  # what a search writes, and nothing else (OUT may hold the tuned job, or be a user's folder)
        shutil.rmtree(out_dir / "ray", ignore_errors=True)
        shutil.rmtree(out_dir / "bundle", ignore_errors=True)  # --export's
        for name in (SEARCH_FILE, TRIALS_FILE, BEST_FILE, SPEC_FILE):
            (out_dir / name).unlink(missing_ok=True)
    write_json_atomic(saved, {**identity, **({"precision": resolved} if resolved else {})})
    return SearchPlan(out_dir, job, sequences, task_data, backbone, Path(backbone_path), settings, tasks, space,
                      points, identity, resume, resolved, lock)


def plan_for(settings: SearchSettings) -> SearchPlan:
    """plan_search for an orchestrator.settings.SearchSettings: its own checks first, then plan_search's."""
    settings.check()
    if settings.cluster.address:  # within seconds, before OUT is taken (ClusterUnreachable)
        from orchestrator.cluster import check_address

        check_address(settings.cluster.address)
    return plan_search(resolve_spec(settings.tasks), settings.backbone, settings.out,
                       settings.training.finetune_settings(), settings.options(), settings.space, settings.only,
                       resume=settings.resume, force=settings.force, vocab_prefix=settings.training.vocab_prefix)


def check_same_search(saved: Path, identity: dict) -> None:
    """--resume continues the search OUT holds, so the command must describe that same search."""
    before = json.loads(saved.read_text())
    differ = sorted(k for k in identity if before.get(k) != identity[k])
    if differ:
        raise ValueError(f"{saved}: --resume must be given the same search as the interrupted one; these differ: "
                         f"{', '.join(differ)} (use the original flags, or a new --out)")


@dataclass
class SearchOutcome:
    rows: list[dict]  # trials.parquet
    best: dict  # best.json
    total: int  # trials the search has in all
    interrupted: bool  # stopped before every trial ended: --resume continues it
    paths: dict = field(default_factory=dict)  # what was written

    @property
    def complete(self) -> bool:
        return not self.interrupted and all(b.get("score") is not None for b in self.best.values())


class TuneSearch:
    """Runs (or resumes) a planned search on Ray; `run()` blocks and writes the outputs."""

    def __init__(self, plan: SearchPlan, options: SearchOptions, finetune_command: str):
        self.plan, self.options, self.command = plan, options, finetune_command

    def run(self, on_update: Callable | None = None) -> SearchOutcome:
        from orchestrator.cluster import connect

        plan, options = self.plan, self.options
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: Tune prints nothing itself
        try:
            cluster = connect(options.address, options.num_cpus, options.num_gpus, options.object_store_mb)
            try:
                check_fits(options, cluster.resources())
                outcome = self._search(on_update)
            finally:
                cluster.shutdown()
            if options.export and outcome.complete:
                from orchestrator.tune.export import export_best

                outcome.paths["bundle"] = export_best(plan, threads=int(options.cpus_per_trial))
        finally:
            plan.release()
        return outcome

    def _search(self, on_update) -> SearchOutcome:
        import ray
        from ray import tune

        from orchestrator.hub import ActorHub, start_hub
        from orchestrator.shared import share
        from orchestrator.state import TaskState
        from orchestrator.tune.monitor import SearchMonitor, activate
        from orchestrator.tune.results import trial_name
        from orchestrator.tune.trial import TrialInputs, run_trial

        plan, options = self.plan, self.options
        refs = share(plan.backbone, plan.sequences)  # one put of each for the whole search
        self._resolve_precision(refs)
        hub = ActorHub(start_hub([TaskState(trial_name(p["task"], p["sample"]), plan.job.task(p["task"]).kind,
                                            plan.job.task(p["task"]).metric) for p in plan.points]))
        inputs = TrialInputs(refs, {t.name: (t, ray.put(plan.task_data[t.name])) for t in plan.tasks}, plan.settings,
                             hub, options.cpus_per_trial, options.gpus_per_trial, options.evals)
        trainable = tune.with_resources(tune.with_parameters(run_trial, inputs=inputs),
                                        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        monitor = SearchMonitor(plan, hub, on_update)
        activate(monitor)
        try:
            if plan.resume and tune.Tuner.can_restore(str(plan.experiment)):
                tuner = tune.Tuner.restore(str(plan.experiment), trainable=trainable, resume_errored=True)
            else:
                tuner = self._tuner(trainable)
            grid = tuner.fit()
            monitor.refresh(force=True)
        finally:
            activate(None)
        return self._write(grid, monitor)

    def _resolve_precision(self, refs) -> None:
        """--precision auto, once for the whole search before any trial: measured on a worker holding a
        trial's resources with the first task, recorded in search.json (a resumed search keeps its choice);
        every trial, and --export, trains in it."""
        from dataclasses import replace

        from orchestrator.executors import precision_on_ray
        from orchestrator.worker import precision_as_asked

        plan, options = self.plan, self.options
        asked = plan.settings.train.precision
        if asked != "auto":
            plan.precision = precision_as_asked(asked)
        elif plan.precision is None:
            from peterrec.finetune import with_overrides

            first = plan.tasks[0]
            settings = with_overrides(plan.settings, first.overrides or {})
            steps = settings.train.total_steps(len(plan.task_data[first.name].part("train")[1]))
            plan.precision = precision_on_ray(refs, [first], [plan.task_data[first.name]], [settings],
                                              options.cpus_per_trial, options.gpus_per_trial,
                                              work_steps=steps * len(plan.points))
        write_json_atomic(plan.out_dir / SEARCH_FILE, {**plan.identity, "precision": plan.precision})
        plan.settings = replace(plan.settings, train=replace(plan.settings.train,
                                                             precision=plan.precision["precision"]))

    def _tuner(self, trainable):
        import random

        from ray import tune
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from orchestrator.tune.monitor import Forward
        from orchestrator.tune.schedulers import make_scheduler

        plan, options = self.plan, self.options
        names = [t.name for t in plan.tasks]
        if options.search == "optuna":
            from orchestrator.tune.searcher import PerTaskSearcher

            baselines = {p["task"]: {k: v for k, v in p.items() if k not in ("task", "sample")}
                         for p in plan.points if p["sample"] == 0}
            search_alg = PerTaskSearcher(names, baselines, plan.space, options.samples, plan.settings.train.seed)
            if options.max_concurrent:
                search_alg = ConcurrencyLimiter(search_alg, options.max_concurrent)
            space = {}  # a suggestion is the whole config (Domains here would be merged in unresolved)
        else:
            search_alg = BasicVariantGenerator(points_to_evaluate=plan.points, max_concurrent=options.max_concurrent)
            space = {"task": tune.choice(names), "sample": tune.randint(0, options.samples),
                     **{k: d.to_tune() for k, d in plan.space.items()}}
        if options.scheduler in ("pbt", "pb2"):
            random.seed(f"pbt:{plan.settings.train.seed}")  # PBT draws donors and perturbations from `random`
        return tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=len(plan.points), reuse_actors=True, search_alg=search_alg,
                scheduler=make_scheduler(options.scheduler, names, options.evals, plan.space),
                trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(plan.experiment.parent), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=options.retries),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                                      callbacks=[Forward()]))

    def _write(self, grid, monitor) -> SearchOutcome:
        """trials.parquet always; best.json and the tuned spec once every trial has ended. Each Result is
        known by its trial's directory (monitor.identity), never by the config in its metrics."""
        from orchestrator.tune.results import best_per_task, trial_row, write_best, write_trials, write_tuned_spec

        plan = self.plan
        rows = []
        for result in grid:
            if result.path not in monitor.identity:  # never reached the monitor: not a trial of this search
                continue
            (task, sample), trial_id = monitor.identity[result.path]
            metrics = result.metrics or {}
            if metrics.get("trial_id") != trial_id or "step" not in metrics:
                metrics = {}  # Tune's placeholder, or a stand-in describing the reused actor's previous trial
            current = result.config or {}
            if metrics and (current.get("task"), current.get("sample")) == (task, sample):
                config = current  # its own latest (PBT changes a trial's config as it goes)
            else:
                config = {"task": task, "sample": sample, **monitor.tasks[task].trials[sample].config}
            status = trial_status(monitor.statuses.get((task, sample)), metrics, result.error)
            checkpoint = os.path.relpath(result.checkpoint.path, plan.out_dir) if result.checkpoint else None
            rows.append(trial_row(plan.job.task(task).metric, config, trial_id, status, metrics,
                                  trial_error_text(result.error) if result.error else None,
                                  monitor.steps_trained(trial_id), checkpoint))
        interrupted = len(rows) < len(plan.points) or any(r["status"] == UNFINISHED for r in rows)
        paths = {"trials": write_trials(plan.out_dir, rows)}
        best = best_per_task(rows, plan.tasks)
        if not interrupted:
            paths["best"] = write_best(plan.out_dir, best)
            paths["spec"] = write_tuned_spec(plan.out_dir, plan.job, best, self.command)
        return SearchOutcome(rows, best, len(plan.points), interrupted, paths)


def trial_dirname(trial) -> str:
    """A trial's directory in the experiment: TASK-SAMPLE-TRIALID (Tune's default names a searcher's trials
    by every config value, too long for a path)."""
    return f"{trial.config['task']}-{trial.config['sample']}-{trial.trial_id}"


def trial_status(tune_status: str | None, metrics: dict, error) -> str:
    """A trial's status in trials.parquet, from what Tune last showed during the run (None: not seen)."""
    if error is not None or tune_status == "ERROR":
        return FAILED
    if tune_status in ("RUNNING", "PENDING", "PAUSED"):
        return UNFINISHED
    if metrics.get("final"):
        return DONE
    return STOPPED if tune_status == "TERMINATED" or (tune_status is None and metrics) else UNFINISHED


def trial_error_text(error) -> str:
    """A failed trial's error as one line: the exception's (orchestrator.worker.error_text), or, for an error
    Tune only kept as its error file's text ("Failure # 1 (occurred at ...)" + traceback), the text's last
    line, which names the exception."""
    from orchestrator.worker import error_text

    cause = getattr(error, "cause", None)
    text = error if isinstance(error, str) else cause if isinstance(cause, str) else None
    if text is None and not isinstance(cause, BaseException) and str(error).lstrip().startswith("Failure #"):
        text = str(error)
    if text is None:
        return error_text(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]


def check_fits(options: SearchOptions, cluster: dict) -> None:
    """A trial that needs more than the cluster has would wait forever: say so instead."""
    cpus, gpus = options.cpus_per_trial, options.gpus_per_trial
    if cpus > cluster["cpus"] or gpus > cluster["gpus"]:
        raise ValueError(f"a trial needs {cpus:g} CPU and {gpus:g} GPU but the cluster has {cluster['cpus']:g} CPU "
                         f"and {cluster['gpus']:g} GPU in all; lower --cpus-per-trial / --gpus-per-trial")
