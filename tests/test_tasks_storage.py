"""Round trips of every on-disk format, padded() semantics, splits and atomic writes."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import (
    DataError, NewTask, OutputExistsError, Sequences, TaskData, TaskSpec, load_job, load_spec, read_item_vocab,
    read_sequences, read_target_vocab, read_task, write_dataset, write_sequences, write_spec,
)
from tasks import schema
from tasks.atomic import staged_directory
from tasks.splits import split_codes


def tiny_sequences() -> Sequences:
    return Sequences.from_lists(["a", "b", "c", "d"], [[1, 2, 3], [4], [2, 2, 2, 2, 2, 1], [5, 3]], vocab_size=6)


def tiny_tasks() -> list[NewTask]:
    users = np.array(["a", "b", "c", "d"], dtype=object)
    return [
        NewTask("gender", "classify", users, np.array([0, 1, 1, 0]), num_classes=2, label_names=["F", "M"],
                overrides={"lr": 5e-4, "epochs": 3}),
        NewTask("cold", "coldrec", np.array(["a", "a", "c"], dtype=object), np.array([0, 2, 1]),
                target_raw_ids=["x1", "x2", "x3"], metric="hr@5"),
    ]


@pytest.fixture
def written(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", tiny_sequences(), ["i1", "i2", "i3", "i4", "i5"], tiny_tasks(), seed=7)


def test_whole_directory_round_trips(written):
    job, sequences, tasks = load_job(written)

    assert [t.name for t in job.tasks] == ["gender", "cold"]
    assert job.vocab_size == 6 and sequences.vocab_size == 6
    assert list(sequences.user_ids) == ["a", "b", "c", "d"]
    assert sequences.sequence(2).tolist() == [2, 2, 2, 2, 2, 1]
    gender = tasks["gender"]
    assert sequences.user_ids[gender.rows].tolist() == ["a", "b", "c", "d"]
    assert gender.labels.tolist() == [0, 1, 1, 0]
    assert job.task("gender").labels == ["F", "M"]
    assert job.task("gender").overrides == {"lr": 5e-4, "epochs": 3}
    cold = job.task("cold")
    assert (cold.kind, cold.target_vocab, cold.metric, cold.num_outputs) == ("coldrec", 3, "hr@5", 3)
    assert read_target_vocab(cold.target_items, 3).tolist() == ["x1", "x2", "x3"]
    assert read_item_vocab(written.parent / "source" / "items.parquet").tolist() == [None, "i1", "i2", "i3", "i4", "i5"]


def test_files_carry_the_explicit_schemas(written):
    folder = written.parent
    sequences_schema = pq.read_schema(folder / "source" / "sequences.parquet")
    assert sequences_schema.remove_metadata().equals(schema.SEQUENCES)
    assert sequences_schema.metadata[schema.VOCAB_SIZE_KEY] == b"6"
    assert pq.read_schema(folder / "source" / "items.parquet").equals(schema.ITEMS)
    assert pq.read_schema(folder / "tasks" / "gender.parquet").equals(schema.TASK)
    assert pq.read_schema(folder / "tasks" / "cold.items.parquet").equals(schema.TARGET_ITEMS)


def test_spec_header_carries_the_command_and_paths_are_relative(written):
    text = written.read_text()
    assert text.splitlines()[0].startswith("# Run: python cli.py finetune --backbone runs/data/backbone --tasks ")
    assert 'sequences = "source/sequences.parquet"' in text
    assert 'data = "tasks/gender.parquet"' in text


def test_spec_written_elsewhere_points_at_the_same_files(written, tmp_path):
    job = load_spec(written)
    tuned = replace(job, tasks=[replace(job.tasks[0], overrides={"lr": 1e-4, "note": 'say "hi"'}), job.tasks[1]])

    path = write_spec(tmp_path / "runs" / "tuned.toml", tuned, command="python cli.py finetune --tasks runs/tuned.toml")

    again = load_spec(path)
    assert again.sequences == job.sequences
    assert [t.data for t in again.tasks] == [t.data for t in job.tasks]
    assert again.task("gender").overrides == {"lr": 1e-4, "note": 'say "hi"'}
    assert '"../data/tasks/gender.parquet"' in path.read_text()


def test_splits_are_deterministic_per_user_and_seed():
    users = np.array([f"user{i}" for i in range(5000)], dtype=object)
    first = split_codes(users, seed=1)

    assert np.array_equal(first, split_codes(users, seed=1))
    assert np.array_equal(first[::-1], split_codes(users[::-1], seed=1)), "depends on the user, not the order"
    assert np.array_equal(first[:100], split_codes(users[:100], seed=1)), "depends on the user, not the set"
    assert not np.array_equal(first, split_codes(users, seed=2))
    shares = np.bincount(first, minlength=3) / len(users)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.02)


def test_all_rows_of_a_user_share_a_split(written):
    _, _, tasks = load_job(written)
    cold = tasks["cold"]
    assert len(set(cold.split[cold.rows == 0])) == 1


def test_task_parts_partition_the_rows():
    spec = TaskSpec("t", "classify", Path("/nowhere/t.parquet"), "accuracy", num_classes=2)
    data = TaskData(spec, np.arange(6), np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 1, 2, 0, 2], dtype=np.int8))
    rows = {name: data.part(name)[0].tolist() for name in ("train", "valid", "test")}
    assert rows == {"train": [0, 1, 4], "valid": [2], "test": [3, 5]}
    with pytest.raises(ValueError):
        data.part("dev")


@pytest.mark.parametrize(
    "rows, max_len, expected",
    [
        ([0], 5, [[0, 0, 1, 2, 3]]),  # shorter than max_len: left-padded with 0
        ([2], 3, [[2, 2, 1]]),  # longer: the most recent items are kept
        ([1, 3], 2, [[0, 4], [5, 3]]),
        ([3, 3, 0], 3, [[0, 5, 3], [0, 5, 3], [1, 2, 3]]),  # any order, repeats allowed
        ([], 4, np.zeros((0, 4))),
    ],
)
def test_padded_keeps_the_latest_items_left_padded(rows, max_len, expected):
    out = tiny_sequences().padded(np.array(rows, dtype=np.int64), max_len)
    assert out.dtype == np.int64 and out.shape == (len(rows), max_len)
    assert out.tolist() == np.asarray(expected).tolist()


def test_row_of_looks_up_users_and_names_unknown_ones():
    sequences = tiny_sequences()
    assert sequences.row_of(["d", "a", "d"]).tolist() == [3, 0, 3]
    with pytest.raises(DataError) as caught:
        sequences.row_of(["a", "zed"], path="some/task.parquet")
    assert (caught.value.row, caught.value.field) == (1, "user_id")
    assert "some/task.parquet: row 1, field 'user_id': unknown user 'zed'" in str(caught.value)


def test_sequences_pickle_cheaply_and_still_look_up():
    sequences = tiny_sequences()
    sequences.row_of(["a"])  # builds the lookup index
    copy = pickle.loads(pickle.dumps(sequences))
    assert copy.row_of(["c"]).tolist() == [2]
    assert np.array_equal(copy.items, sequences.items)


def test_wider_integers_are_accepted_when_they_fit(tmp_path):
    table = pa.table({"user_id": ["a", "b"], "items": pa.array([[1, 2], [3]], pa.list_(pa.int64()))})
    pq.write_table(table, tmp_path / "s.parquet")
    sequences = read_sequences(tmp_path / "s.parquet")
    assert sequences.vocab_size == 4  # no metadata: max id + 1
    assert sequences.items.dtype == np.int32


def test_sequences_round_trip_keeps_vocab_size(tmp_path):
    write_sequences(tmp_path / "s.parquet", tiny_sequences())
    back = read_sequences(tmp_path / "s.parquet")
    assert back.vocab_size == 6
    assert np.array_equal(back.offsets, tiny_sequences().offsets)
    with pytest.raises(DataError, match="disagrees"):
        read_sequences(tmp_path / "s.parquet", vocab_size=9)


def test_read_task_checks_against_its_spec(written):
    job, sequences, _ = load_job(written)
    narrower = replace(job.task("cold"), target_vocab=2)
    with pytest.raises(DataError, match=r"row 1, field 'label': 2 is outside 0..1 \(target_vocab = 2\)"):
        read_task(narrower, sequences)


def test_force_replaces_and_refusal_keeps_the_old_output(written):
    out = written.parent
    with pytest.raises(OutputExistsError):
        write_dataset(out, tiny_sequences(), ["1", "2", "3", "4", "5"], [], seed=0)
    assert len(load_spec(written).tasks) == 2

    write_dataset(out, tiny_sequences(), ["1", "2", "3", "4", "5"], [], seed=0, force=True)
    assert load_spec(written).tasks == []
    assert not (out / "tasks" / "gender.parquet").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["data"], "no temporary siblings left"


def test_failure_midway_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_directory(tmp_path / "a" / "b" / "out") as stage:
            (stage / "half.parquet").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_existing_directory_is_used(tmp_path):
    (tmp_path / "data").mkdir()
    spec = write_dataset(tmp_path / "data", tiny_sequences(), ["1", "2", "3", "4", "5"], tiny_tasks(), seed=0)
    assert spec.exists()


def test_tasks_imports_neither_torch_nor_ray():
    code = ("import sys, tasks, tasks.synth, tasks.importers; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
