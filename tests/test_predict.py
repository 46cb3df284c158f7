"""`peterrec predict` end to end on a tiny random model: every input format, both output formats, and the
bad inputs, each checked against the in-memory task model."""

import json
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import cli
from peterrec import Backbone, BackboneConfig
from peterrec.bundle import backbone_fingerprint, write_task
from peterrec.checkpoint import save_checkpoint
from peterrec.finetune import FinetuneSettings
from tasks import Sequences, write_sequences
from tasks.taskdata import write_task as write_task_table
from tasks.vocab import write_item_vocab
from support import random_task

CONFIG = BackboneConfig(vocab_size=30, channels=8, dilations=(1, 2), max_len=6)
LABELS = ["F", "M", "X"]
TARGETS = [f"t{i}" for i in range(9)]
USERS = ["u0", "u1", "u2", "u3"]
SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 9, 12, 13, 2], [29], [5, 6, 7, 8]]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Backbone checkpoint, a bundle with a classify and a coldrec task, and input files."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    backbone = Backbone(CONFIG).eval()
    fp = backbone_fingerprint(backbone)
    gender = random_task(backbone, "classify", 3, "peterrec", seed=1)
    cold = random_task(backbone, "coldrec", len(TARGETS), "finelast", seed=2)
    for spec, model, extra in (
        (SimpleNamespace(name="gender", kind="classify", metric="accuracy", num_outputs=3, labels=LABELS), gender, {}),
        (SimpleNamespace(name="cold", kind="coldrec", metric="mrr@5", num_outputs=len(TARGETS)), cold,
         {"target_raw_ids": TARGETS}),
    ):
        write_task(root / "job" / "bundle", model, spec, FinetuneSettings(mode=model.mode), {}, fp, CONFIG, **extra)
    save_checkpoint(root / "ckpt", backbone)
    (root / "data" / "source").mkdir(parents=True)
    (root / "data" / "tasks").mkdir()
    write_sequences(root / "data/source/sequences.parquet", Sequences.from_lists(USERS, SEQUENCES, CONFIG.vocab_size))
    write_task_table(root / "data/tasks/gender.parquet", ["u2", "u0", "u2"], [1, 0, 1], [0, 1, 2])
    (root / "data/tasks.toml").write_text(
        '[source]\nsequences = "source/sequences.parquet"\nvocab_size = 30\n\n[[task]]\nname = "gender"\n'
        'kind = "classify"\ndata = "tasks/gender.parquet"\nnum_classes = 3\nmetric = "accuracy"\n')
    # The paper's CSV: dense ids with leading 0 padding, a target part after ",,".
    (root / "dense.csv").write_text("".join(f"0,0,{','.join(map(str, s))},,100,101\n" for s in SEQUENCES))
    # Raw ids "r<k>" for dense id k, mapped through items.parquet.
    write_item_vocab(root / "items.parquet", [f"r{k}" for k in range(1, CONFIG.vocab_size)])
    (root / "raw.csv").write_text("".join(",".join(f"r{i}" for i in s) + "\n" for s in SEQUENCES))
    return SimpleNamespace(root=root, backbone=backbone, models={"gender": gender, "cold": cold})


def reference(job, task, users):
    """The in-memory model's outputs for these users, as one batch."""
    rows = [USERS.index(u) for u in users]
    items = Sequences.from_lists(USERS, SEQUENCES, CONFIG.vocab_size).padded(np.array(rows), CONFIG.max_len)
    with torch.no_grad():
        return job.models[task].scores(torch.from_numpy(items))


def predict(job, task, input_file, out, *extra):
    return cli.main(["predict", "--backbone", str(job.root / "ckpt"), "--bundle", str(job.root / "job"),
                     "--task", task, "--input", str(input_file), "--out", str(out), *extra])


def read_out(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_classify_from_a_sequences_table(job, tmp_path, suffix):
    out = tmp_path / f"gender{suffix}"
    assert predict(job, "gender", job.root / "data/source/sequences.parquet", out) == 0
    rows = read_out(out)
    assert [r["user_id"] for r in rows] == USERS
    want = reference(job, "gender", USERS).softmax(dim=-1)
    assert torch.equal(torch.tensor([r["probabilities"] for r in rows], dtype=torch.float32), want)
    assert [r["prediction_label"] for r in rows] == [LABELS[i] for i in want.argmax(dim=1).tolist()]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_coldrec_top_k_from_the_paper_csv(job, tmp_path, suffix):
    out = tmp_path / f"cold{suffix}"
    assert predict(job, "cold", job.root / "dense.csv", out, "--top-k", "4") == 0
    rows = read_out(out)
    top = reference(job, "cold", USERS).topk(4, dim=-1)
    assert [r["top_items"] for r in rows] == top.indices.tolist()
    assert torch.equal(torch.tensor([r["top_scores"] for r in rows], dtype=torch.float32), top.values)
    assert [r["top_raw_ids"] for r in rows] == [[TARGETS[i] for i in row] for row in top.indices.tolist()]
    assert rows[0]["user_id"] == "u0" and rows[0]["targets"] == ["100", "101"]  # named as `import` names them


def test_raw_ids_through_an_items_mapping_match_dense_ids(job, tmp_path):
    assert predict(job, "cold", job.root / "dense.csv", tmp_path / "dense.jsonl") == 0
    assert predict(job, "cold", job.root / "raw.csv", tmp_path / "raw.jsonl", "--items", str(job.root / "items.parquet")) == 0
    dense, raw = read_out(tmp_path / "dense.jsonl"), read_out(tmp_path / "raw.jsonl")
    assert [r["top_items"] for r in dense] == [r["top_items"] for r in raw]


@pytest.mark.parametrize("locate", ["--sequences", "--tasks"])
def test_task_table_with_sequences_from_a_file_or_the_spec(job, tmp_path, locate):
    where = job.root / ("data/source/sequences.parquet" if locate == "--sequences" else "data/tasks.toml")
    out = tmp_path / "gender.parquet"
    assert predict(job, "gender", job.root / "data/tasks/gender.parquet", out, locate, str(where)) == 0
    rows = read_out(out)
    assert [(r["user_id"], r["label"], r["split"]) for r in rows] == [("u2", 1, "train"), ("u0", 0, "valid"),
                                                                     ("u2", 1, "test")]
    want = reference(job, "gender", ["u2", "u0", "u2"]).softmax(dim=-1)
    assert torch.equal(torch.tensor([r["probabilities"] for r in rows], dtype=torch.float32), want)


def _write(path, text):
    path.write_text(text)
    return path


BAD_INPUTS = {
    # case: (input file maker, extra args, task, phrases the error must contain)
    "csv_not_an_integer": (lambda d: _write(d / "bad.csv", "1,2,3\n4,x,6\n"), [], "gender",
                           ["bad.csv: line 2, field 'source[1]'", "not an integer"]),
    "csv_outside_vocab": (lambda d: _write(d / "raw.csv", "1,2,76920\n"), [], "gender",
                          ["raw.csv: line 1, field 'source[2]'", "--items"]),
    "csv_unknown_raw_id": (lambda d: _write(d / "raw.csv", "r1,r2\nr3,zz\n"), ["--items", "{root}/items.parquet"],
                           "gender", ["raw.csv: line 2, field 'source[1]'", "'zz'"]),
    "csv_only_padding": (lambda d: _write(d / "pad.csv", "0,0,0,,5\n"), [], "gender", ["pad.csv: line 1"]),
    "task_table_without_sequences": (lambda d: d.parent / "data/tasks/gender.parquet", [], "gender",
                                     ["gender.parquet", "--sequences"]),
    "unknown_user": (lambda d: _users_table(d), ["--sequences", "{root}/data/source/sequences.parquet"], "gender",
                     ["users.parquet: row 1, field 'user_id'", "nobody"]),
    "unknown_task": (lambda d: d.parent / "dense.csv", [], "age", ["index.json", "'age'"]),
}


def _users_table(folder):
    write_task_table(folder / "users.parquet", ["u1", "nobody"], [0, 0], [0, 0])
    return folder / "users.parquet"


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_place_and_writes_nothing(job, tmp_path, case, capsys):
    make, extra, task, phrases = BAD_INPUTS[case]
    folder = job.root / case
    folder.mkdir(exist_ok=True)
    source = make(folder)
    out = tmp_path / "out.parquet"
    assert predict(job, task, source, out, *[a.format(root=job.root) for a in extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for phrase in phrases:
        assert phrase in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_output_format(job, tmp_path, capsys):
    assert predict(job, "gender", job.root / "dense.csv", tmp_path / "out.txt") == 2
    assert "out.txt" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
