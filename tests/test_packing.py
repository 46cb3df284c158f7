"""`finetune --pack`: how a job's tasks are grouped into packs, and packed fine-tuning in process."""

from types import SimpleNamespace

import pytest

import cli
from orchestrator.packing import plan_units
from orchestrator.settings import parse_pack
from orchestrator.results import read_results
from support import finetune_args, make_world, task_names


def settings(mode="peterrec", bf16=False):
    return SimpleNamespace(mode=mode, train=SimpleNamespace(precision="bf16" if bf16 else "fp32"))


def test_parse_pack():
    assert parse_pack("4") == 4 and parse_pack("auto") == "auto" and parse_pack("AUTO") == "auto"
    for bad in ("0", "-2", "x", "2.5"):
        with pytest.raises(ValueError, match="--pack"):
            parse_pack(bad)


def test_without_packing_every_task_runs_alone_in_spec_order():
    names = ["a", "b", "c"]
    units = plan_units(names, {n: settings() for n in names}, {"a": 1, "b": 9, "c": 5}, k=1, slots=4)
    assert [u.names for u in units] == [["a"], ["b"], ["c"]]


def test_packs_are_balanced_and_never_leave_slots_idle():
    names = [f"t{i:02d}" for i in range(20)]
    steps = {n: 10 for n in names}
    # 20 tasks, K=16, 2 slots: two packs of 10 (not 16 + 4, nor one pack and an idle slot).
    units = plan_units(names, {n: settings() for n in names}, steps, k=16, slots=2)
    assert sorted(len(u.names) for u in units) == [10, 10]
    # 20 tasks, K=4, 2 slots: five packs of 4.
    assert [len(u.names) for u in plan_units(names, {n: settings() for n in names}, steps, 4, 2)] == [4] * 5
    # 20 tasks, K=16, 8 slots: 7 packs of 2-3, every slot busy.
    sizes = [len(u.names) for u in plan_units(names, {n: settings() for n in names}, steps, 16, 8)]
    assert len(sizes) == 7 and set(sizes) == {2, 3} and sum(sizes) == 20


def test_unpackable_tasks_run_alone_and_bf16_is_not_mixed():
    cfg = {"p1": settings(), "p2": settings(), "all": settings("fineall"), "b1": settings(bf16=True),
           "b2": settings(bf16=True), "zero": settings("peterzero"), "cls": settings("finecls")}
    steps = {"p1": 5, "p2": 50, "all": 20, "b1": 7, "b2": 8, "zero": 1, "cls": 30}
    units = plan_units(list(cfg), cfg, steps, k=8, slots=1)
    assert [u.names for u in units] == [["p2", "cls", "p1"], ["all"], ["b2", "b1"], ["zero"]]  # longest first
    assert {n for u in units if u.packed for n in u.names} == {"p1", "p2", "cls", "b1", "b2"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pack_world"), tasks=4)


def test_in_process_pack_auto_measures_and_trains_every_task(world, tmp_path, capsys):
    spec, backbone = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out, "--in-process", "--pack", "auto")) == 0
    printed = capsys.readouterr().out
    assert "--pack auto: K=" in printed
    rows = read_results(out)
    assert sorted(r["task"] for r in rows) == sorted(task_names(spec))
    assert all(r["status"] == "done" for r in rows)
