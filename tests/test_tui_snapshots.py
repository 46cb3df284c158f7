"""Snapshots of the terminal UI (pytest-textual-snapshot): a finished 100-task job reviewed from its files
(fixed names and numbers, no clocks) at 80x24 and 200x50: the dashboard, the help screen, a failed task's
log, the resources screen and a search's trials; the dashboard filtered to failed tasks, and a task's
curves. Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update` and look
at the SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest

from support import review_job, settled, until, write_trials

SIZES = [(80, 24), (200, 50)]


def dashboard(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    return PeterRecApp(client=JobClient.attach(review_job(tmp_path)))


def pressing(*keys, until_screen=None, ready=None):
    """run_before: the job's final state shown, then `keys`, then wait for `until_screen` (and `ready`)."""
    async def run(pilot):
        await settled(pilot)
        await pilot.press(*keys)
        if until_screen is not None:
            await until(pilot, lambda: isinstance(pilot.app.screen, until_screen)
                        and (ready is None or ready(pilot.app.screen)), "the screen")
        await pilot.pause(0.2)
    return run


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard(snap_compare, tmp_path, size):
    assert snap_compare(dashboard(tmp_path), terminal_size=size, run_before=settled)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help(snap_compare, tmp_path, size):
    from tui.keys import HelpScreen

    assert snap_compare(dashboard(tmp_path), terminal_size=size,
                        run_before=pressing("question_mark", until_screen=HelpScreen))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_failed_task_log(snap_compare, tmp_path, size):
    from tui.detail import TaskDetailScreen

    assert snap_compare(dashboard(tmp_path), terminal_size=size,
                        run_before=pressing("n", "l", until_screen=TaskDetailScreen, ready=lambda s: s.log_lines))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_resources(snap_compare, tmp_path, size):
    from tui.resources import ResourcesScreen

    assert snap_compare(dashboard(tmp_path), terminal_size=size, run_before=pressing("u", until_screen=ResourcesScreen))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tune_view(snap_compare, tmp_path, monkeypatch, size):
    from tui.app import PeterRecApp

    monkeypatch.chdir(tmp_path)
    write_trials(tmp_path / "tune")

    async def loaded(pilot):
        await until(pilot, lambda: pilot.app.screen.trials, "the trial table")
        await pilot.pause(0.2)

    assert snap_compare(PeterRecApp(tune_dir="tune"), terminal_size=size, run_before=loaded)


def test_dashboard_only_failed_grouped_80x24(snap_compare, tmp_path):
    assert snap_compare(dashboard(tmp_path), terminal_size=(80, 24), run_before=pressing("f", "f", "g", "g"))


def test_failed_task_curves_100x34(snap_compare, tmp_path):
    from tui.detail import TaskDetailScreen

    assert snap_compare(dashboard(tmp_path), terminal_size=(100, 34),
                        run_before=pressing("n", "enter", until_screen=TaskDetailScreen, ready=lambda s: s.config))
