"""The terminal UI, driven headless with Textual's Pilot.

Two real jobs on Ray (started once for the module, 2 CPUs): the launcher fills in its fields, starts a
4-task job and the dashboard follows it to the end (rows, totals, detail, bundle export); and a job run
the `finetune --ui tui` way is cancelled, retried and stopped by quitting. The rest reviews a finished
100-task job written from fixed numbers (no Ray, no clocks), which is also what the snapshot tests in
test_tui_snapshots.py show. Waits have generous timeouts as a safety net; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest
import torch

from orchestrator import state as st
from orchestrator.results import read_results, write_results
from orchestrator.state import JobState, TaskState

TIMEOUT_S = 600.0


def in_loop(test):
    """Run an async test in its own event loop (the project has no pytest asyncio plugin)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


# A finished job from fixed numbers ------------------------------------------------------------------------


def review_job(root: Path, tasks: int = 100, failed: tuple[int, ...] = (6, 42, 88)) -> Path:
    """JOB_DIR with state.json and results.parquet of a finished job: every number fixed, no spec or
    backbone on disk (the UI must get by with what results.parquet says)."""
    job_dir = root / "job"
    job_dir.mkdir(parents=True)
    state = JobState("runs/demo/job", status=st.JOB_DONE, mode="peterrec", spec="", backbone="", pid=None,
                     host=None, address="127.0.0.1:6379", cluster={"nodes": 2, "cpus": 16.0, "gpus": 1.0,
                                                                   "node_ips": ["10.0.0.1", "10.0.0.2"]},
                     resources={"cpus_per_task": 1.0, "gpus_per_task": 0.125, "max_concurrent": 0, "retries": 2},
                     timings={"ray_ready": 3.5, "first_start": 5.0, "first_progress": 6.0, "finished": 725.0},
                     started_at=1_700_000_000.0, updated_at=1_700_000_725.0)
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
                         seconds=60.0 + i, history=history)
        trained = 5_000 + (40_000 if coldrec else 0) + i
        if i in failed:
            task.status, task.error, task.attempts = st.FAILED, f"InjectedFailure: task {name} failed", 3
            task.step, task.history = total // 2, history[: len(history) // 2]
            rows.append({"task": name, "kind": kind, "mode": "peterrec", "status": "failed", "metric": metric,
                         "seconds": 30.0, "attempts": 3, "error": task.error})
        else:
            task.status, task.value = st.DONE, round(0.5 + i / 1000, 4)
            rows.append({"task": name, "kind": kind, "mode": "peterrec", "status": "done", "metric": metric,
                         "value": task.value, "trained_params": trained, "backbone_params": backbone_params,
                         "ratio_vs_fineall": 100.0 * trained / (backbone_params + trained - 4_000),
                         "seconds": task.seconds, "attempts": 1, "error": None})
        state.tasks[name] = task
    st.write_state(job_dir, state)
    write_results(job_dir, rows)
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
    """The task table as {task: {column: plain text}} (the DataTable's own cells, in table order)."""
    table = app.screen.query_one("#tasks")
    keys = [c.key.value for c in table.ordered_columns]
    out = {}
    for row in table.ordered_rows:
        cells = table.get_row(row.key)
        out[row.key.value] = {k: str(getattr(c, "plain", c)) for k, c in zip(keys, cells)}
    return out


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


# Reviewing a finished job (no Ray) ----------------------------------------------------------------------


@in_loop
async def test_review_shows_every_task_with_totals_and_efficiency(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp
    from tui.view import COMPACT_BELOW

    job_dir = review_job(tmp_path)
    app = PeterRecApp(client=JobClient.attach(job_dir))
    async with app.run_test(size=(COMPACT_BELOW + 10, 50)) as pilot:
        await settled(pilot)
        rows = table_rows(app)
        assert len(rows) == 100 and list(rows)[:2] == ["profile_000", "profile_001"]  # spec order
        assert rows["profile_006"]["status"] == "failed" and rows["profile_000"]["status"] == "done"
        assert rows["coldrec_003"]["metric"] == "mrr@5 0.5030" and rows["profile_000"]["step"] == "40/40"
        results = {r["task"]: r for r in read_results(job_dir)}
        assert rows["coldrec_003"]["params"] == "45k"  # 45,003 trained
        assert rows["coldrec_003"]["ratio"] == f"{results['coldrec_003']['ratio_vs_fineall']:.2f}%"
        assert rows["profile_006"]["params"] == ""  # failed: no patch set
        summary = text_of(app, "#summary")
        assert "97 done" in summary and "3 failed" in summary and "0 running" in summary
        assert "100.0%" in summary and "elapsed 12m05s" in summary and "2 nodes" in summary
        done = [r for r in results.values() if r["status"] == "done"]
        patches = sum(r["trained_params"] for r in done)
        full = sum(round(100 * r["trained_params"] / r["ratio_vs_fineall"]) for r in done)
        shared = 1_284_864 + patches
        efficiency = text_of(app, "#efficiency")
        assert "1,284,864 params, held once" in efficiency
        assert f"{patches:,} params, 97 of 100 tasks done" in efficiency
        assert f"{shared:,} params vs 97 full copies {full:,}: {100 * shared / full:.1f}%" in efficiency


@in_loop
async def test_filter_sort_and_find(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    app = PeterRecApp(client=JobClient.attach(review_job(tmp_path)))
    async with app.run_test(size=(120, 40)) as pilot:
        await settled(pilot)
        await pilot.press("f", "f")  # all -> running -> failed
        assert list(table_rows(app)) == ["profile_006", "profile_042", "profile_088"]
        assert "filter failed" in text_of(app, "#table-bar")
        await pilot.press("f", "f", "f")  # -> done -> queued -> all
        assert len(table_rows(app)) == 100
        await pilot.press("s")  # spec order -> by name
        assert list(table_rows(app))[:2] == ["coldrec_003", "coldrec_007"]
        await pilot.press("S")  # reversed
        assert list(table_rows(app))[0] == "profile_098"
        await pilot.press("s")  # by status: running, retrying, failed, queued, done
        assert list(table_rows(app))[:4] == ["profile_006", "profile_042", "profile_088", "profile_000"]
        await pilot.press("slash", *"coldrec_09", "enter")
        assert sorted(table_rows(app)) == ["coldrec_091", "coldrec_095", "coldrec_099"]
        await pilot.press("slash", "escape")
        assert len(table_rows(app)) == 100


@in_loop
async def test_detail_shows_curves_attempts_and_error(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp
    from tui.detail import TaskDetailScreen

    job_dir = review_job(tmp_path)
    app = PeterRecApp(client=JobClient.attach(job_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        await settled(pilot)
        await pilot.press("f", "f", "down", "enter")  # the second failed task
        await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen), "the detail screen")
        screen = app.screen
        await until(pilot, lambda: screen.config is not None, "the task's config")
        task = app.view.state.tasks["profile_042"]
        assert screen.task_name == "profile_042"
        assert list(screen.query_one("#loss-curve").data) == [p[1] for p in task.history]
        assert list(screen.query_one("#metric-curve").data) == [p[2] for p in task.history]
        assert "InjectedFailure: task profile_042 failed" in text_of(app, "#error")
        assert screen.query_one("#error").display
        assert screen.config["mode"] == "peterrec" and screen.config["gpus_per_task"] == 0.125
        await pilot.press("escape")
        assert not isinstance(app.screen, TaskDetailScreen)
        await pilot.press("c")  # a finished job: nothing to cancel, the app says so
        await pilot.pause()
        assert not isinstance(app.screen, TaskDetailScreen)


@in_loop
async def test_actions_on_a_finished_job_are_refused_politely(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    app = PeterRecApp(client=JobClient.attach(review_job(tmp_path)))
    async with app.run_test(size=(100, 30)) as pilot:
        await settled(pilot)
        await pilot.press("r")  # failed tasks exist, but the job is over: the client refuses
        await until(pilot, lambda: any("--resume" in n.message for n in app._notifications), "a notice")
        await pilot.press("e")  # no bundle in this job directory
        await until(pilot, lambda: any("bundle is empty" in n.message for n in app._notifications), "a notice")
        await pilot.press("q")  # a finished job: quits without asking
        await until(pilot, lambda: not app.is_running, "the app to exit")


# Pure parts: budget, launcher fields, tune table ----------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world (4 tasks) and a random 8-channel, 2-block backbone checkpoint."""
    from peterrec import Backbone, BackboneConfig
    from peterrec.checkpoint import save_checkpoint
    from tasks.synth import synthesize

    root = tmp_path_factory.mktemp("world")
    spec = synthesize(root / "data", tasks=4, users=200, items=50, seed=0, max_len=16)
    torch.manual_seed(0)
    save_checkpoint(root / "backbone", Backbone(BackboneConfig(vocab_size=51, channels=8, dilations=(1, 2),
                                                               max_len=16)))
    return spec, root / "backbone"


@pytest.mark.parametrize("mode", ["peterrec", "finecls", "finelast", "fineall", "peterzero"])
def test_budget_on_the_meta_device_matches_real_models(world, mode):
    from peterrec.checkpoint import load_backbone
    from peterrec.efficiency import param_report, storage_for
    from peterrec.finetune import FinetuneSettings
    from peterrec.modes import build_task_model
    from tasks import load_spec
    from tui.budget import compute_budget

    spec, backbone_dir = world
    budget = compute_budget(backbone_dir, spec.parent, FinetuneSettings(mode=mode))  # a data folder works too
    backbone, _ = load_backbone(backbone_dir)
    reports = [param_report(build_task_model(backbone, t.kind, t.num_outputs, mode)) for t in load_spec(spec).tasks]
    assert [(b.trained, b.stored, b.fineall) for b in budget.tasks.values()] == \
        [(r.trained_params, r.stored_params, r.fineall_params) for r in reports]
    assert [round(b.ratio, 6) for b in budget.tasks.values()] == [round(r.ratio_vs_fineall, 6) for r in reports]
    storage = storage_for(backbone, [r.stored_params for r in reports], [r.fineall_params for r in reports])
    totals = budget.totals()
    assert (totals["shared"], totals["full"]) == (storage.shared_params, storage.full_copies_params)


def test_launcher_fields_become_the_finetune_command():
    from tui.launch import LaunchError, LaunchSettings, finetune_argv, parse_finetune

    s = LaunchSettings(backbone="ckpt", spec="data", out="job", mode="finecls", workers="3", pack="auto", cpus="0.5",
                       gpus="0.25",
                       address="10.0.0.1:6379", epochs="2", max_steps="7", batch_size="16", lr="0.0005",
                       existing="resume")
    args = parse_finetune(finetune_argv(s))
    assert (args.backbone, args.tasks, args.out, args.mode, args.max_concurrent) == \
        ("ckpt", "data", "job", "finecls", 3)
    assert (args.cpus_per_task, args.gpus_per_task, args.address, args.pack) == (0.5, 0.25, "10.0.0.1:6379", "auto")
    assert (args.epochs, args.max_steps, args.batch_size, args.lr, args.resume, args.force) == \
        (2, 7, 16, 0.0005, True, False)
    assert parse_finetune(finetune_argv(LaunchSettings(backbone="b", spec="s", out="o", address="local"))).address \
        is None
    for field, value, message in (("backbone", "", "backbone checkpoint: required"),
                                  ("workers", "two", "workers: expected a whole number"),
                                  ("pack", "0", "pack: must be >= 1"),
                                  ("cpus", "0", "CPUs per task: must be >= 0.01"),
                                  ("max_steps", "0", "max steps: must be >= 1")):
        bad = LaunchSettings(backbone="b", spec="s", out="o")
        setattr(bad, field, value)
        with pytest.raises(LaunchError, match=message) as error:
            finetune_argv(bad)
        assert error.value.field == field


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


@in_loop
async def test_tune_view_lists_trials_per_task_and_the_best(tmp_path):
    from tui.app import PeterRecApp
    from tui.tune import best, read_trials

    folder = write_trials(tmp_path / "tune")
    trials = read_trials(folder)
    assert best([t for t in trials if t.task == "gender"]).trial_id == "a_00001"
    assert best([t for t in trials if t.task == "coldrec_1"]).trial_id == "a_00003"  # done beats unfinished
    app = PeterRecApp(tune_dir=folder)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: app.screen.trials, "the trial table")
        await pilot.pause()
        tasks = app.screen.query_one("#tune-tasks")
        assert [r.key.value for r in tasks.ordered_rows] == ["gender", "coldrec_1"]
        cells = lambda key: [str(c) for c in tasks.get_row(key)]  # noqa: E731
        # task, metric, trials, done, stopped, failed, open, baseline, best score, best trial, best config
        assert cells("gender") == ["gender", "accuracy", "3", "2", "1", "0", "0", "0.8100", "0.8600", "a_00001",
                                   "lr=0.0005 bottleneck_ratio=8"]
        assert cells("coldrec_1")[2:10] == ["3", "1", "0", "1", "1", "0.3100", "0.3100", "a_00003"]
        trials_table = app.screen.query_one("#tune-trials")
        assert [r.key.value for r in trials_table.ordered_rows] == ["gender/a_00001", "gender/a_00000",
                                                                    "gender/a_00002"]
        await pilot.press("down")
        assert [r.key.value for r in trials_table.ordered_rows] == ["coldrec_1/a_00005", "coldrec_1/a_00003",
                                                                    "coldrec_1/a_00004"]
        assert "loss is NaN" in str(trials_table.get_row("coldrec_1/a_00004")[-1])


def test_tune_table_problems_name_the_file_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tui.tune import read_trials

    with pytest.raises(FileNotFoundError, match="trials.parquet: not found"):
        read_trials(tmp_path)
    pq.write_table(pa.table({"task": ["a"], "trial_id": ["t"], "config": ["{"], "score": [1.0],
                             "status": ["TERMINATED"]}), tmp_path / "trials.parquet")
    with pytest.raises(ValueError, match="row 0, column 'config'"):
        read_trials(tmp_path)
    pq.write_table(pa.table({"task": ["a"], "trial_id": ["t"], "config": ['{"lr": 0.5}'], "score": [None],
                             "status": ["RUNNING"]}), tmp_path / "trials.parquet")
    (trial,) = read_trials(tmp_path)  # the five required columns are enough
    assert (trial.config, trial.score, trial.status, trial.sample) == ({"lr": 0.5}, None, "running", None)
    pq.write_table(pa.table({"task": ["a"]}), tmp_path / "trials.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['trial_id', 'config', 'score', 'status'\]"):
        read_trials(tmp_path)


def test_commands_fall_back_without_a_terminal(tmp_path, capsys):
    """Under pytest stdin is not a terminal: the launcher refuses, --attach prints plain progress lines."""
    import cli

    assert cli.main(["tui"]) == 2
    assert "needs a terminal" in capsys.readouterr().err
    job_dir = review_job(tmp_path)
    assert cli.main(["tui", "--attach", str(job_dir)]) == 1  # 3 failed tasks
    out = capsys.readouterr().out
    assert "job done: 100/100 tasks finished" in out
    assert cli.main(["tui", "--attach", str(tmp_path / "nothing")]) == 2


# Real jobs on Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from orchestrator.cluster import connect

    cluster = connect(num_cpus=2, object_store_mb=100)
    yield cluster
    cluster.shutdown()


async def type_into(pilot, selector: str, text: str) -> None:
    """Click a launcher field, clear it and type, as a user would."""
    await pilot.click(selector)
    field = pilot.app.screen.query_one(selector)
    field.value = ""
    await pilot.press(*text)
    assert field.value == text


@in_loop
async def test_launcher_starts_a_real_job_and_the_dashboard_follows_it(world, ray_cluster, tmp_path):
    from peterrec.bundle import open_bundle
    from tui.app import PeterRecApp
    from tui.detail import TaskDetailScreen
    from tui.launch import LaunchSettings

    spec, backbone_dir = world
    out = tmp_path / "job"
    app = PeterRecApp(defaults=LaunchSettings(num_cpus=2, object_store_mb=100))
    async with app.run_test(size=(130, 40)) as pilot:
        await type_into(pilot, "#backbone", str(backbone_dir))
        await type_into(pilot, "#spec", str(spec))
        await type_into(pilot, "#out", str(out))
        await type_into(pilot, "#epochs", "1")
        await type_into(pilot, "#max_steps", "6")
        await type_into(pilot, "#batch_size", "32")
        await until(pilot, lambda: "storage:" in text_of(app, "#budget"), "the parameter budget")
        budget = text_of(app, "#budget")
        assert "4 tasks in mode peterrec; backbone 1,280 params, held once" in budget
        assert "--max-steps 6 " in text_of(app, "#command")  # the equivalent command line
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.final_state is not None, "the job to finish")
        await settled(pilot)
        rows = table_rows(app)
        results = {r["task"]: r for r in read_results(out)}
        assert sorted(rows) == sorted(results) and len(rows) == 4
        assert {r["status"] for r in rows.values()} == {"done"}
        for name, row in rows.items():
            assert row["ratio"] == f"{results[name]['ratio_vs_fineall']:.2f}%"
            assert row["metric"].endswith(f"{results[name]['value']:.4f}")
        assert "4 done" in text_of(app, "#summary") and "100.0%" in text_of(app, "#summary")
        patches = sum(r["trained_params"] for r in results.values())
        assert f"{patches:,} params, 4 of 4 tasks done" in text_of(app, "#efficiency")
        # The detail of the first task: its curves and the settings its bundle entry records.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.config, "the detail")
        assert app.screen.config["source"] == "bundle entry" and app.screen.config["train.max_steps"] == 6
        assert len(app.screen.query_one("#loss-curve").data) >= 1
        await pilot.press("escape")
        # Export the bundle to the default path (next to the job directory).
        await pilot.press("e")
        await pilot.pause()
        await pilot.press("enter")
        archive = tmp_path / "job-bundle.tar"
        await until(pilot, archive.exists, "the archive")
        await until(pilot, lambda: any("bundle exported" == n.title for n in app._notifications), "the notice")
        assert sorted(open_bundle(archive).names) == sorted(results)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "the app to exit")


@in_loop
async def test_a_job_run_in_the_ui_is_cancelled_retried_and_stopped_by_quitting(world, ray_cluster, tmp_path):
    """The `finetune --ui tui` path: the app runs a given job; c / r act on it through the client and
    quitting stops it cleanly, leaving it resumable."""
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp
    from tui.launch import LaunchSettings, finetune_argv, make_job, parse_finetune

    spec, backbone_dir = world
    out = tmp_path / "job"
    args = parse_finetune(finetune_argv(LaunchSettings(backbone=str(backbone_dir), spec=str(spec), out=str(out),
                                                       workers="1", epochs="100000", batch_size="16")))
    app = PeterRecApp(job=lambda: make_job(args))
    async with app.run_test(size=(120, 36)) as pilot:
        tasks = lambda: app.view.state.tasks if app.view else {}  # noqa: E731
        first = None
        await until(pilot, lambda: any(t.status == "running" and t.step > 0 for t in tasks().values()),
                    "a running task")
        first = next(n for n, t in tasks().items() if t.status == "running")
        assert list(table_rows(app))[0] == first  # spec order, cursor on the first row
        await pilot.press("c")
        await pilot.press("y")
        await until(pilot, lambda: tasks()[first].status == "failed", "the cancelled task")
        assert tasks()[first].error == "cancelled"
        assert table_rows(app)[first]["status"] == "failed"
        await until(pilot, lambda: sum(t.status == "running" for t in tasks().values()) == 1, "the next task")
        await pilot.press("r")  # retry failed: the cancelled task is queued again
        await until(pilot, lambda: tasks()[first].status in ("queued", "running"), "the retried task")
        await pilot.press("q")
        await pilot.press("y")  # "Stop and quit"
        await until(pilot, lambda: not app.is_running, "the app to stop the job and exit")
    assert app.final_state.status == "stopped"
    state = JobClient.attach(out).state()
    assert state.status == "stopped" and not any(t.status == "running" for t in state.tasks.values())
    rows = read_results(out)  # nothing half-written: the cancelled task's row, no done rows
    assert [r["status"] for r in rows] == ["failed"] and rows[0]["error"] == "cancelled"


@in_loop
async def test_launcher_points_at_the_field_to_fix(world, tmp_path):
    """Problems found before a job starts come back to the launcher, on the field that is wrong."""
    import socket

    from tui.app import PeterRecApp
    from tui.launch import LaunchSettings

    spec, backbone_dir = world
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = PeterRecApp(defaults=LaunchSettings(backbone=str(tmp_path / "nowhere"), spec=str(spec),
                                              out=str(tmp_path / "job"), address=f"127.0.0.1:{port}"))
    async with app.run_test(size=(100, 30)) as pilot:
        status = lambda: text_of(app, "#launch-status")  # noqa: E731
        await until(pilot, lambda: "cannot compute the budget" in text_of(app, "#budget"), "the budget's complaint")
        assert "config.json: not found" in text_of(app, "#budget")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "nothing answers there" in status(), "the address check")
        assert app.screen.focused.id == "address" and app.screen.focused.has_class("error")
        app.screen.query_one("#address").value = ""
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "config.json: not found" in status(), "the checkpoint check")
        app.screen.query_one("#backbone").value = str(backbone_dir)
        app.screen.query_one("#epochs").value = "zero"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "epochs: expected a whole number" in status(), "the field check")
        assert app.screen.focused.id == "epochs"
        assert app.client is None and not (tmp_path / "job").exists()  # nothing started, nothing written


@in_loop
async def test_a_job_that_cannot_start_returns_to_the_launcher(world, ray_cluster, tmp_path):
    from tui.app import PeterRecApp
    from tui.launch import LaunchSettings
    from tui.launcher import LauncherScreen

    spec, backbone_dir = world
    app = PeterRecApp(defaults=LaunchSettings(backbone=str(backbone_dir), spec=str(spec), out=str(tmp_path / "job"),
                                              cpus="64"))  # more than the 2-CPU cluster has
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, LauncherScreen) and "could not start" in
                    text_of(app, "#launch-status"), "the launcher again")
        assert "a task needs 64 CPU" in text_of(app, "#launch-status") and app.client is None
        assert app.screen.focused.id == "existing"
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, "the app to exit")
