"""`finetune` without a cluster: every bad input fails with `error: FILE: ...` (exit 2) before Ray starts,
and --in-process runs a job to completion with no Ray at all."""

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cli
from orchestrator.results import read_results
from support import finetune_args, make_world, task_names

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("cli_world"), tasks=3)


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the command tries to start or join a cluster."""
    import orchestrator.executors

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(orchestrator.executors, "connect", refuse)


def copy_data(world, tmp_path) -> Path:
    spec, _ = world
    shutil.copytree(spec.parent, tmp_path / "data")
    return tmp_path / "data" / "tasks.toml"


def break_spec(spec: Path, old: str, new: str) -> None:
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new, 1))


def bad_metric(spec, names):
    break_spec(spec, 'metric = "accuracy"', 'metric = "mrr@5"')
    return f"tasks.toml: task[0] '{names[0]}', field 'metric': "


def impossible_override(spec, names):  # a 16-channel backbone has no 16 // 64 = 0 wide patch
    break_spec(spec, 'metric = "accuracy"\n', 'metric = "accuracy"\n[task.overrides]\nbottleneck_ratio = 64\n')
    return f"tasks.toml: task[0] '{names[0]}', field 'overrides': invalid PatchConfig: bottleneck width 0"


def unknown_override(spec, names):
    break_spec(spec, 'metric = "accuracy"\n', 'metric = "accuracy"\n[task.overrides]\nlearning_rate = 0.1\n')
    return "field 'overrides': unknown hyper-parameter override(s) ['learning_rate']"


def label_out_of_range(spec, names):
    path = spec.parent / "tasks" / f"{names[0]}.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_pylist()
    labels[7] = 99
    pq.write_table(table.set_column(1, "label", pa.array(labels, type=table.schema.field("label").type)), path)
    return f"{names[0]}.parquet: row 7, field 'label': 99 is outside"


CASES = [bad_metric, impossible_override, unknown_override, label_out_of_range]


@pytest.mark.parametrize("breaker", CASES, ids=lambda f: f.__name__)
def test_bad_spec_or_data_fails_before_ray_starts(world, tmp_path, capsys, no_ray, breaker):
    _, backbone = world
    spec = copy_data(world, tmp_path)
    expected = breaker(spec, task_names(spec))
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert not out.exists()  # nothing written either


@pytest.mark.parametrize("extra, expected", [
    (["--only", "nope"], "--only: no task 'nope'"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be > 0"),
    (["--resume", "--force"], "pass only one"),
], ids=["unknown-task", "no-cpus", "resume-and-force"])
def test_bad_flags_fail_before_ray_starts(world, tmp_path, capsys, no_ray, extra, expected):
    spec, backbone = world
    assert cli.main(finetune_args(spec, backbone, tmp_path / "job", *extra)) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [("0", "--pack must be >= 1"),
                                             ("many", "--pack takes a number of tasks or 'auto'")])
def test_bad_pack_is_a_usage_error(world, tmp_path, capsys, no_ray, value, expected):
    spec, backbone = world
    with pytest.raises(SystemExit) as exit_:
        cli.main(finetune_args(spec, backbone, tmp_path / "job", "--pack", value))
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_missing_backbone_is_a_clear_error(world, tmp_path):
    """The real command line: exit 2 and one `error:` line, quickly (no cluster is started)."""
    spec, _ = world
    child = subprocess.run([sys.executable, "cli.py", *finetune_args(spec, tmp_path / "nope", tmp_path / "job")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 2
    assert child.stderr.startswith(f"error: {tmp_path / 'nope' / 'config.json'}: not found"), child.stderr
    assert "Ray" not in child.stdout + child.stderr


def test_in_process_runs_every_task_without_ray(world, tmp_path, no_ray):
    from peterrec.bundle import open_bundle

    spec, backbone = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out, "--in-process")) == 0
    rows = read_results(out)
    assert sorted(r["task"] for r in rows) == sorted(task_names(spec))
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    assert sorted(open_bundle(out).names) == sorted(task_names(spec))


def test_help_lists_the_cluster_flags():
    text = cli.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    for flag in ("--address", "--cpus-per-task", "--gpus-per-task", "--max-concurrent", "--retries", "--ui",
                 "--in-process", "--resume", "--pack"):
        assert flag in text


def test_rich_display_shows_the_top_rows_of_a_big_job():
    from rich.console import Console

    from tui.console import RichDisplay
    from orchestrator.state import JobState, TaskState

    state = JobState("job", status="running")
    for i in range(100):
        task = state.tasks[f"t{i:03d}"] = TaskState(f"t{i:03d}", "classify", "accuracy")
        if i < 3:
            task.status, task.step, task.total, task.loss, task.samples_per_s = "running", 5, 10, 0.5, 100.0
        elif i < 40:
            task.status, task.value, task.updated_at = "done", 0.75, float(i)
    failed = state.tasks["t099"]
    failed.status, failed.error, failed.updated_at = "failed", "ValueError: [bad] override", 100.0
    client = type("Client", (), {"state": lambda self: state})()
    console = Console(width=120, record=True)
    console.print(RichDisplay(client, console, rows=8).render(state))
    text = console.export_text()
    lines = [line.split()[0] for line in text.splitlines()[2:10]]
    assert lines == ["t000", "t001", "t002", "t099", "t039", "t038", "t037", "t036"]  # running, then latest finished
    assert "38/100" in text and "3 running" in text and "1 failed" in text and "92 more tasks" in text
    assert "[bad] override" in text  # error text is shown as text, not read as markup
    assert "300 samples/s" in text
