"""Every kind of bad input is rejected with a message naming file, row and field, and nothing is written.

One case table; each case corrupts one file of a tiny valid data set (or writes a bad CSV) and runs
the real CLI entry point, which must exit non-zero and leave no output behind.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cli
from tasks.synth import synthesize

BINARY = "tasks/t000_binary.parquet"
COLDREC = "tasks/t003_coldrec.parquet"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    synthesize(tmp_path / "data", tasks=4, users=60, items=40, seed=3)
    return tmp_path / "data"


def edit_columns(path: Path, change) -> None:
    """Rewrite a Parquet file after change(columns: dict of python lists) edits it in place."""
    columns = pq.read_table(path).to_pydict()
    change(columns)
    pq.write_table(pa.table(columns), path)


def set_value(column: str, row: int, value):
    def change(columns):
        columns[column][row] = value
    return change


def edit_spec(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in the spec"
    path.write_text(text.replace(old, new, count))


def first_coldrec_user_twice(columns):
    # One user's rows must share a split: give the first row's user a second row in another split.
    columns["user_id"].append(columns["user_id"][0])
    columns["label"].append(0)
    columns["split"].append("test" if columns["split"][0] != "test" else "train")


# (case id, file to corrupt, corruption, message fragments that must all appear)
CASES = [
    ("empty sequence", "source/sequences.parquet", set_value("items", 3, []),
     ["sequences.parquet", "row 3", "field 'items'", "empty sequence"]),
    ("null user id", "source/sequences.parquet", set_value("user_id", 5, None),
     ["sequences.parquet", "row 5", "field 'user_id'", "null"]),
    ("null item in a sequence", "source/sequences.parquet", set_value("items", 2, [1, None, 3]),
     ["sequences.parquet", "row 2", "field 'items'", "null item"]),
    ("item id outside vocab", "source/sequences.parquet", set_value("items", 7, [1, 41]),
     ["sequences.parquet", "row 7", "field 'items'", "41 is outside 1..40"]),
    ("padding id inside a sequence", "source/sequences.parquet", set_value("items", 4, [0, 5]),
     ["sequences.parquet", "row 4", "field 'items'", "0 is outside 1..40"]),
    ("duplicate user", "source/sequences.parquet", set_value("user_id", 8, "u01"),
     ["sequences.parquet", "row 8", "field 'user_id'", "duplicate user 'u01'"]),
    ("items stored as text", "source/sequences.parquet",
     lambda columns: columns.update(items=[" ".join(map(str, s)) for s in columns["items"]]),
     ["sequences.parquet", "row 0", "field 'items'", "type string, expected list<item: int32"]),
    ("unknown user in a task", BINARY, set_value("user_id", 9, "nobody"),
     ["t000_binary.parquet", "row 9", "field 'user_id'", "unknown user 'nobody'"]),
    # Users of all tasks are looked up at once: the error still names the task's own file and row.
    ("unknown user in a later task", COLDREC, set_value("user_id", 5, "nobody"),
     ["t003_coldrec.parquet", "row 5", "field 'user_id'", "unknown user 'nobody'"]),
    ("label out of range", BINARY, set_value("label", 17, 9),
     ["t000_binary.parquet", "row 17", "field 'label'", "9 is outside 0..1 (num_classes = 2)"]),
    ("negative label", BINARY, set_value("label", 1, -1),
     ["t000_binary.parquet", "row 1", "field 'label'", "-1 is outside 0..1"]),
    ("null label", BINARY, set_value("label", 6, None),
     ["t000_binary.parquet", "row 6", "field 'label'", "null"]),
    ("coldrec label outside target vocab", COLDREC, set_value("label", 4, 100000),
     ["t003_coldrec.parquet", "row 4", "field 'label'", "target_vocab"]),
    ("missing column", BINARY, lambda columns: columns.pop("split"),
     ["t000_binary.parquet", "field 'split'", "missing column"]),
    ("label stored as string", BINARY, lambda columns: columns.update(label=[str(v) for v in columns["label"]]),
     ["t000_binary.parquet", "row 0", "field 'label'", "type string, expected int32"]),
    ("label stored as float", BINARY, lambda columns: columns.update(label=[float(v) for v in columns["label"]]),
     ["t000_binary.parquet", "row 0", "field 'label'", "type double, expected int32"]),
    ("bad split value", BINARY, set_value("split", 11, "validation"),
     ["t000_binary.parquet", "row 11", "field 'split'", "'validation' is not a split"]),
    ("one user in two splits", COLDREC, first_coldrec_user_twice,
     ["t003_coldrec.parquet", "field 'split'", "one split per user"]),
    ("duplicate task name", "tasks.toml", lambda p: edit_spec(p, 'name = "t001_class', 'name = "t000_binary" #'),
     ["tasks.toml", "task[1] 't000_binary'", "field 'name'", "duplicate task name"]),
    ("num_classes not an integer", "tasks.toml", lambda p: edit_spec(p, "num_classes = 2", 'num_classes = "two"'),
     ["tasks.toml", "task[0] 't000_binary'", "field 'num_classes'", "expected an integer >= 2"]),
    ("unknown kind", "tasks.toml", lambda p: edit_spec(p, 'kind = "coldrec"', 'kind = "ranking"'),
     ["tasks.toml", "task[3] 't003_coldrec'", "field 'kind'", "'ranking' is not a known kind"]),
    ("unknown metric", "tasks.toml", lambda p: edit_spec(p, 'metric = "mrr@5"', 'metric = "auc"'),
     ["tasks.toml", "task[3] 't003_coldrec'", "field 'metric'", "'auc' is not a known metric for kind 'coldrec'"]),
    ("missing data field", "tasks.toml", lambda p: edit_spec(p, 'data = "tasks/t000_binary.parquet"', ""),
     ["tasks.toml", "task[0] 't000_binary'", "field 'data'", "missing"]),
    ("misspelt key", "tasks.toml", lambda p: edit_spec(p, "num_classes = 2", "num_class = 2"),
     ["tasks.toml", "task[0] 't000_binary'", "field 'num_class'", "unknown key"]),
    ("vocab_size disagrees with the file", "tasks.toml", lambda p: edit_spec(p, "vocab_size = 41", "vocab_size = 50"),
     ["sequences.parquet", "field 'vocab_size'", "disagrees"]),
    ("not TOML", "tasks.toml", lambda p: edit_spec(p, "[source]", "[source"),
     ["tasks.toml", "not valid TOML"]),
]


@pytest.mark.parametrize("target, corrupt, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_is_rejected_with_its_place(data_dir, tmp_path, capsys, target, corrupt, fragments):
    path = data_dir / target
    if path.suffix == ".toml":
        corrupt(path)
    else:
        edit_columns(path, corrupt)
    out = tmp_path / "out" / "copy"
    before = sorted(p.name for p in tmp_path.iterdir())

    code = cli.main(["import", "data-dir", str(data_dir / "tasks.toml"), "--out", str(out)])

    message = capsys.readouterr().err
    assert code != 0
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (tmp_path / "out").exists(), "nothing may be written, not even the parent folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


CSV_CASES = [
    ("not an integer", "1,2,3\n4,x,6\n", ["line 2", "field 'source[1]'", "'x' is not an integer"]),
    ("padding after an item", "1,2,3\n0,4,0,6\n", ["line 2", "field 'source[2]'", "padding"]),
    ("only padding", "1,2\n0,0,0\n", ["line 2", "field 'source'", "only padding"]),
    ("targets on some lines only", "1,2,,7\n3,4\n", ["line 2", "field 'targets'", "no ',,' separator"]),
    ("empty target", "1,2,,7\n3,4,,8,\n", ["line 2", "field 'target[1]'", "not a target label"]),
    ("negative id", "1,2\n\n3,-4\n", ["line 3", "field 'source[1]'", "-4 is below 0"]),
]


@pytest.mark.parametrize("text, fragments", [c[1:] for c in CSV_CASES], ids=[c[0] for c in CSV_CASES])
def test_bad_csv_line_is_rejected_with_its_place(tmp_path, capsys, text, fragments):
    source = tmp_path / "bad.csv"
    source.write_text(text)
    out = tmp_path / "out"

    code = cli.main(["import", "peterrec-csv", str(source), "--out", str(out)])

    message = capsys.readouterr().err
    assert code != 0
    for fragment in ["bad.csv", *fragments]:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_unknown_item_against_a_source_vocab(tmp_path, capsys):
    (tmp_path / "pre.csv").write_text("10,20,30\n20,30\n")
    (tmp_path / "fine.csv").write_text("10,20,,5\n0,0,30,99,,6\n")
    assert cli.main(["import", "peterrec-csv", str(tmp_path / "pre.csv"), "--out", str(tmp_path / "pre")]) == 0
    capsys.readouterr()

    code = cli.main(["import", "peterrec-csv", str(tmp_path / "fine.csv"), "--out", str(tmp_path / "fine"),
                     "--source-vocab", str(tmp_path / "pre")])

    message = capsys.readouterr().err
    assert code != 0
    for fragment in ["fine.csv", "line 2", "field 'source[3]'", "item 99 is not in the source vocabulary"]:
        assert fragment in message
    assert not (tmp_path / "fine").exists()


def test_existing_output_is_refused_without_force(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    code = cli.main(["synth", "--out", str(out), "--tasks", "1", "--users", "20", "--items", "10"])

    assert code != 0
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
