"""Reliability on one machine: a worker node removed mid-job, and the driver killed (SIGKILL) then resumed.

Each scenario owns its Ray cluster, so each runs in a child process: the node-removal scenario is
this file run as a script (`python tests/test_orchestrator_cluster.py remove-node ...`), the kill
scenario is the real CLI. Neither touches the Ray of the pytest process.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import bundle_hashes, finetune_args, make_world, task_names, wait_for  # noqa: E402

MB = 1024 * 1024
# Long enough (seconds per task) that the node is surely removed while its task or pack still trains.
STEPS = 800


def remove_node_scenario(spec: str, backbone: str, out: str, pack: str = "1") -> dict:
    """A head with 0 CPUs and two 1-CPU worker nodes on loopback; once both nodes run a task (or a
    pack of tasks), one node is removed. Returns what the test checks."""
    import orchestrator  # noqa: F401  (sets Ray's loopback environment before Ray is imported)
    import ray
    from ray.cluster_utils import Cluster

    from commands._flags import settings_from_args
    from orchestrator.job import FinetuneJob, JobOptions
    from orchestrator.plan import plan_for
    from orchestrator.settings import JobSettings
    from orchestrator.results import read_results

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * MB, "include_dashboard": False,
        # Notice a dead node within a few seconds rather than the default half minute.
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=80 * MB) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        import cli

        args = cli.build_parser().parse_args(finetune_args(spec, backbone, out, steps=STEPS) + ["--epochs", "1000"])
        plan = plan_for(settings_from_args(JobSettings, args))
        job = FinetuneJob(plan, JobOptions(cpus_per_task=1, retries=2, pack=pack))
        removed, seen = {}, {}

        def on_tick(state):
            running = [n for n, t in state.tasks.items() if t.status == "running"]
            training = {t.pid for t in state.tasks.values() if t.status == "running" and t.step > 0}
            if removed:  # what each task showed after the removal, in order (repeats dropped)
                for name, task in state.tasks.items():
                    shown = seen.setdefault(name, [])
                    if not shown or shown[-1] != [task.status, task.attempts]:
                        shown.append([task.status, task.attempts])
            if not removed and len(training) == 2:  # both nodes' workers are past their first step
                cluster.remove_node(workers[1])
                removed.update(running=running, done=[n for n, t in state.tasks.items() if t.status == "done"])

        state = job.run(on_tick)
        return {"removed": removed, "rows": read_results(out), "bundle": sorted(bundle_hashes(out)),
                "attempts": {n: t.attempts for n, t in state.tasks.items()}, "status": state.status,
                "ips": state.cluster["node_ips"], "nodes": state.cluster["nodes"],
                "alive_after": sum(n["Alive"] for n in ray.nodes()), "seen": seen,
                "lost_nodes": state.cluster.get("lost_nodes", [])}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("pack", [1, 3], ids=["alone", "packs"])
def test_job_survives_removing_a_worker_node(tmp_path, pack):
    """Alone: Ray retries the lost task elsewhere. Packs (6 tasks, 2 nodes: two packs of 3): the lost
    pack's tasks run again together on the node left."""
    spec, backbone = make_world(tmp_path, tasks=6)
    out = tmp_path / "job"
    child = subprocess.run([sys.executable, __file__, "remove-node", str(spec), str(backbone), str(out), str(pack)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    names = sorted(task_names(spec))
    assert report["nodes"] == 3 and report["ips"] == ["127.0.0.1"] and report["alive_after"] == 2
    # Removed while both nodes were training: a task (or a pack of `pack` tasks) on each, at least.
    assert len(report["removed"]["running"]) >= 2 * pack, report["removed"]
    rows = report["rows"]
    assert sorted(r["task"] for r in rows) == names  # every task once: none lost, none duplicated
    assert all(r["status"] == "done" for r in rows), rows
    assert report["bundle"] == names and report["status"] == "done"
    # The task on the removed node was run again elsewhere.
    assert any(report["attempts"][n] >= 2 for n in report["removed"]["running"]), report["attempts"]
    # Meanwhile it showed `retrying`, not `running` with a dead worker's pid (issue 16), then ran again.
    again = [n for n in report["removed"]["running"] if report["attempts"][n] >= 2]
    for name in again:
        shown = report["seen"][name]
        first_retry = next((i for i, (status, _) in enumerate(shown) if status == "retrying"), None)
        assert first_retry is not None, shown
        assert all(status == "running" for status, attempts in shown[:first_retry]), shown
        assert any(status in ("running", "done") and attempts >= 2 for status, attempts in shown[first_retry:]), shown
    assert len(report["lost_nodes"]) == 1 and report["lost_nodes"][0].startswith("127.0.0.1 ("), report["lost_nodes"]


def ray_processes_of(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_driver_killed_then_resumed(tmp_path):
    """SIGKILL the driver after its first result; --resume ends with every task done exactly once and
    the bundles finished before the kill unchanged, byte for byte."""
    from orchestrator.client import JobClient
    from orchestrator.results import read_results

    spec, backbone = make_world(tmp_path, tasks=6)
    out = tmp_path / "job"
    args = finetune_args(spec, backbone, out, "--max-concurrent", 2, steps=300) + ["--epochs", "1000"]
    driver = subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: read_results(out) or driver.poll() is not None, timeout=180, poll=0.05)
        assert driver.poll() is None, "the job ended before it could be killed"
        assert JobClient.attach(out).state().status == "running"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(10)
    finally:
        # The embedded cluster's GCS, raylet and workers die with the driver; Ray's agents take up
        # to a minute, so the test ends whatever is left of the driver's process group.
        wait_for(lambda: not [p for p in ray_processes_of(driver.pid) if p.name() in ("gcs_server", "raylet")],
                 timeout=30)
        for proc in ray_processes_of(driver.pid):
            proc.kill()
    done_before = {r["task"] for r in read_results(out) if r["status"] == "done"}
    assert done_before and len(done_before) < 6
    hashes_before = bundle_hashes(out)
    assert JobClient.attach(out).state().status == "lost"  # the client sees the driver is gone

    resumed = subprocess.run([sys.executable, "cli.py", *finetune_args(spec, backbone, out, "--resume")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_results(out)
    assert sorted(r["task"] for r in rows) == sorted(task_names(spec))  # each task exactly once
    assert all(r["status"] == "done" for r in rows)
    after = bundle_hashes(out)
    assert sorted(after) == sorted(task_names(spec))
    assert {n: after[n] for n in done_before} == {n: hashes_before[n] for n in done_before}
    assert JobClient.attach(out).state().status == "done"


if __name__ == "__main__":
    if sys.argv[1] == "remove-node":
        print(json.dumps(remove_node_scenario(*sys.argv[2:6])))
    else:
        sys.exit(f"unknown scenario {sys.argv[1]!r}")
