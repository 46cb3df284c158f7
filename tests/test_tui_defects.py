"""The wrong or stale figures of issue 17, one test each, on jobs written from fixed numbers (no Ray): rows of
tasks sent back to the queue, a lost job, throughput and ETA, the CPUs in use, the parameter budget's words
and sums, the tune view, what fits at 80x24 and 60 columns, and `tui --attach` without a terminal. (One truth
after cancel -> retry -> stop is checked on a real job in test_tui.py; the driver's side in test_job_watch.py.)
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from orchestrator import state as st
from support import in_loop, live_job, tiny_world, review_job, table_rows, text_of, until, write_trials


async def shown(pilot, what: str = "the job's rows") -> None:
    app = pilot.app
    await until(pilot, lambda: app.view is not None and app.screen.query("#tasks")
                and app.screen.query_one("#tasks").row_count, what)
    await pilot.pause(0.2)


def attach(job_dir):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    return PeterRecApp(client=JobClient.attach(job_dir))


# Stale rows --------------------------------------------------------------------------------------------------


@in_loop
async def test_a_task_back_in_the_queue_shows_none_of_its_old_numbers(tmp_path):
    """A task sent back to the queue with its last attempt's numbers still in its state (an older driver
    kept them): its row shows no bar, loss, metric or ETA, whatever the state holds."""
    job = live_job(tmp_path, tasks_changes={5: {"status": "queued", "step": 150, "total": 200, "loss": 0.3,
                                                "metric": 0.7, "history": [[150, 0.3, 0.7]]}})
    app = attach(job)
    async with app.run_test(size=(160, 30)) as pilot:
        await shown(pilot)
        row = table_rows(app)["task_05"]
        assert row["status"] == "queued"
        assert (row["progress"], row["step"], row["loss"], row["metric"], row["eta"]) == ("", "", "", "", "")
        assert table_rows(app)["task_00"]["loss"] == "0.0100"  # a running task keeps its own


def test_requeued_tasks_lose_the_numbers_of_the_attempt_they_left(tmp_path):
    from orchestrator.hub import ProgressHub
    from orchestrator.results import JobOutputs, read_results, write_results

    hub = ProgressHub([st.TaskState("a", "classify", "accuracy").to_dict()])
    hub.started("a", "node", 1)
    hub.report("a", 1, 5, 10, 0, 0.5, 0.6, 100.0)
    hub.queued(["a"])
    task = hub.tasks["a"]
    assert (task.status, task.step, task.total, task.loss, task.metric, task.history) == ("queued", 0, 0, None, None, [])
    write_results(tmp_path, [{"task": "a", "kind": "classify", "mode": "peterrec", "status": "failed",
                              "error": "cancelled", "seconds": 1.0, "attempts": 1}])
    JobOutputs(tmp_path, None, "", read_results(tmp_path)).requeued(["a"])
    assert read_results(tmp_path) == []  # results.parquet no longer says `failed` of a task queued again


@in_loop
async def test_a_lost_job_shows_no_task_running(tmp_path):
    """The driver is gone (its process is not the one state.json names): its running and retrying tasks
    are back in the queue for --resume, with no frozen ETA, rate or throughput."""
    job = live_job(tmp_path, pid_started=0.0)
    app = attach(job)
    async with app.run_test(size=(160, 30)) as pilot:
        await shown(pilot)
        assert app.view.state.status == "lost"
        rows = table_rows(app)
        assert [rows[f"task_0{i}"]["status"] for i in range(3)] == ["queued"] * 3
        assert all(rows[f"task_0{i}"][k] == "" for i in range(3) for k in ("eta", "rate", "progress", "loss"))
        summary = text_of(app, "#summary")
        assert " lost " in summary and "0 running" in summary and "ETA" not in summary and "throughput" not in summary


# Throughput and ETA -------------------------------------------------------------------------------------------


def tasks_of(n: int, total: int = 10) -> dict:
    return {f"t{i}": st.TaskState(f"t{i}", "classify", "accuracy", total=total) for i in range(n)}


def test_throughput_counts_tasks_that_finish_between_two_looks():
    """1,000 short tasks, each started and finished between two pulls of the driver (so no task is ever
    seen running with a rate of its own): the pace still counts every sample they trained."""
    from orchestrator.pace import Pace

    tasks = tasks_of(1000)
    pace = Pace({n: 10 for n in tasks}, {n: 32 for n in tasks})
    pace.update(tasks, 0.0)
    for second in range(1, 11):  # 100 tasks done per second
        for i in range(100 * (second - 1), 100 * second):
            task = tasks[f"t{i}"]
            task.status, task.step, task.attempts = st.DONE, 10, 1
        pace.update(tasks, float(second))
    figures = pace.figures()
    assert figures["samples_per_s"] == pytest.approx(100 * 10 * 32)
    assert figures["steps_left"] == 0 and figures["eta_s"] == 0.0
    assert st.JobState("j", pace=figures, tasks=tasks).samples_per_s == pytest.approx(32_000)


def test_eta_follows_finished_work_and_does_not_jump():
    """Ten tasks at a steady 20 steps/s in all; one task's last 190 steps arrive at once (its report was
    late). The ETA, from finished steps per second smoothed, moves by little between looks 3 s apart."""
    from orchestrator.pace import Pace

    tasks = tasks_of(10, total=1000)
    pace = Pace({n: 1000 for n in tasks}, {n: 16 for n in tasks})
    etas = []
    for second in range(0, 61, 3):
        for task in tasks.values():
            task.status, task.attempts, task.step = st.RUNNING, 1, 2 * second
        if second >= 30:
            tasks["t0"].step = 2 * second + 190  # the late burst, from then on
        pace.update(tasks, float(second))
        if pace.figures()["eta_s"] is not None:
            etas.append(pace.figures()["eta_s"])
    assert len(etas) >= 15
    assert all(0.8 < later / earlier < 1.05 for earlier, later in zip(etas, etas[1:]))
    left = sum(1000 - t.step for t in tasks.values())
    assert etas[-1] == pytest.approx(left / 20, rel=0.35)  # about steps left / the steady rate


@in_loop
async def test_the_header_shows_the_drivers_throughput_and_eta(tmp_path):
    """Running tasks with no rate of their own yet: the header shows the driver's measured pace, not 0."""
    job = live_job(tmp_path, tasks_changes={i: {"samples_per_s": None} for i in range(3)})
    app = attach(job)
    async with app.run_test(size=(160, 30)) as pilot:
        await shown(pilot)
        summary = text_of(app, "#summary")
        assert "throughput 4,321 samples/s" in summary
        assert "ETA 40s" in summary or "ETA 39s" in summary  # counted down from the driver's measure


# CPU in use ------------------------------------------------------------------------------------------------


@in_loop
async def test_cpus_in_use_never_exceed_the_cluster(tmp_path):
    """Two tasks training and one waiting for its retry on a 2-CPU cluster: 2 CPUs in use, not 3."""
    app = attach(live_job(tmp_path))
    async with app.run_test(size=(160, 30)) as pilot:
        await shown(pilot)
        summary = text_of(app, "#summary")
        assert "CPU 2/2" in summary and "2 running" in summary and "1 retrying" in summary


# The parameter budget --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def job_over(world, tmp_path, mode: str, done: int):
    """JOB_DIR of a running job over the world in `mode`, its first `done` tasks finished (results rows
    with their measured parameters, as the driver writes them)."""
    from orchestrator.client import plan_tasks
    from orchestrator.results import write_results
    from peterrec.finetune import FinetuneSettings
    from tasks import load_spec

    spec, backbone = world
    settings = FinetuneSettings(mode=mode)
    budget = plan_tasks(backbone, spec, settings)
    job = live_job(tmp_path, tasks=0, mode=mode, spec=str(spec), backbone=str(backbone), settings=settings.to_dict())
    state = st.read_state(job)
    rows = []
    for i, t in enumerate(load_spec(spec).tasks):
        task = state.tasks[t.name] = st.TaskState(t.name, t.kind, t.metric)
        if i < done:
            task.status, task.value, task.attempts = st.DONE, 0.5, 1
            rows.append({"task": t.name, "kind": t.kind, "mode": mode, "status": "done", "metric": t.metric,
                         "value": 0.5, **budget.tasks[t.name].to_dict(), "seconds": 1.0, "attempts": 1})
    st.write_state(job, state)
    write_results(job, rows)
    return job, budget


@in_loop
async def test_early_in_a_job_the_budget_is_the_whole_jobs(world, tmp_path):
    """One task of four done: the storage line is the job's (planned for every task), not "1 full copy,
    113% (larger)"; a line below says how far the job is."""
    job, budget = job_over(world, tmp_path, "peterrec", done=1)
    app = attach(job)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.view is not None and app.view.budget is not None, "the budget")
        await pilot.pause(0.2)
        text = text_of(app, "#efficiency")
        whole = budget.storage()
        assert f"backbone + 4 patch sets = {whole.shared_params:,}, {100 * whole.ratio:.1f}% of 4 full copies" in text
        assert whole.ratio < 1 and "larger" not in text
        assert "1 of 4 done" in text and "as planned" in text


@in_loop
async def test_peterzero_budget_words_and_sums_agree(world, tmp_path):
    """PeterZero tasks each store a random backbone of their own: the panel does not say the shared one is
    held, and its sum is the tasks' stored parameters alone (no extra backbone, none missing)."""
    job, budget = job_over(world, tmp_path, "peterzero", done=4)
    stored = sum(t.stored_params for t in budget.tasks.values())
    app = attach(job)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.view is not None and app.view.budget is not None, "the budget")
        await pilot.pause(0.2)
        text = text_of(app, "#efficiency")
        assert "held once" not in text and "not stored: every task holds a backbone of its own" in text
        assert f"4 patch sets + own backbones = {stored:,}," in text


@pytest.mark.parametrize("mode", ["peterzero", "fineall", "finecls", "finelast", "peterrec"])
def test_launcher_budget_words_and_sums_agree_with_the_mode(world, mode):
    from orchestrator.client import plan_tasks
    from peterrec.finetune import FinetuneSettings
    from peterrec.modes import MODES
    from tui.launcher import budget_text

    spec, backbone = world
    budget = plan_tasks(backbone, spec, FinetuneSettings(mode=mode))
    text = budget_text(budget, mode).plain
    stored = sum(t.stored_params for t in budget.tasks.values())
    reads_backbone = MODES[mode].needs_shared_backbone
    assert ("held once" in text) == reads_backbone
    total = stored + (budget.backbone_params if reads_backbone else 0)
    held = {"peterzero": "4 patch sets + own backbones", "fineall": "4 full models", "finecls": "backbone + 4 heads",
            "finelast": "backbone + 4 last-blocks copies", "peterrec": "backbone + 4 patch sets"}[mode]
    assert f"storage: {held} = {total:,} params" in text


# The tune view ----------------------------------------------------------------------------------------------


def long_trials(folder):
    """A search whose best config is long (over 200 characters) and ends in weight_decay=0.01."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_trials(folder)
    table = pq.read_table(folder / "trials.parquet").to_pylist()
    config = {f"knob_{i:02d}": 0.000123 * (i + 1) for i in range(16)} | {"weight_decay": 0.01}
    table[1]["config"] = json.dumps(config)
    pq.write_table(pa.Table.from_pylist(table), folder / "trials.parquet")
    return folder, config


@in_loop
async def test_tune_view_tab_switches_tables_and_shows_whole_configs(tmp_path):
    from tui.app import PeterRecApp

    folder, config = long_trials(tmp_path / "tune")
    app = PeterRecApp(tune_dir=folder)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.screen.trials, "the trial table")
        await pilot.pause()
        tasks, trials = app.screen.query_one("#tune-tasks"), app.screen.query_one("#tune-trials")
        assert app.screen.focused is tasks
        shown_config = text_of(app, "#tune-config")
        assert len(shown_config) > 200 and shown_config.endswith("weight_decay=0.01")
        assert "knob_15=0.001968" in shown_config  # six digits, not cut to 0
        await pilot.press("tab")
        assert app.screen.focused is trials
        await pilot.press("down")  # the trial under the cursor: its config
        assert text_of(app, "#tune-config").startswith("config of trial a_00000:")
        await pilot.press("tab")
        assert app.screen.focused is tasks
        # At 80 columns the task table's columns fit whole (its header is never cut).
        assert sum(c.width + 2 for c in tasks.columns.values()) <= 80 - 2
        assert [str(c.label) for c in tasks.columns.values()][-2:] == ["best", "best trial"]


# What fits at 80x24 and 60 columns -------------------------------------------------------------------------


@in_loop
async def test_launcher_fields_fit_80_columns(tmp_path):
    from tui.app import PeterRecApp
    from tui.launch import LaunchSettings

    app = PeterRecApp(defaults=LaunchSettings(lr="0.0005", batch_size="1024", max_steps="100000"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        form = app.screen.query_one("#form")
        right = form.scrollable_content_region.right  # inside the scrollbar, when the form has one
        for field in app.screen.query("Input"):
            assert field.region.right <= right, field.id
            assert field.content_region.width > len(field.value), field.id


@in_loop
async def test_launcher_errors_are_whole_and_name_its_own_controls(world, tmp_path):
    from tui.app import PeterRecApp
    from tui.launch import LaunchSettings

    spec, backbone = world
    out = tmp_path / "job"
    out.mkdir()
    (out / "something").write_text("x")
    app = PeterRecApp(defaults=LaunchSettings(backbone=str(backbone), spec=str(spec), out=str(out)))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+s")
        status = app.screen.query_one("#launch-status")
        await until(pilot, lambda: "not empty" in text_of(app, "#launch-status"), "the error")
        await pilot.pause(0.2)
        message = text_of(app, "#launch-status")
        assert "--resume" not in message and "--force" not in message
        assert "pick 'resume (keep finished tasks)' in 'if it exists'" in message
        lines = Console(width=status.content_region.width).render_lines(message, pad=False)
        assert status.content_region.height >= len(lines)  # every line of it on screen
        assert app.screen.focused.id == "existing"


@in_loop
async def test_footer_shows_every_key_whole_at_60_columns(tmp_path):
    from tui.keys import KeyFooter, screen_keys

    app = attach(review_job(tmp_path))
    async with app.run_test(size=(60, 24)) as pilot:
        await shown(pilot)
        footer = app.screen.query_one(KeyFooter)
        lines = str(footer.render()).splitlines()
        assert len(lines) == footer.size.height and all(len(line) <= footer.content_size.width for line in lines)
        text = " ".join(lines)
        for key in ("x Stop", "s/S Sort/rev", "esc Clear", "? Help", "q Quit"):
            assert key in text
        assert all(b.description in text or b.group for _, b, _ in screen_keys(app.screen, shown_only=True))


@pytest.mark.parametrize("width", [80, 60])
def test_results_table_keeps_names_and_numbers_whole(tmp_path, width):
    from orchestrator.results import read_results
    from tui.console import results_table

    rows = read_results(review_job(tmp_path, tasks=12, failed=(6,)))
    rows[0]["task"] = "a_rather_long_task_name_0"
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(results_table(rows))
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines())
    for r in rows:
        assert r["task"] in text
        if r["status"] == "done":
            assert f"{r['value']:.4f}" in text and f"{r['ratio_vs_fineall']:.2f}%" in text
    assert "…" not in text


# Without a terminal ----------------------------------------------------------------------------------------


def test_plain_lines_end_with_the_jobs_status_after_its_last_tasks():
    """A job that finishes between two looks: its last task lines come first, then "job done"."""
    from tui.console import PlainDisplay

    states = []
    for finished in (18, 20):
        state = st.JobState("job", status=st.JOB_RUNNING if finished < 20 else st.JOB_DONE)
        for i in range(20):
            task = state.tasks[f"t{i:02d}"] = st.TaskState(f"t{i:02d}", "classify", "accuracy")
            if i < finished:
                task.status, task.value, task.attempts, task.seconds = st.DONE, 0.5, 1, 1.0
        states.append(state)
    client = type("Client", (), {"state": lambda self: states[0] if len(states) == 2 else states[-1]})()
    console = Console(file=io.StringIO(), width=120)
    display = PlainDisplay(client, console, replay=True)
    with display:
        display.update()
        states.pop(0)
    lines = console.file.getvalue().splitlines()
    assert lines[-1] == "job done: 20 done of 20 tasks"
    assert lines[-3:-1] == ["[19/20] t18 done accuracy 0.5000 (1.0 s, 1 attempt)",
                            "[20/20] t19 done accuracy 0.5000 (1.0 s, 1 attempt)"]
    assert lines[18] == "job running: 18 done, 2 queued of 20 tasks"
