"""Helpers the test modules share (tiny worlds, command lines, waits, a fixed 100-task job); no tests here."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orchestrator import state as st
from orchestrator.results import write_results
from orchestrator.state import JobState, TaskState


# A tiny synthetic world and the `finetune` command line -------------------------------------------------------


SIZES = {"tasks": 5, "users": 200, "items": 60, "max_len": 20}


def make_world(root: Path, seed: int = 3, **sizes) -> tuple[Path, Path]:
    """(spec path, backbone checkpoint) of a tiny synthetic world with a random 16-channel, 2-block backbone."""
    from peterrec import Backbone, BackboneConfig
    from peterrec.checkpoint import save_checkpoint
    from tasks.synth import synthesize

    sizes = {**SIZES, **sizes}
    spec = synthesize(root / "data", seed=seed, **sizes)
    torch.manual_seed(seed)
    backbone = Backbone(BackboneConfig(vocab_size=sizes["items"] + 1, channels=16, dilations=(1, 2),
                                       max_len=sizes["max_len"]))
    save_checkpoint(root / "backbone", backbone)
    return spec, root / "backbone"


def tiny_world(root: Path) -> tuple[Path, Path]:
    """A tiny synthetic world (4 tasks) and a random 8-channel, 2-block backbone checkpoint."""
    from peterrec import Backbone, BackboneConfig
    from peterrec.checkpoint import save_checkpoint
    from tasks.synth import synthesize

    spec = synthesize(root / "data", tasks=4, users=200, items=50, seed=0, max_len=16)
    torch.manual_seed(0)
    save_checkpoint(root / "backbone", Backbone(BackboneConfig(vocab_size=51, channels=8, dilations=(1, 2),
                                                               max_len=16)))
    return spec, root / "backbone"


def random_task(backbone, kind, num_outputs, mode, seed):
    """A task model of `mode` whose trained tensors are seeded random values (no training needed)."""
    from peterrec.task_model import build_task_model

    model = build_task_model(backbone, kind, num_outputs, mode, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.task_state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model.eval()


def finetune_args(spec, backbone, out, *extra, steps: int = 6) -> list[str]:
    return ["finetune", "--backbone", str(backbone), "--tasks", str(spec), "--out", str(out),
            "--max-steps", str(steps), "--epochs", "1", "--batch-size", "32", "--ui", "plain",
            "--num-cpus", "2", "--object-store-mb", "100", *map(str, extra)]


def task_names(spec) -> list[str]:
    from tasks import load_spec

    return [t.name for t in load_spec(spec).tasks]


def bundle_hashes(job_dir: Path) -> dict[str, str]:
    """SHA-256 over every file (name and bytes) of each task directory of JOB_DIR/bundle."""
    out = {}
    for folder in sorted((Path(job_dir) / "bundle" / "tasks").iterdir()):
        digest = hashlib.sha256()
        for path in sorted(folder.rglob("*")):
            digest.update(path.name.encode() + path.read_bytes())
        out[folder.name] = digest.hexdigest()
    return out


def assert_same_weights(job_a: Path, job_b: Path, names: list[str]) -> None:
    """The two jobs' bundles hold the same trained tensors for these tasks (up to float reassociation)."""
    from safetensors.torch import load_file

    for name in names:
        a, b = (load_file(str(job / "bundle" / "tasks" / name / "adapter_model.safetensors")) for job in (job_a, job_b))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)


# Searches (tune): a trial's weights from its checkpoint -----------------------------------------------------


def checkpoint_tensors(path: Path) -> dict:
    """The trainable tensors of a trial checkpoint (peterrec.task_state's task.safetensors)."""
    from safetensors.torch import load_file

    from peterrec.task_state import TASK_FILE

    return load_file(str(Path(path) / TASK_FILE))


def rerun_trial(spec, backbone, task: str, overrides: dict, settings):
    """What a trial trains, run in this process without Ray and without interruption: finetune_task of
    `task` with the trial's overrides, on CPU with one thread (a trial of --cpus-per-trial 1)."""
    from dataclasses import replace

    from orchestrator.plan import load_inputs
    from peterrec.finetune import finetune_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job, sequences, task_data, model_backbone, _, _ = load_inputs(spec, backbone, settings, [task])
        run_spec = replace(job.task(task), overrides={**job.task(task).overrides, **overrides})
        return finetune_task(model_backbone, run_spec, task_data[task], sequences, settings, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)


def wait_for(condition, timeout: float = 60.0, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)



# The terminal UI: a finished job from fixed numbers, waits for the app ----------------------------------------


TIMEOUT_S = 600.0


def in_loop(test):
    """Run an async test in its own event loop (the project has no pytest asyncio plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


USAGE = {"at": 1_700_000_720.0, "waiting": [{"resources": {"CPU": 1.0}, "count": 3}],
         "nodes": [{"id": "a" * 56, "ip": "10.0.0.1", "status": "running", "cpu": [8.0, 8.0], "gpu": [0.5, 1.0],
                    "memory": [0.0, 30 * 1024 ** 3], "object_store": [1.5 * 1024 ** 3, 9 * 1024 ** 3]},
                   {"id": "b" * 56, "ip": "10.0.0.2", "status": "idle", "cpu": [0.0, 8.0], "gpu": [0.0, 0.0],
                    "memory": [0.0, 30 * 1024 ** 3], "object_store": [0.0, 9 * 1024 ** 3]}]}


def review_job(root: Path, tasks: int = 100, failed: tuple[int, ...] = (6, 42, 88)) -> Path:
    """JOB_DIR with state.json, results.parquet and logs/ of a finished job: every number fixed, no spec or
    backbone on disk (the UI must get by with what results.parquet says)."""
    job_dir = root / "job"
    job_dir.mkdir(parents=True)
    state = JobState("runs/demo/job", status=st.JOB_DONE, mode="peterrec", spec="", backbone="", pid=None,
                     host=None, address="127.0.0.1:6379", cluster={"nodes": 2, "cpus": 16.0, "gpus": 1.0,
                                                                   "node_ips": ["10.0.0.1", "10.0.0.2"]},
                     resources={"cpus_per_task": 1.0, "gpus_per_task": 0.125, "max_concurrent": 0, "retries": 2},
                     timings={"ray_ready": 3.5, "first_start": 5.0, "first_progress": 6.0, "finished": 725.0},
                     started_at=1_700_000_000.0, updated_at=1_700_000_725.0, usage=USAGE)
    rows = []
    backbone_params = 1_284_864
    for i in range(tasks):
        coldrec = i % 4 == 3
        name = f"{'coldrec' if coldrec else 'profile'}_{i:03d}"
        kind, metric = ("coldrec", "mrr@5") if coldrec else ("classify", "accuracy")
        total = 40 + i % 5 * 10
        history = [[s, round(1.5 / (1 + 0.05 * s) + 0.01 * (s % 3), 4), round(0.2 + 0.004 * s, 4)]
                   for s in range(5, total + 1, 5)]
        task = TaskState(name, kind, metric, step=total, total=total, epoch=2, loss=history[-1][1],
                         metric=history[-1][2], samples_per_s=1000.0 + i, attempts=1, node="10.0.0.1",
                         pid=1000 + i, started_at=1_700_000_010.0 + i, updated_at=1_700_000_100.0 + i,
                         seconds=60.0 + i, history=history, submitted_at=1_700_000_009.0 + i,
                         attempt_started_at=1_700_000_010.0 + i)
        trained = 5_000 + (40_000 if coldrec else 0) + i
        if i in failed:
            task.status, task.error, task.attempts = st.FAILED, f"InjectedFailure: task {name} failed", 3
            st.write_task_log(job_dir, name, [
                f"attempt 3 on 10.0.0.1 (pid {1000 + i}), cpu, 1 torch thread(s)",
                f"step 20/{total}  epoch 1  loss 0.4486  valid 0.2800  1,006 samples/s",
                "Traceback (most recent call last):",
                '  File "orchestrator/worker.py", line 190, in run_task',
                "    outcome = finetune_task(backbone, task_spec, task_data, sequences, settings, device, reporter)",
                f"orchestrator.worker.InjectedFailure: task {name} failed",
                f"attempt 3 failed: InjectedFailure: task {name} failed; no attempt left: the task is failed"])
            task.step, task.history = total // 2, history[: len(history) // 2]
            rows.append({"task": name, "kind": kind, "mode": "peterrec", "status": "failed", "metric": metric,
                         "seconds": 30.0, "attempts": 3, "error": task.error})
        else:
            task.status, task.value = st.DONE, round(0.5 + i / 1000, 4)
            rows.append({"task": name, "kind": kind, "mode": "peterrec", "status": "done", "metric": metric,
                         "value": task.value, "trained_params": trained, "backbone_params": backbone_params,
                         "fineall_params": backbone_params + trained - 4_000, "stored_params": trained,
                         "ratio_vs_fineall": 100.0 * trained / (backbone_params + trained - 4_000),
                         "seconds": task.seconds, "attempts": 1, "error": None})
        state.tasks[name] = task
    st.write_state(job_dir, state)
    write_results(job_dir, rows)
    return job_dir


def live_job(root: Path, tasks: int = 6, **changes) -> Path:
    """JOB_DIR whose state.json says a job is running now, driven by this very process (so clients take it
    for live): tasks 0-1 running, 2 retrying, 3 failed, 4 done, the rest queued. `changes` replace fields
    of the JobState (a dict `tasks_changes` maps a task index to TaskState fields to replace)."""
    import os
    import socket

    import psutil

    job_dir = root / "live"
    job_dir.mkdir(parents=True)
    now = time.time()
    task_changes = changes.pop("tasks_changes", {})
    state = JobState(str(job_dir), status=st.JOB_RUNNING, mode="peterrec", pid=os.getpid(), host=socket.gethostname(),
                     pid_started=psutil.Process().create_time(), cluster={"nodes": 1, "cpus": 2.0, "gpus": 0.0,
                                                                           "node_ips": ["127.0.0.1"]},
                     resources={"cpus_per_task": 1.0, "gpus_per_task": 0.0, "max_concurrent": 0, "retries": 2},
                     timings={"ray_ready": 1.0, "first_start": 2.0}, started_at=now - 60, updated_at=now,
                     pace={"samples_per_s": 4321.0, "steps_per_s": 12.5, "steps_left": 500, "eta_s": 40.0, "at": now})
    for key, value in changes.items():
        setattr(state, key, value)
    for i in range(tasks):
        name = f"task_{i:02d}"
        task = TaskState(name, "classify", "accuracy")
        if i < 3:
            history = [[s, 1.0 / (1 + s), 0.5 + s / 1000, now - 30 + s / 10] for s in range(10, 110, 10)]
            task.status = st.RUNNING if i < 2 else st.RETRYING
            task.step, task.total, task.loss, task.metric, task.samples_per_s = 100, 200, 0.01, 0.6, 64.0 + i
            task.attempts, task.node, task.pid, task.history = 1, "127.0.0.1", 4000 + i, history
            task.started_at = task.attempt_started_at = now - 30
            task.submitted_at = now - 31
        elif i == 3:
            task.status, task.error, task.attempts, task.step, task.total = st.FAILED, "ValueError: boom", 3, 7, 200
        elif i == 4:
            task.status, task.value, task.attempts, task.step, task.total = st.DONE, 0.75, 1, 200, 200
        for key, value in task_changes.get(i, {}).items():
            setattr(task, key, value)
        state.tasks[name] = task
    st.write_state(job_dir, state)
    return job_dir


async def until(pilot, condition, what: str, timeout: float = TIMEOUT_S) -> None:
    """Let the app run until `condition()` holds (a safety-net timeout, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await pilot.pause(0.1)


async def settled(pilot) -> None:
    """Wait until the app shows the final state of its job."""
    app = pilot.app
    await until(pilot, lambda: app.view is not None and app.view.final, "the job's final state")
    await until(pilot, lambda: app.screen.query("#tasks") and app.screen.query_one("#tasks").row_count, "the rows")
    await pilot.pause(0.2)  # let the layout settle (heights of the header panels) before anyone looks


def table_rows(app) -> dict[str, dict[str, str]]:
    """The task table as {task: {column: plain text}} (the dashboard's own cells, in table order; group
    headings left out)."""
    table = app.screen.query_one("#tasks")
    keys = [c.key for c in table.columns]
    return {row.key: {k: cells.get(k, "") for k in keys} for row, cells in table.text_rows() if not row.heading}


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def plain_of(app, selector: str, width: int = 200) -> str:
    """What a Static shows (rich tables included), as plain text."""
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(app.screen.query_one(selector).content)
    return console.export_text()


def write_trials(folder: Path) -> Path:
    """DIR/trials.parquet with the columns `tune` writes (orchestrator/tune_results.py), fixed values."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rows = [("gender", 0, "a_00000", "done", "accuracy", 0.81, 0.80, {"lr": 0.001, "bottleneck_ratio": 4}, None),
            ("gender", 1, "a_00001", "done", "accuracy", 0.86, 0.84, {"lr": 0.0005, "bottleneck_ratio": 8}, None),
            ("gender", 2, "a_00002", "stopped", "accuracy", 0.62, None, {"lr": 0.02, "bottleneck_ratio": 2}, None),
            ("coldrec_1", 0, "a_00003", "done", "mrr@5", 0.31, 0.30, {"lr": 0.001}, None),
            ("coldrec_1", 1, "a_00004", "failed", "mrr@5", None, None, {"lr": 0.01},
             "RuntimeError: loss is NaN"),
            ("coldrec_1", 2, "a_00005", "unfinished", "mrr@5", 0.35, None, {"lr": 0.003}, None)]
    names = ("task", "sample", "trial_id", "status", "metric", "score", "test_value", "config", "error")
    table = pa.table({n: [json.dumps(r[i]) if n == "config" else r[i] for r in rows] for i, n in enumerate(names)})
    pq.write_table(table, folder / "trials.parquet")
    return folder



# Bad inputs: a table of cases per command (test_bad_inputs.py) ------------------------------------------------


@dataclass
class Bad:
    """A command line that must fail cleanly: its exit code, the words its message must hold, and nothing
    written or changed. "{name}" in argv is replaced by the path (or value) called `name`; `env` sets (or,
    with None, removes) environment variables for the case."""

    id: str
    argv: list
    rc: int = 2
    words: tuple = ()
    env: dict = field(default_factory=dict)

    def __str__(self) -> str:  # pytest's id of the case
        return self.id


def fill(argv: list, names: dict) -> list[str]:
    return [str(word).format(**names) for word in argv]


def tree_state(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots`: its path -> sha256 of its bytes (a folder: "dir", a link: its target)."""
    out = {}
    for root in roots:
        for path in sorted([Path(root), *Path(root).rglob("*")]):
            if path.is_symlink():
                out[str(path)] = f"link:{os.readlink(path)}"
            elif path.is_dir():
                out[str(path)] = "dir"
            elif path.exists():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_bad(case: Bad, names: dict, roots: list[Path], capfd, monkeypatch) -> str:
    """Run `case` through cli.main and check how it ends; returns its stderr."""
    import cli

    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    before = tree_state(*roots)
    capfd.readouterr()
    try:
        rc = cli.main(fill(case.argv, names))
    except SystemExit as e:  # argparse's own errors (exit 2)
        rc = e.code
    out, err = capfd.readouterr()
    assert rc == case.rc, f"exit {rc}, expected {case.rc}: {err[-2000:]}"
    assert "Traceback" not in out + err, out + err
    assert "on the Ray cluster at" not in out, out  # never a claim about a cluster it did not join
    for word in case.words:
        assert str(word).format(**names) in err, f"{word!r} not in: {err[-2000:]}"
    assert tree_state(*roots) == before, "the command wrote or changed files"
    return err


def free_port() -> int:
    """A loopback port nothing listens on (just now)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def silent_listener() -> int:
    """A loopback port that accepts connections and closes them at once (no Ray there); lives with the process."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            conn, _ = server.accept()
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def movielens_100k(folder: Path, ratings: int = 12, users: int = 6, movies: int = 6) -> Path:
    """A tiny hand-made MovieLens 100K folder (u.data, u.user, u.item, u.occupation)."""
    folder.mkdir(parents=True)
    (folder / "u.occupation").write_text("engineer\nwriter\n")
    (folder / "u.user").write_text("".join(f"{u}|{20 + 5 * u}|{'MF'[u % 2]}|{('engineer', 'writer')[u % 2]}|0{u}000\n"
                                           for u in range(1, users + 1)))
    (folder / "u.item").write_text("".join(f"{m}|Movie {m} (1995)|01-Jan-1995||http://x|0|1\n"
                                           for m in range(1, movies + 1)), encoding="latin-1")
    (folder / "u.data").write_text("".join(f"{1 + i % users}\t{1 + (i * 5) % movies}\t{1 + i % 5}\t{1000 + i}\n"
                                           for i in range(ratings)))
    return folder


def replace_line(path: Path, number: int, field: int, value: str, separator: str) -> None:
    """Set field `field` (0-based) of 1-based line `number` of a text file."""
    lines = path.read_text(encoding="latin-1").splitlines()
    parts = lines[number - 1].split(separator)
    parts[field] = value
    lines[number - 1] = separator.join(parts)
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard run's event files, read as TensorBoard does (TFRecord framing of
    Event protos, tensorboardX's copy of TensorBoard's proto): {tag: [(step, value), ...]}."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list] = {}
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out
