"""What a job's driver records for the views, beside results and bundle: each task's log (its prints,
progress lines, a failure's traceback), its queue wait, the job's pace, the cluster's use (Ray's own view),
TensorBoard runs; and that no more units run than the cluster has slots for. One real job on Ray (2 CPUs)
serves most checks; the parts are also tested alone, without Ray. A running search's live trials.parquet
is at the end.
"""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from orchestrator import state as st
from support import make_world, tensorboard_scalars, wait_for


# One real job ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    from orchestrator.cluster import connect

    cluster = connect(num_cpus=2, object_store_mb=100)
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def watched_job(tmp_path_factory, ray_cluster):
    """A 5-task job whose second task fails its first attempt (PETERREC_FAIL_TASKS); every unit in flight is
    counted as the executor hands it out and takes it back, and the state is kept at every tick."""
    import os

    from orchestrator import executors, job as job_module
    from orchestrator.client import launch
    from orchestrator.settings import JobSettings
    from support import task_names

    root = tmp_path_factory.mktemp("watched")
    spec, backbone = make_world(root, tasks=5)
    names = task_names(spec)
    settings = JobSettings(backbone=str(backbone), tasks=str(spec), out=str(root / "job"))
    settings.training.max_steps, settings.training.epochs, settings.training.batch_size = 40, 1, 16
    in_flight, peak, executors_made = set(), [0], []

    class CountingExecutor(executors.RayExecutor):
        def __init__(self, options):
            super().__init__(options)
            executors_made.append(self)

        def submit(self, unit, plan, faults):
            handle = super().submit(unit, plan, faults)
            in_flight.add(handle)
            peak[0] = max(peak[0], len(in_flight))
            return handle

        def take(self, handle, unit):
            try:
                got = super().take(handle, unit)
            except Exception:
                in_flight.discard(handle)
                raise
            if got is None or not unit.packed:
                in_flight.discard(handle)
            return got

    ticks = []
    old = os.environ.get("PETERREC_FAIL_TASKS")
    os.environ["PETERREC_FAIL_TASKS"] = f"{names[1]}:1"
    original = job_module.RayExecutor
    job_module.RayExecutor = CountingExecutor
    try:
        job = launch(settings)
        final = job.run(on_tick=lambda state: ticks.append(st.JobState.from_dict(state.to_dict())))
    finally:
        job_module.RayExecutor = original
        if old is None:
            os.environ.pop("PETERREC_FAIL_TASKS")
        else:
            os.environ["PETERREC_FAIL_TASKS"] = old
    return {"job_dir": root / "job", "names": names, "final": final, "ticks": ticks, "peak": peak[0],
            "executor": executors_made[0]}


def test_no_more_units_in_flight_than_the_cluster_has_slots(watched_job):
    """Ray would queue the rest by their resources, but a worker blocked in ray.get lends its CPU to a queued
    one: the driver holds the rest back, so 2 CPUs never train 3 tasks."""
    assert watched_job["executor"].max_in_flight == 2
    assert 1 <= watched_job["peak"] <= 2
    assert all(sum(t.status == "running" for t in s.tasks.values()) <= 2 for s in watched_job["ticks"])


def test_each_task_has_its_log_with_a_failures_traceback(watched_job):
    from orchestrator.client import JobClient

    client = JobClient.attach(watched_job["job_dir"])
    flaky = client.log(watched_job["names"][1])
    assert flaky[0].startswith("attempt 1 on 127.0.0.1 (pid ")
    traceback_at = flaky.index("Traceback (most recent call last):")
    assert any("InjectedFailure: injected failure of attempt 1" in line for line in flaky[traceback_at:])
    assert any(line.startswith("attempt 1 failed: InjectedFailure") and "it runs again (2 attempts left)" in line
               for line in flaky)
    assert any(line.startswith("attempt 2 on ") for line in flaky) and flaky[-1].startswith("done in ")
    plain = client.log(watched_job["names"][0])
    assert plain[0].startswith("attempt 1 on ") and plain[-1].startswith("done in ")
    assert any(line.startswith("step ") and "samples/s" in line for line in plain)


def test_the_driver_records_pace_queue_waits_and_the_clusters_use(watched_job):
    ticks, final = watched_job["ticks"], watched_job["final"]
    assert any((s.pace.get("samples_per_s") or 0) > 0 and s.pace.get("eta_s") is not None for s in ticks)
    assert final.pace == {}  # a job that is over has no pace
    usage = next(s.usage for s in ticks if s.usage.get("nodes"))
    (node,) = usage["nodes"]
    assert node["ip"] == "127.0.0.1" and node["cpu"][1] == 2.0 and node["object_store"][1] > 0
    for task in final.tasks.values():
        assert task.queue_wait is not None and task.queue_wait >= 0.0
        assert task.submitted_at <= task.attempt_started_at


def test_every_task_is_a_tensorboard_run(watched_job):
    from orchestrator.results import read_results

    job_dir = watched_job["job_dir"]
    for row in read_results(job_dir):
        run = job_dir / "tensorboard" / row["task"]
        scalars = tensorboard_scalars(run)
        tag = row["metric"].replace("@", "_at_")
        assert scalars["loss/train"] and scalars[f"valid/{tag}"]
        assert scalars[f"test/{tag}"] == [(scalars[f"test/{tag}"][0][0], pytest.approx(row["value"], abs=1e-6))]
    flaky = job_dir / "tensorboard" / watched_job["names"][1]  # its first attempt failed before a step
    assert [p.name.rsplit(".", 1)[-1] for p in flaky.glob("events.*")] == ["attempt2"]


# The parts alone ------------------------------------------------------------------------------------------


class Hub:
    def __init__(self):
        self.lines = []

    def log(self, name, attempt, lines):
        self.lines += lines


def test_a_tasks_log_takes_what_its_thread_prints_and_its_warnings_only():
    import sys

    from orchestrator.worker import TaskLog, capture

    hub = Hub()
    log = TaskLog(hub, "a", 1)
    stdout = sys.stdout
    others = threading.Event()

    def another_thread():
        print("not the task's")
        others.set()

    with capture([log]):
        print("loading", end="")
        print(" done")
        threading.Thread(target=another_thread).start()
        others.wait(10)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a warning of the task")
        try:
            raise ValueError("bad value")
        except ValueError as e:
            log.failure(e)
    assert sys.stdout is stdout  # put back
    log.flush()
    assert hub.lines[0] == "loading done" and "not the task's" not in hub.lines
    assert any("UserWarning: a warning of the task" in line for line in hub.lines)
    assert "Traceback (most recent call last):" in hub.lines
    assert hub.lines[-1] == "ValueError: bad value"


def test_the_hub_hands_out_each_log_line_once_and_keeps_the_latest():
    from orchestrator.hub import ProgressHub

    hub = ProgressHub([st.TaskState("a", "classify", "accuracy").to_dict()])
    hub.log("a", 1, ["one", "two"])
    first = hub.snapshot(0)
    hub.log("a", 1, [f"line {i}" for i in range(st.LOG_LINES + 5)])
    second = hub.snapshot(first["version"])
    assert first["logs"] == {"a": ["one", "two"]}
    assert len(second["logs"]["a"]) == st.LOG_LINES and second["logs"]["a"][-1] == f"line {st.LOG_LINES + 4}"
    assert hub.snapshot(second["version"])["logs"] == {}


def test_tensorboard_runs_from_task_states(tmp_path):
    from orchestrator.tensorboard import JobBoard

    board = JobBoard(tmp_path)
    task = st.TaskState("t", "coldrec", "mrr@5", attempts=1, status=st.RUNNING)
    task.add_point(10, 1.0, None, 1000.0)
    board.update({"t": task}, ["t"])
    task.add_point(10, 1.0, 0.2, 1000.0)  # the same step comes back with its evaluation
    task.add_point(20, 0.5, 0.3, 1010.0)
    task.status, task.value = st.DONE, 0.25
    board.update({"t": task}, ["t"])
    board.close()
    scalars = tensorboard_scalars(tmp_path / "tensorboard" / "t")
    assert scalars["loss/train"] == [(10, 1.0), (20, 0.5)]
    assert scalars["valid/mrr_at_5"] == [(10, pytest.approx(0.2)), (20, pytest.approx(0.3))]
    assert scalars["test/mrr_at_5"] == [(20, 0.25)]


# A running search, followed from its trials.parquet ------------------------------------------------------


def test_a_running_search_rewrites_its_trials_as_they_stand(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from orchestrator.client import SearchClient
    from orchestrator.tune import monitor as monitor_module
    from orchestrator.tune.monitor import SearchMonitor

    class NoHub:
        def snapshot(self, since):
            return {"version": since, "tasks": {}}

        def finished(self, *args, **kwargs):
            pass

    plan = SimpleNamespace(points=[1, 2, 3], tasks=[SimpleNamespace(name="gender", metric="accuracy")],
                           out_dir=tmp_path)
    monitor = SearchMonitor(plan, NoHub())

    def trial(i, status, result):  # a reported result names its trial (Tune adds trial_id to each)
        return SimpleNamespace(trial_id=f"t_{i}", status=status, path=str(tmp_path / f"trial{i}"),
                               last_result={**result, "trial_id": f"t_{i}"} if result else {},
                               config={"task": "gender", "sample": i, "lr": 0.01 * (i + 1)})

    monitor.step([trial(0, "RUNNING", {"best_valid": 0.7, "step": 40}), trial(1, "PENDING", {}),
                  trial(2, "TERMINATED", {"best_valid": 0.8, "final": True, "test_value": 0.75})])
    search = SearchClient(tmp_path)
    rows = {t.trial_id: t for t in search.trials()}
    assert (rows["t_0"].status, rows["t_0"].score, rows["t_0"].state) == ("running", 0.7, "open")
    assert (rows["t_1"].status, rows["t_2"].status, rows["t_2"].test_value) == ("pending", "done", 0.75)
    monitor.step([trial(0, "RUNNING", {"best_valid": 0.72, "step": 80})])  # within LIVE_S: not written yet
    assert not search.changed()
    monkeypatch.setattr(monitor_module, "LIVE_S", 0.0)
    monitor.step([trial(0, "TERMINATED", {"best_valid": 0.9, "final": True, "test_value": 0.8})])
    wait_for(search.changed, timeout=5)
    assert {t.trial_id: t.status for t in search.trials()} == {"t_0": "done", "t_1": "pending", "t_2": "done"}
    assert search.updated_at() <= time.time()


def test_readers_never_see_a_file_being_replaced(tmp_path):
    """results.parquet and trials.parquet are replaced (rename) while UIs read them: a reader keeps one handle
    (pyarrow opens a path twice, footer then pages, and could mix two files)."""
    from orchestrator.results import read_results, write_results
    from orchestrator.tune.results import read_trials, trial_row, write_trials

    rows = [{"task": f"t{i:03d}", "kind": "classify", "mode": "peterrec", "status": "done", "metric": "accuracy",
             "value": 0.5, "seconds": 1.0, "attempts": 1} for i in range(100)]
    trials = [trial_row("accuracy", {"task": f"t{i:03d}", "sample": i, "lr": 0.01}, f"a_{i}", "running",
                        {"best_valid": 0.5}) for i in range(100)]
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            write_results(tmp_path, rows[:50 + i % 50])
            write_trials(tmp_path, trials[:50 + i % 50])
            i += 1

    write_results(tmp_path, rows)
    write_trials(tmp_path, trials)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            assert 50 <= len(read_results(tmp_path)) <= 100
            assert 50 <= len(read_trials(tmp_path)) <= 100
    finally:
        stop.set()
        thread.join()
