"""What a fine-tuning job or a search is asked to do: settings objects that the CLI's flags and the TUI's
launcher both fill in. Every default and every help text is written here, once (no torch, no Ray).

    settings = JobSettings(backbone="runs/w/backbone", tasks="data/w", out="runs/w/job")
    settings.training.lr = 3e-4
    plan = plan_for(settings)               # every check, before anything runs (orchestrator.plan)
    FinetuneJob(plan, settings.options()).run()

Each field's metadata carries its help, its group and, where the flag is not `--field-name`, its flag;
commands/_flags.py turns them into argparse flags, `command_line()` turns settings back into them.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from peterrec.config import INSERTIONS, REPRESENTATIONS
from peterrec.modes import MODE_NAMES, MODES

PRECISIONS = ("auto", "fp32", "bf16")  # peterrec.training.PRECISIONS (no torch here)
UNITS = ("task", "trial")  # what one worker slot runs: a fine-tuning task, or a Tune trial
SCHEDULERS = {  # how a search's trials are scheduled (orchestrator/tune/schedulers.py make_scheduler)
    "asha": "one ASHA per task stops poor trials early",
    "pbt": "population-based training per task: at every quarter of the evaluations the worst quarter of a "
           "task's trials copy a better trial's checkpoint and perturb its lr and weight decay",
    "pb2": "as pbt, the new lr and weight decay chosen by a GP bandit (needs scikit-learn)",
    "fifo": "every trial runs its budget",
}
SEARCHES = {  # where a search's trial configs come from (orchestrator/tune/searcher.py)
    "random": "drawn up front from the space, seeded per task (repeatable)",
    "optuna": "Optuna's TPE, one study per task, each suggestion learning from the task's finished trials "
              "(needs optuna; not with pbt/pb2, which take their own configs)",
}
POPULATION = ("pbt", "pb2")  # schedulers that set their trials' configs themselves
NEEDS = {"optuna": ("optuna", "optuna"), "pb2": ("sklearn", "scikit-learn")}  # choice -> (module, pip package)


class SettingError(ValueError):
    """Settings that cannot work; `field` is the (dotted) setting to fix first, e.g. "cluster.cpus"."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def setting(default=MISSING, help: str = "", *, group: str | None = None, flag: str | None = None, choices=None,
            metavar: str | None = None, inverted: bool = False, repeat: bool = False, parse=None,
            default_factory=MISSING):
    """A dataclass field with what the CLI and the launcher need to know of it.

    group: the --help section; flag: the option, default --name-with-dashes ("{unit}" is replaced by task
    or trial); inverted: a bool whose flag turns it off (--no-layernorm2 sets train_layernorm2 False);
    repeat: a list flag given several times; parse: text -> value (raises ValueError)."""
    metadata = {"help": help, "group": group, "flag": flag, "choices": choices, "metavar": metavar,
                "inverted": inverted, "repeat": repeat, "parse": parse}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_pack(text) -> int | str:
    """A --pack value: a positive number of tasks, or "auto"."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        k = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"--pack takes a number of tasks or 'auto' (got {text!r})") from None
    if k < 1:
        raise ValueError(f"--pack must be >= 1 (got {k})")
    return k


WHAT, TRAINING, CLUSTER, SEARCH = "what is trained", "training", "cluster", "search"  # --help sections


def _choices_help(choices: dict) -> str:
    return "; ".join(f"{name}: {text}" for name, text in choices.items())


@dataclass
class TrainingSettings:
    """How every task is trained: its mode, patches, head and training run (the same for finetune and tune;
    a task spec's [task.overrides] and a Tune trial's config go on top)."""

    mode: str = setting("peterrec", "what is trained per task: " + _choices_help({m.name: m.help for m in
                                                                                 MODES.values()}),
                        choices=MODE_NAMES, group=WHAT)
    insertion: str = setting("serial", "where patches sit: " + _choices_help(INSERTIONS), choices=tuple(INSERTIONS),
                             group=WHAT)
    bottleneck_ratio: int = setting(4, "patch width = channels / ratio", group=WHAT)
    cardinality: int = setting(1, "ResNeXt-style branches per patch; a 1x1 patch's branches sum to one matmul, so "
                                  "this computes the same function as 1 (kept for the paper's configs); the width "
                                  "must divide by it", group=WHAT)
    train_layernorm2: bool = setting(True, "do not train each block's second LayerNorm (patched modes)",
                                     flag="--no-layernorm2", inverted=True, group=WHAT)
    finelast_blocks: int = setting(1, "blocks trained by modes that train the last blocks (finelast)", group=WHAT)
    embedding_rank: int = setting(0, "patched modes: also a rank-r patch of the frozen item embedding (per-item "
                                     "weights from the task's labels; 0 = the paper's patches only)", group=WHAT)
    representation: str = setting("auto", "user vector: " + _choices_help(REPRESENTATIONS),
                                  choices=tuple(REPRESENTATIONS), group=WHAT)
    eval_negatives: int = setting(99, "sampled negatives for cold-start metrics; 0 = rank the whole target "
                                      "vocabulary", group=WHAT)
    vocab_prefix: bool = setting(False, "the spec's item ids 1..vocab_size-1 are the same items as the backbone's "
                                        "first ids (a backbone pretrained on a larger catalogue); without it the "
                                        "spec's vocab_size must equal the backbone's", group=WHAT)
    epochs: int = setting(5, "passes over the training data", group=TRAINING)
    max_steps: int | None = setting(None, "stop after this many optimiser steps (per task), whatever --epochs says",
                                    group=TRAINING)
    batch_size: int = setting(64, "examples per step", group=TRAINING)
    lr: float = setting(1e-3, "AdamW learning rate", group=TRAINING)
    weight_decay: float = setting(0.0, "AdamW weight decay", group=TRAINING)
    seed: int = setting(0, "seed for initialisation, shuffling and sampling", group=TRAINING)
    device: str | None = setting(None, "torch device (cpu, cuda, cuda:1); default: CUDA when present, else CPU. On Ray "
                                       "it follows each worker's resources (--gpus-per-{unit})", group=TRAINING)
    precision: str = setting("auto", "auto: bf16 where the device has native bf16 matrix units (Intel AMX or "
                                     "AVX512-BF16, a CUDA GPU that supports it) and a few steps of the job's own "
                                     "shapes, measured once at the start on a worker, run at least 1.1x faster; "
                                     "fp32 otherwise. The choice and its reason go into the job's state. fp32: "
                                     "always fp32. bf16: bfloat16 autocast (matmuls in bf16; weights, optimizer "
                                     "state and reductions in fp32) on CPU or CUDA. --bf16 is the old spelling of "
                                     "--precision bf16", choices=PRECISIONS, group=TRAINING)

    compile: bool = setting(False, "run each task's training steps through torch.compile (its backbone and "
                                   "patches; evaluation stays eager). It fuses the many small operations of "
                                   "narrow backbones, but each worker first spends tens of seconds compiling, so it "
                                   "pays for jobs of many tasks per worker (benchmarks/bench_compile.py measures "
                                   "both). Lone tasks only: packs (--pack) run eagerly", group=TRAINING)

    def finetune_settings(self):
        """The peterrec.finetune.FinetuneSettings these amount to (ValueError naming a bad value)."""
        from peterrec.config import PatchConfig
        from peterrec.finetune import FinetuneSettings
        from peterrec.training import TrainConfig

        patch = PatchConfig(bottleneck_ratio=self.bottleneck_ratio, cardinality=self.cardinality,
                            insertion=self.insertion, train_layernorm2=self.train_layernorm2,
                            embedding_rank=self.embedding_rank)
        train = TrainConfig(epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size, lr=self.lr,
                            weight_decay=self.weight_decay, seed=self.seed, precision=self.precision,
                            compile=self.compile)
        return FinetuneSettings(mode=self.mode, patch=patch, train=train, finelast_blocks=self.finelast_blocks,
                                representation=self.representation, eval_negatives=self.eval_negatives)


@dataclass
class ClusterSettings:
    """Where the work runs and how much of the cluster each unit (a task, a pack of tasks or a trial) holds."""

    address: str | None = setting(None, "join this Ray cluster (HEAD_IP:6379 of `ray start --head`) instead of "
                                        "starting an embedded one on this machine (loopback only)", group=CLUSTER)
    cpus: float = setting(1.0, "CPUs each {unit} holds; its torch thread count follows", flag="--cpus-per-{unit}",
                          group=CLUSTER)
    gpus: float = setting(0.0, "GPUs each {unit} holds; fractions (e.g. 0.25) share a GPU between {unit}s",
                          flag="--gpus-per-{unit}", group=CLUSTER)
    max_concurrent: int = setting(0, "most {unit}s in flight at once; 0: as many as the cluster's resources allow",
                                  group=CLUSTER)
    retries: int = setting(2, "extra attempts of a failed {unit} (an error, or a lost worker or node)", group=CLUSTER)
    num_cpus: int | None = setting(None, "CPUs of the embedded cluster (default: every core of this machine)",
                                   group=CLUSTER)
    object_store_mb: int | None = setting(None, "object store of the embedded cluster in MiB (default: Ray's, 30% of "
                                                "memory)", group=CLUSTER)

    def problems(self, unit: str) -> list[tuple[str, str]]:
        """(setting, what is wrong) for every value that cannot work."""
        out = []
        if not self.cpus > 0:
            out.append(("cluster.cpus", f"--cpus-per-{unit} must be > 0 (got {self.cpus:g})"))
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            out.append(("cluster.gpus", f"--gpus-per-{unit} must be a fraction of one GPU or a whole number "
                                        f"(got {self.gpus:g})"))
        if self.max_concurrent < 0:
            out.append(("cluster.max_concurrent", f"--max-concurrent must be >= 0 (got {self.max_concurrent})"))
        if self.retries < 0:
            out.append(("cluster.retries", f"--retries must be >= 0 (got {self.retries})"))
        return out

    def device_problems(self, device: str | None, unit: str) -> list[tuple[str, str]]:
        """On Ray a unit's device follows the resources it holds: --device may only agree with them."""
        if device not in (None, "cpu", "cuda"):
            return [("training.device", f"--device {device}: on Ray a {unit}'s device follows its resources; use "
                                        f"--gpus-per-{unit} to run on GPUs")]
        if device == "cuda" and not self.gpus:
            return [("training.device", f"--device cuda on Ray needs --gpus-per-{unit} (e.g. 1, or 0.25 to share "
                                        f"a GPU)")]
        return []


@dataclass
class JobSettings:
    """A fine-tuning job: its inputs, its output directory, how each task trains and where the tasks run."""

    backbone: str = setting("", "pretrained checkpoint directory (from `pretrain`)", metavar="CKPT")
    tasks: str = setting("", "task spec .toml, or a data directory holding tasks.toml", metavar="SPEC")
    out: str = setting("", "job directory: results.parquet and the bundle go here", metavar="JOB_DIR")
    only: list[str] | None = setting(None, "run only these tasks (repeat the flag or give a comma-separated list)",
                                     metavar="TASK", repeat=True)
    resume: bool = setting(False, "keep the finished tasks of an existing JOB_DIR (bundles untouched) and run the "
                                  "others")
    force: bool = setting(False, "start over in an existing JOB_DIR (its results and bundle are deleted)")
    pack: int | str = setting(1, "train up to K tasks per worker at once, in one fused pass over the backbone per step "
                                 "(modes that share the backbone; other tasks run alone). Pays where per-task batches "
                                 "are small (benchmarks/bench_fused.py). auto: measure K = 1, 2, 4, 8, 16 on a worker "
                                 "at the start and keep the fastest, 1 when packing does not pay",
                              metavar="K|auto", parse=parse_pack, group=CLUSTER)
    in_process: bool = setting(False, "no Ray: run the tasks (or packs) one after another in this process",
                               group=CLUSTER)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    UNIT = "task"

    def check(self) -> None:
        """SettingError naming every flag that is wrong on its own or with another (nothing is read yet)."""
        problems = [(name, f"--{name} is required") for name in ("backbone", "tasks", "out") if not getattr(self, name)]
        if self.resume and self.force:
            problems.append(("resume", "--resume keeps a job's finished tasks and --force deletes them: pass only one"))
        try:
            self.pack = parse_pack(self.pack)
        except ValueError as e:
            problems.append(("pack", str(e)))
        problems += self.cluster.problems(self.UNIT)
        if self.in_process and self.cluster.address:
            problems.append(("cluster.address", "--in-process runs without Ray; it cannot take --address"))
        if not self.in_process:
            problems += self.cluster.device_problems(self.training.device, self.UNIT)
        raise_problems(problems)

    def spec_path(self) -> Path:
        return resolve_spec(self.tasks)

    def options(self) -> "JobOptions":
        """Where and how the tasks run."""
        c = self.cluster
        return JobOptions(address=c.address, cpus_per_task=c.cpus, gpus_per_task=c.gpus,
                          max_concurrent=c.max_concurrent, retries=c.retries, pack=self.pack, num_cpus=c.num_cpus,
                          object_store_mb=c.object_store_mb, in_process=self.in_process, device=self.training.device)

    def command_line(self, **changes) -> list[str]:
        """`python cli.py finetune ...` words that give these settings (defaults left out)."""
        return ["python", "cli.py", "finetune", *flags_of(self, unit=self.UNIT, **changes)]


# What a job or a search runs with, checked once more where they are built (tests, experiments) ----------


@dataclass
class JobOptions:
    """Where and how the tasks run."""

    address: str | None = None  # join this cluster; None: start an embedded loopback one
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0  # fractions share a GPU
    max_concurrent: int = 0  # workers (tasks or packs) in flight at once; 0 = as many as resources allow
    retries: int = 2  # extra attempts of a failed task
    pack: int | str = 1  # most tasks trained together per worker; "auto": measured at the job's start
    num_cpus: int | None = None  # embedded cluster size (default: every core)
    num_gpus: int | None = None
    object_store_mb: int | None = None
    in_process: bool = False  # no Ray: the units run one after another in this process
    device: str | None = None  # in process: the torch device (default: CUDA when present); on Ray resources decide

    def __post_init__(self):
        cluster = ClusterSettings(self.address, self.cpus_per_task, self.gpus_per_task, self.max_concurrent,
                                  self.retries)
        problems = [message for _, message in cluster.problems("task")]
        try:
            self.pack = parse_pack(self.pack)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class SearchOptions:
    """How many trials, how they are scheduled, and where they run."""

    samples: int = 8  # trials per task, its baseline included
    scheduler: str = "asha"
    search: str = "random"  # random: points drawn up front; optuna: TPE per task
    export: bool = False  # write OUT/bundle from each task's best checkpoint once the search is complete
    evals: int = 8  # validation evaluations per trial (ASHA's rungs are counted in them)
    address: str | None = None  # join this cluster; None: start an embedded loopback one
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU
    max_concurrent: int = 0  # trials in flight at once; 0 = as many as the resources allow
    retries: int = 2  # extra attempts of a failed trial (Tune's FailureConfig)
    num_cpus: int | None = None  # embedded cluster size
    num_gpus: int | None = None
    object_store_mb: int | None = None

    def __post_init__(self):
        problems = search_problems(self.scheduler, self.search)
        for flag, value in (("--samples", self.samples), ("--evals", self.evals)):
            if value < 1:
                problems.append(f"{flag} must be >= 1 (got {value})")
        cluster = ClusterSettings(self.address, self.cpus_per_trial, self.gpus_per_trial, self.max_concurrent,
                                  self.retries)
        problems += [message for _, message in cluster.problems("trial")]
        if problems:
            raise ValueError("; ".join(problems))


def search_problems(scheduler: str, search: str) -> list[str]:
    """What is wrong with a scheduler and a searcher, alone or together (before Ray starts)."""
    import importlib.util

    problems = []
    if scheduler not in SCHEDULERS:
        problems.append(f"--scheduler must be one of {', '.join(SCHEDULERS)} (got {scheduler!r})")
    if search not in SEARCHES:
        problems.append(f"--search must be one of {', '.join(SEARCHES)} (got {search!r})")
    if search != "random" and scheduler in POPULATION:
        problems.append(f"--search {search} cannot go with --scheduler {scheduler}: {scheduler} sets its trials' "
                        f"configs itself (it copies and perturbs them), so it takes the random search's "
                        f"population; use --search random with {scheduler}, or --scheduler asha (or fifo) with "
                        f"--search {search}")
    for choice in (scheduler, search):
        module, package = NEEDS.get(choice, (None, None))
        if module and importlib.util.find_spec(module) is None:
            problems.append(f"{choice} needs the {package} package, which is not installed: "
                            f"pip install 'peterrec-orchestra[tune]' (or pip install {package})")
    return problems


def raise_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise SettingError(problems[0][0], "; ".join(message for _, message in problems))


def resolve_spec(path: str | Path) -> Path:
    """A task spec path from a spec file or a data directory holding tasks.toml."""
    path = Path(path).expanduser()
    return path / "tasks.toml" if path.is_dir() else path


# Settings <-> flags -----------------------------------------------------------------------------------------


def flag_name(f, unit: str) -> str:
    return (f.metadata.get("flag") or "--" + f.name.replace("_", "-")).replace("{unit}", unit)


def walk(settings_class, prefix: str = ""):
    """(dotted name, field) of every setting of a settings dataclass, nested ones flattened."""
    for f in fields(settings_class):
        kind = f.default_factory if f.default_factory is not MISSING else None
        if isinstance(kind, type) and hasattr(kind, "__dataclass_fields__"):
            yield from walk(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def get(settings, dotted: str):
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def put(settings, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for part in path:
        settings = getattr(settings, part)
    setattr(settings, last, value)


def flags_of(settings, unit: str, skip: tuple[str, ...] = (), **changes) -> list[str]:
    """The command-line words that give `settings`: every setting whose value differs from its default
    (`changes` replace values first, by dotted name with '__' for '.': out="x" or training__lr=0.1)."""
    defaults = type(settings)()
    words = []
    for name, f in walk(type(settings)):
        if name in skip or name.split(".")[-1] in skip:
            continue
        value = changes.get(name.replace(".", "__"), get(settings, name))
        if value == get(defaults, name):
            continue
        flag = flag_name(f, unit)
        if isinstance(value, bool):
            if value != f.metadata.get("inverted", False):
                words.append(flag)
        elif f.metadata.get("repeat"):
            for item in value or []:
                words += [flag, str(item)]
        elif value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return words


@dataclass
class SearchSettings:
    """A hyper-parameter search: its inputs, its output directory, the search, and how trials train and run."""

    backbone: str = setting("", "pretrained checkpoint directory (from `pretrain`)", metavar="CKPT")
    tasks: str = setting("", "task spec .toml, or a data directory holding tasks.toml", metavar="SPEC")
    out: str = setting("", "search directory: trials.parquet, best.json, tasks.toml, and Tune's state in ray/",
                       metavar="DIR")
    samples: int = setting(8, "trials per task, its baseline (sample 0) included", group=SEARCH)
    space: str | None = setting(None, "search space TOML (default: the space of --mode, see docs/TUNE.md)",
                                metavar="FILE", group=SEARCH)
    scheduler: str = setting("asha", "; ".join(f"{k}: {v}" for k, v in SCHEDULERS.items()), group=SEARCH,
                             choices=tuple(SCHEDULERS))
    search: str = setting("random", "where trial configs come from: " + _choices_help(SEARCHES), group=SEARCH,
                          choices=tuple(SEARCHES))
    export: bool = setting(False, "once the search is complete, write OUT/bundle from each task's best trial's "
                                  "checkpoint (its weights, not trained again); with --resume also on a finished "
                                  "search", group=SEARCH)
    evals: int = setting(8, "validation evaluations per trial: ASHA's rungs (grace period: a quarter of them)",
                         group=SEARCH)
    only: list[str] | None = setting(None, "search only these tasks (repeat the flag or give a comma-separated list)",
                                     metavar="TASK", repeat=True, group=SEARCH)
    resume: bool = setting(False, "continue the interrupted search in OUT: finished trials are kept, the rest run",
                           group=SEARCH)
    force: bool = setting(False, "start over in an existing OUT", group=SEARCH)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    UNIT = "trial"

    def check(self) -> None:
        problems = [(name, f"--{name} is required") for name in ("backbone", "tasks", "out") if not getattr(self, name)]
        problems += [("scheduler" if "scheduler" in m else "search", m) for m in
                     search_problems(self.scheduler, self.search)]
        problems += self.cluster.problems(self.UNIT) + self.cluster.device_problems(self.training.device, self.UNIT)
        raise_problems(problems)

    def options(self) -> "SearchOptions":
        """How many trials, how they are scheduled and where they run."""
        c = self.cluster
        return SearchOptions(samples=self.samples, scheduler=self.scheduler, search=self.search, export=self.export,
                             evals=self.evals, address=c.address,
                             cpus_per_trial=c.cpus, gpus_per_trial=c.gpus, max_concurrent=c.max_concurrent,
                             retries=c.retries, num_cpus=c.num_cpus, object_store_mb=c.object_store_mb)

    def finetune_command(self) -> list[str]:
        """The `finetune` command that runs the tuned spec with this search's training settings (the searched
        values are in the spec itself): OUT/tasks.toml into OUT/job."""
        out = Path(self.out)
        job = JobSettings(backbone=self.backbone, tasks=str(out / "tasks.toml"), out=str(out / "job"),
                          training=self.training)
        return job.command_line(training__device=None)
