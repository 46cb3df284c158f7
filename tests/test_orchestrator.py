"""The Ray orchestrator in one process: the real `finetune` command on tiny synthetic tasks, resume,
failures and retries, the client API (attach, cancel, stop), and the zero-copy backbone in a worker.

Ray is started once for the module (2 CPUs, small object store) and reused by every command run here;
multi-node and driver-kill scenarios, which need their own clusters, are in test_orchestrator_cluster.py.
"""

import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
from orchestrator.results import read_results
from support import assert_same_weights, bundle_hashes, finetune_args, make_world, task_names, wait_for















@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def ray_cluster():
    from orchestrator.cluster import connect

    cluster = connect(num_cpus=2, object_store_mb=200)
    yield cluster
    cluster.shutdown()


def test_finetune_runs_every_task_on_ray(world, ray_cluster, tmp_path, capsys):
    from orchestrator.client import JobClient
    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from peterrec.efficiency import count_parameters

    spec, backbone_dir = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone_dir, out)) == 0
    names = task_names(spec)
    rows = read_results(out)
    assert [r["task"] for r in rows] == sorted(names)
    backbone, _ = load_backbone(backbone_dir)
    for row in rows:
        assert row["status"] == "done" and row["attempts"] == 1 and row["error"] is None, row
        assert row["mode"] == "peterrec" and 0.0 <= row["value"] <= 1.0
        assert row["backbone_params"] == count_parameters(backbone)
        assert 0 < row["trained_params"] and 0 < row["ratio_vs_fineall"] < 100
    bundle = open_bundle(out)
    assert sorted(bundle.names) == sorted(names)
    assert bundle.verify(backbone) == []
    state = JobClient.attach(out).state()
    assert state.status == "done" and state.cluster["node_ips"] == ["127.0.0.1"]
    assert {t.status for t in state.tasks.values()} == {"done"}
    assert all(t.step == t.total > 0 and t.history for t in state.tasks.values())
    assert {"ray_ready", "first_progress", "first_result", "finished"} <= set(state.timings)
    printed = capsys.readouterr().out
    assert f"[{len(names)}/{len(names)}]" in printed


def test_ray_trains_like_the_in_process_loop(world, ray_cluster, tmp_path):
    """The worker path (shared zero-copy backbone, 1 thread) gives the in-process path's weights."""
    spec, backbone_dir = world
    names = [task_names(spec)[0], next(n for n in task_names(spec) if "coldrec" in n)]
    only = ["--only", ",".join(names)]
    assert cli.main(finetune_args(spec, backbone_dir, tmp_path / "ray", *only)) == 0
    assert cli.main(finetune_args(spec, backbone_dir, tmp_path / "local", *only, "--in-process")) == 0
    assert_same_weights(tmp_path / "ray", tmp_path / "local", names)


def test_resume_runs_only_unfinished_tasks_and_keeps_bundles(world, ray_cluster, tmp_path):
    spec, backbone_dir = world
    out = tmp_path / "job"
    first = task_names(spec)[::2][:2]
    assert cli.main(finetune_args(spec, backbone_dir, out, "--only", ",".join(first))) == 0
    before = bundle_hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "bundle" / "tasks").rglob("*")}
    assert sorted(before) == first
    # an existing JOB_DIR needs --resume or --force
    assert cli.main(finetune_args(spec, backbone_dir, out)) == 2
    assert cli.main(finetune_args(spec, backbone_dir, out, "--resume")) == 0
    after = bundle_hashes(out)
    assert sorted(after) == sorted(task_names(spec))
    assert {n: after[n] for n in first} == before  # finished bundles untouched, byte for byte
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    rows = read_results(out)
    assert sorted(r["task"] for r in rows) == sorted(task_names(spec))
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    # Resuming a complete job runs nothing and changes nothing.
    assert cli.main(finetune_args(spec, backbone_dir, out, "--resume")) == 0
    assert bundle_hashes(out) == after


def test_failing_task_is_retried_then_recorded_without_stopping_others(world, ray_cluster, tmp_path,
                                                                      monkeypatch):
    spec, backbone_dir = world
    out = tmp_path / "job"
    bad, flaky, *others = task_names(spec)
    # `bad` fails every attempt; `flaky` fails its first attempt only.
    monkeypatch.setenv("PETERREC_FAIL_TASKS", f"{bad},{flaky}:1")
    assert cli.main(finetune_args(spec, backbone_dir, out, "--retries", 1)) == 1
    rows = {r["task"]: r for r in read_results(out)}
    assert rows[bad]["status"] == "failed" and rows[bad]["attempts"] == 2
    assert "InjectedFailure" in rows[bad]["error"]
    assert rows[flaky]["status"] == "done" and rows[flaky]["attempts"] == 2
    assert all(rows[n]["status"] == "done" and rows[n]["attempts"] == 1 for n in others)
    assert bad not in bundle_hashes(out)
    # --resume retries only the failed task (which now succeeds).
    monkeypatch.delenv("PETERREC_FAIL_TASKS")
    before = bundle_hashes(out)
    assert cli.main(finetune_args(spec, backbone_dir, out, "--resume")) == 0
    rows = {r["task"]: r for r in read_results(out)}
    assert all(r["status"] == "done" for r in rows.values())
    after = bundle_hashes(out)
    assert {n: after[n] for n in before} == before


@contextmanager
def endless_job(world, out: Path, **options):
    """(job, the thread running it, its three task names) of a job of three tasks that train until
    stopped; stopped and joined at the end of the block, whatever the test did."""
    from commands._flags import settings_from_args
    from orchestrator.job import FinetuneJob, JobOptions
    from orchestrator.plan import plan_for
    from orchestrator.settings import JobSettings

    spec, backbone_dir = world
    args = cli.build_parser().parse_args(finetune_args(spec, backbone_dir, out, steps=100_000) + ["--epochs", "10000"])
    names = task_names(spec)[:3]
    settings = settings_from_args(JobSettings, args)
    settings.only = [",".join(names)]
    plan = plan_for(settings)
    job = FinetuneJob(plan, JobOptions(cpus_per_task=1, retries=0, **options))
    runner = threading.Thread(target=job.run)
    runner.start()
    try:
        yield job, runner, names
    finally:
        job.stop()
        runner.join(60)


def test_client_attaches_cancels_and_stops_a_running_job(world, ray_cluster, tmp_path):
    """A client without the job object (as in another process) reads state.json and sends commands."""
    from orchestrator.client import JobClient

    out = tmp_path / "job"
    with endless_job(world, out, max_concurrent=2) as (job, runner, (a, b, c)):
        wait_for(lambda: (out / "state.json").exists())
        client = JobClient.attach(out)
        wait_for(lambda: sum(t.status == "running" and t.step > 0 for t in client.state().tasks.values()) == 2)
        state = client.state()
        assert state.status == "running" and client.live
        running = sorted(n for n, t in state.tasks.items() if t.status == "running")
        assert running == [a, b] and state.tasks[c].status == "queued"
        assert state.tasks[a].loss is not None and state.tasks[a].samples_per_s > 0
        client.cancel(a)
        wait_for(lambda: client.task(a).status == "failed")
        assert client.task(a).error == "cancelled"
        client.stop()
        runner.join(60)
        assert not runner.is_alive()
    state = client.state()
    assert state.status == "stopped" and not client.live
    rows = {r["task"]: r for r in client.results()}
    assert rows[a]["status"] == "failed" and rows[a]["error"] == "cancelled"
    assert b not in rows and c not in rows  # interrupted or never started: left for --resume
    with pytest.raises(RuntimeError, match="not running"):
        client.retry_failed()


def test_backbone_is_read_zero_copy_in_workers(world, ray_cluster):
    """In a worker the backbone's tensors are the object store's shared memory, read-only, built once
    per process, and training a task over it neither copies nor changes it."""
    import ray

    from orchestrator.shared import share
    from peterrec.checkpoint import load_backbone
    from tasks import load_job

    spec, backbone_dir = world
    job, sequences, task_data = load_job(spec)
    backbone, _ = load_backbone(backbone_dir)
    refs = share(backbone, sequences)

    @ray.remote(num_cpus=1)
    def inspect(refs, task_spec, data):
        from orchestrator.shared import shared_backbone as get_backbone, shared_sequences
        from peterrec.finetune import FinetuneSettings, finetune_task
        from peterrec.training import TrainConfig

        maps = []
        for line in open("/proc/self/maps"):
            parts = line.split()
            low, high = (int(x, 16) for x in parts[0].split("-"))
            maps.append((low, high, parts[1], " ".join(parts[5:])))

        def region(ptr):
            return next(((perms, path) for low, high, perms, path in maps if low <= ptr < high), None)

        built = get_backbone(refs)
        tensors = dict(built.state_dict())
        pointers = {k: t.data_ptr() for k, t in tensors.items()}
        before = {k: t.clone() for k, t in tensors.items()}
        settings = FinetuneSettings(train=TrainConfig(epochs=1, max_steps=3, batch_size=16))
        finetune_task(built, task_spec, data, shared_sequences(refs), settings, torch.device("cpu"))
        return {
            "same_object": get_backbone(refs) is built,
            "regions": {k: region(p) for k, p in pointers.items()},
            "frozen": all(not p.requires_grad for p in built.parameters()),
            "pointers_kept": all(t.data_ptr() == pointers[k] for k, t in built.state_dict().items()),
            "unchanged": all(torch.equal(t, before[k]) for k, t in built.state_dict().items()),
            "sequences_shared": region(shared_sequences(refs).items.ctypes.data),
            # Another read of the object is a view of the same buffer: read-only, at the tensors' addresses.
            "writable": [k for k, a in ray.get(refs.backbone).items() if a.flags.writeable],
            "same_memory": all(ray.get(refs.backbone)[k].ctypes.data == p for k, p in pointers.items()),
        }

    name = job.tasks[0].name
    out = ray.get(inspect.remote(refs, job.task(name), task_data[name]))
    assert out["same_object"] and out["frozen"] and out["pointers_kept"] and out["unchanged"]
    assert out["writable"] == [] and out["same_memory"]
    for key, (perms, path) in out["regions"].items():
        assert "plasma" in path and perms.endswith("s"), (key, perms, path)  # a shared mapping of the store
    assert "plasma" in out["sequences_shared"][1]
    # What was put is the checkpoint's weights, as numpy (the form Ray shares without copying).
    arrays = ray.get(refs.backbone)
    for key, tensor in backbone.state_dict().items():
        np.testing.assert_array_equal(arrays[key], tensor.numpy())


def test_packed_job_trains_like_tasks_alone(world, ray_cluster, tmp_path):
    """--pack: tasks trained in fused packs on Ray end with the weights each gets alone in process."""
    from orchestrator.client import JobClient

    spec, backbone_dir = world
    assert cli.main(finetune_args(spec, backbone_dir, tmp_path / "packed", "--pack", 3)) == 0
    assert cli.main(finetune_args(spec, backbone_dir, tmp_path / "alone", "--in-process")) == 0
    names = task_names(spec)
    rows = read_results(tmp_path / "packed")
    assert sorted(r["task"] for r in rows) == sorted(names)
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    state = JobClient.attach(tmp_path / "packed").state()
    # 5 tasks on 2 slots: two packs (3 + 2), so both CPUs work; each task ran in its pack.
    assert state.resources["pack"] == 3 and state.resources["pack_size"] == 3
    assert sorted(t.pack for t in state.tasks.values()) == [2, 2, 3, 3, 3]
    assert_same_weights(tmp_path / "packed", tmp_path / "alone", names)


def test_pack_auto_measures_on_a_worker_then_trains_every_task(world, ray_cluster, tmp_path):
    from orchestrator.client import JobClient

    spec, backbone_dir = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone_dir, out, "--pack", "auto", "--batch-size", 4)) == 0
    state = JobClient.attach(out).state()
    resources = state.resources
    assert resources["pack"] == "auto" and resources["pack_reason"].startswith(f"K={resources['pack_size']}")
    assert "1" in resources["pack_measured"] and "pack_measured" in state.timings  # K=1 is always measured
    assert {t.pack for t in state.tasks.values()} <= {1, resources["pack_size"], resources["pack_size"] - 1}
    assert all(r["status"] == "done" for r in read_results(out))


def test_task_failing_in_a_pack_runs_again_alone(world, ray_cluster, tmp_path, monkeypatch):
    spec, backbone_dir = world
    out = tmp_path / "job"
    bad, flaky, *others = task_names(spec)
    # Both fail in the middle of training in the pack (their first progress report); the others finish
    # there. `flaky` then succeeds alone; `bad` fails its second attempt too and is recorded failed.
    monkeypatch.setenv("PETERREC_FAIL_TASKS", f"{bad},{flaky}:1")
    assert cli.main(finetune_args(spec, backbone_dir, out, "--pack", 8, "--retries", 1)) == 1
    rows = {r["task"]: r for r in read_results(out)}
    assert rows[bad]["status"] == "failed" and rows[bad]["attempts"] == 2
    assert "InjectedFailure" in rows[bad]["error"]
    assert rows[flaky]["status"] == "done" and rows[flaky]["attempts"] == 2
    assert all(rows[n]["status"] == "done" and rows[n]["attempts"] == 1 for n in others)
    assert sorted(bundle_hashes(out)) == sorted([flaky, *others])


def test_cancelling_one_task_of_a_running_pack_leaves_the_others_training(world, ray_cluster, tmp_path):
    from orchestrator.client import JobClient

    out = tmp_path / "job"
    with endless_job(world, out, max_concurrent=1, pack=3) as (job, runner, (a, b, c)):
        client = JobClient(out, job)
        wait_for(lambda: all(t.step > 0 for t in client.state().tasks.values()))
        assert {t.pack for t in client.state().tasks.values()} == {3}
        assert len({t.pid for t in client.state().tasks.values()}) == 1  # one worker holds the pack
        client.cancel(b)
        wait_for(lambda: client.task(b).status == "failed")
        steps = {n: client.task(n).step for n in (a, c)}
        wait_for(lambda: all(client.task(n).step > steps[n] for n in (a, c)))  # the others go on
        assert {client.task(n).status for n in (a, c)} == {"running"}
        client.stop()
        runner.join(60)
        assert not runner.is_alive()
    rows = {r["task"]: r for r in client.results()}
    assert rows[b]["status"] == "failed" and rows[b]["error"] == "cancelled"
    assert a not in rows and c not in rows  # stopped: left for --resume
