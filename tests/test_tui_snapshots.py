"""Snapshots of the terminal UI (pytest-textual-snapshot): a finished 100-task job reviewed from its files
(fixed names and numbers, no clocks), at 80x24 and 200x50, filtered, one task's detail, and a search's
trials. Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update` and
look at the SVGs in tests/__snapshots__/ before committing them.
"""

from __future__ import annotations

from support import review_job, settled, until, write_trials


def dashboard(tmp_path):
    from orchestrator.client import JobClient
    from tui.app import PeterRecApp

    return PeterRecApp(client=JobClient.attach(review_job(tmp_path)))


def test_dashboard_80x24(snap_compare, tmp_path):
    assert snap_compare(dashboard(tmp_path), terminal_size=(80, 24), run_before=settled)


def test_dashboard_200x50(snap_compare, tmp_path):
    assert snap_compare(dashboard(tmp_path), terminal_size=(200, 50), run_before=settled)


def test_dashboard_only_failed_80x24(snap_compare, tmp_path):
    async def only_failed(pilot):
        await settled(pilot)
        await pilot.press("f", "f")

    assert snap_compare(dashboard(tmp_path), terminal_size=(80, 24), run_before=only_failed)


def test_failed_task_detail_100x34(snap_compare, tmp_path):
    async def open_failed(pilot):
        from tui.detail import TaskDetailScreen

        await settled(pilot)
        await pilot.press("f", "f", "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, TaskDetailScreen) and pilot.app.screen.config,
                    "the detail screen")
        await pilot.pause()

    assert snap_compare(dashboard(tmp_path), terminal_size=(100, 34), run_before=open_failed)


def test_tune_view_120x24(snap_compare, tmp_path, monkeypatch):
    from tui.app import PeterRecApp

    monkeypatch.chdir(tmp_path)
    write_trials(tmp_path / "tune")

    async def loaded(pilot):
        await until(pilot, lambda: pilot.app.screen.trials, "the trial table")
        await pilot.pause()

    assert snap_compare(PeterRecApp(tune_dir="tune"), terminal_size=(120, 24), run_before=loaded)
