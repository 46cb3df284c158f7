"""The terminal UI, driven headless with Textual's Pilot.

Two real jobs on Ray (started once for the module, 2 CPUs): the launcher fills in its fields, starts a
4-task job and the dashboard follows it to the end (rows, totals, detail, bundle export); and a job run
the `finetune --ui tui` way is cancelled, retried and stopped by quitting. The rest reviews a finished
100-task job written from fixed numbers (no Ray, no clocks), which is also what the snapshot tests in
test_tui_snapshots.py show. Waits have generous timeouts as a safety net; nothing asserts on time.
"""

from __future__ import annotations

import pytest

from orchestrator.results import read_results
from peterrec.modes import MODE_NAMES
from support import (in_loop, review_job, settled, table_rows, tensorboard_scalars, text_of, until,
                     tiny_world, write_trials)





# A finished job from fixed numbers ------------------------------------------------------------------------












# Reviewing a finished job (no Ray) ----------------------------------------------------------------------


@in_loop
async def test_review_shows_every_task_with_totals_and_efficiency(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    job_dir = review_job(tmp_path)
    app = PeterRecApp(client=JobClient.attach(job_dir))
    async with app.run_test(size=(160, 50)) as pilot:
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
        assert "1,284,864 params, held once, read by every task" in efficiency
        assert f"97 of 100 done, their patch sets {patches:,}" in efficiency
        assert f"backbone + 97 patch sets = {shared:,}, {100 * shared / full:.1f}% of 97 full copies ({full:,})" \
            in efficiency


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
        await pilot.press("s", "s")  # by kind, then by status: running, retrying, failed, queued, done
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
        assert screen.query_one("#loss-chart").series[0].points == [(p[0], p[1]) for p in task.history]
        assert screen.query_one("#metric-chart").series[0].points == [(p[0], p[2]) for p in task.history]
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
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("mode", MODE_NAMES)
def test_budget_on_the_meta_device_matches_real_models(world, mode):
    from orchestrator.client import plan_tasks
    from peterrec.checkpoint import load_backbone
    from peterrec.efficiency import param_report, storage_for
    from peterrec.finetune import FinetuneSettings
    from peterrec.task_model import build_task_model
    from tasks import load_spec

    spec, backbone_dir = world
    budget = plan_tasks(backbone_dir, spec.parent, FinetuneSettings(mode=mode))  # a data folder works too
    backbone, _ = load_backbone(backbone_dir)
    reports = [param_report(build_task_model(backbone, t.kind, t.num_outputs, mode)) for t in load_spec(spec).tasks]
    assert [(b.trained_params, b.stored_params, b.fineall_params) for b in budget.tasks.values()] == \
        [(r.trained_params, r.stored_params, r.fineall_params) for r in reports]
    assert [round(b.ratio_vs_fineall, 6) for b in budget.tasks.values()] == \
        [round(r.ratio_vs_fineall, 6) for r in reports]
    storage = storage_for(backbone, [r.stored_params for r in reports], [r.fineall_params for r in reports],
                          [r.mode for r in reports])
    totals = budget.storage()
    assert (totals.shared_params, totals.full_copies_params) == (storage.shared_params, storage.full_copies_params)


def test_launcher_fields_become_the_finetune_command():
    import cli
    from commands._flags import settings_from_args
    from orchestrator.settings import JobSettings
    from tui.launch import LaunchError, LaunchSettings, job_settings

    s = LaunchSettings(backbone="ckpt", spec="data", out="job", mode="finecls", workers="3", pack="auto", cpus="0.5",
                       gpus="0.25",
                       address="10.0.0.1:6379", epochs="2", max_steps="7", batch_size="16", lr="0.0005",
                       existing="resume")
    settings = job_settings(s)
    # The command line the launcher shows gives the very same settings to `finetune`.
    parsed = settings_from_args(JobSettings, cli.build_parser().parse_args(settings.command_line()[2:]))
    for args in (settings, parsed):
        t, c = args.training, args.cluster
        assert (args.backbone, args.tasks, args.out, t.mode, c.max_concurrent) == ("ckpt", "data", "job", "finecls", 3)
        assert (c.cpus, c.gpus, c.address, args.pack) == (0.5, 0.25, "10.0.0.1:6379", "auto")
        assert (t.epochs, t.max_steps, t.batch_size, t.lr, args.resume, args.force) == (2, 7, 16, 0.0005, True, False)
    assert job_settings(LaunchSettings(backbone="b", spec="s", out="o", address="local")).cluster.address is None
    for field, value, message in (("backbone", "", "backbone checkpoint: required"),
                                  ("workers", "two", "workers: expected a whole number"),
                                  ("pack", "0", "pack: must be >= 1"),
                                  ("cpus", "0", "CPUs per task: must be >= 0.01"),
                                  ("max_steps", "0", "max steps: must be >= 1")):
        bad = LaunchSettings(backbone="b", spec="s", out="o")
        setattr(bad, field, value)
        with pytest.raises(LaunchError, match=message) as error:
            job_settings(bad)
        assert error.value.field == field




@in_loop
async def test_tune_view_lists_trials_per_task_and_the_best(tmp_path):
    from orchestrator.client import SearchClient, best_trial
    from tui.app import PeterRecApp

    folder = write_trials(tmp_path / "tune")
    trials = SearchClient(folder).trials()
    assert best_trial([t for t in trials if t.task == "gender"]).trial_id == "a_00001"
    assert best_trial([t for t in trials if t.task == "coldrec_1"]).trial_id == "a_00003"  # done beats unfinished
    app = PeterRecApp(tune_dir=folder)
    async with app.run_test(size=(140, 30)) as pilot:
        await until(pilot, lambda: app.screen.trials, "the trial table")
        await pilot.pause()
        tasks = app.screen.query_one("#tune-tasks")
        assert [r.key.value for r in tasks.ordered_rows] == ["gender", "coldrec_1"]
        cells = lambda key: [str(c) for c in tasks.get_row(key)]  # noqa: E731
        # task, metric, trials, done, stopped, failed, open, baseline, best score, best trial
        assert cells("gender") == ["gender", "accuracy", "3", "2", "1", "0", "0", "0.8100", "0.8600", "a_00001"]
        assert cells("coldrec_1")[2:10] == ["3", "1", "0", "1", "1", "0.3100", "0.3100", "a_00003"]
        assert text_of(app, "#tune-config") == "best config a_00001: lr=0.0005 bottleneck_ratio=8"
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

    from orchestrator.client import SearchClient

    def read_trials(folder):
        return SearchClient(folder).trials()

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
    assert out.splitlines()[-5] == "job done: 97 done, 3 failed of 100 tasks"  # after every task's line
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
        assert f"backbone + 4 patch sets = {1_280 + patches:,}" in text_of(app, "#efficiency")
        # TensorBoard: one run per task under JOB_DIR, readable as standard event files.
        for name, row in results.items():
            scalars = tensorboard_scalars(out / "tensorboard" / name)
            assert scalars["loss/train"] and all(step >= 1 for step, _ in scalars["loss/train"])
            assert scalars[f"test/{row['metric'].replace('@', '_at_')}"][-1][1] == pytest.approx(row["value"], abs=1e-6)
        # Each task's log: its attempt, progress lines and its end, as the worker recorded them.
        log = app.client.log(next(iter(results)))
        assert log[0].startswith("attempt 1 on ") and any(line.startswith("step ") for line in log)
        assert log[-1].startswith("done in ")
        # The detail of the first task: its curves and the settings its bundle entry records.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.config, "the detail")
        assert app.screen.config["source"] == "bundle entry" and app.screen.config["train.max_steps"] == 6
        assert len(app.screen.query_one("#loss-chart").series[0].points) >= 1
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
    import io

    from rich.console import Console

    from orchestrator.client import JobClient, launch
    from orchestrator.state import read_state
    from tui import view as v
    from tui.app import PeterRecApp
    from tui.console import PlainDisplay
    from tui.launch import LaunchSettings, job_settings

    spec, backbone_dir = world
    out = tmp_path / "job"
    settings = job_settings(LaunchSettings(backbone=str(backbone_dir), spec=str(spec), out=str(out), workers="1",
                                           epochs="100000", batch_size="16"))
    app = PeterRecApp(job=lambda: launch(settings))
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
    # One truth after cancel -> retry -> stop: the UI's last view, state.json, a client reading the job
    # afterwards and the command's final line say the same of every task. The retried task is queued
    # again (not failed), and an interrupted one keeps none of the numbers of the attempt it left.
    saved = read_state(out)
    state = JobClient.attach(out).state()
    statuses = {n: t.status for n, t in state.tasks.items()}
    assert statuses == {n: t.status for n, t in saved.tasks.items()} == \
        {n: t.status for n, t in app.view.state.tasks.items()}
    assert set(statuses.values()) == {"queued"} and state.status == saved.status == "stopped"
    assert all(t.step == 0 and t.loss is None and t.history == [] for t in saved.tasks.values())
    assert read_results(out) == []  # nothing finished for good: `--resume` runs the four
    assert "0 done  0 running  4 queued  0 failed" in v.summary_text(app.view).plain
    console = Console(file=io.StringIO(), width=100)
    with PlainDisplay(JobClient.attach(out), console, replay=True):
        pass
    assert console.file.getvalue().splitlines()[-1] == "job stopped: 4 queued of 4 tasks"


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
