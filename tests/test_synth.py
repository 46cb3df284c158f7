"""The synthetic world: deterministic, a mix of task kinds, labels that follow the sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cli
from tasks import load_job
from tasks.synth import synthesize


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "data", tasks=8, users=300, items=120, seed=5)


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_files(tmp_path):
    kwargs = dict(tasks=4, users=200, items=100)
    first = synthesize(tmp_path / "a", seed=1, **kwargs).parent
    second = synthesize(tmp_path / "b", seed=1, **kwargs).parent
    other = synthesize(tmp_path / "c", seed=2, **kwargs).parent

    a, b, c = file_bytes(first), file_bytes(second), file_bytes(other)
    assert a.keys() == b.keys()
    for name in a:
        if name != "tasks.toml":  # its header names the output folder
            assert a[name] == b[name], name
    assert a["source/sequences.parquet"] != c["source/sequences.parquet"]


def test_kind_mix_and_shapes(world):
    job, sequences, tasks = load_job(world)
    kinds = [t.kind for t in job.tasks]
    assert kinds.count("coldrec") == 2 and kinds.count("classify") == 6
    classes = [t.num_classes for t in job.tasks if t.kind == "classify"]
    assert 2 in classes and any(3 <= k <= 8 for k in classes)
    assert len(sequences) == 300 and sequences.vocab_size == 121
    assert 20 <= sequences.lengths.min() and sequences.lengths.max() <= 50
    for spec in job.tasks:
        data = tasks[spec.name]
        users = np.unique(data.rows)
        assert 0.35 * 300 <= len(users) <= 300, "each task covers 40..100% of users"
        if spec.kind == "coldrec":
            assert 100 <= spec.target_vocab <= 500 and spec.metric == "mrr@5"
            per_user = np.bincount(data.rows)[users]
            assert per_user.min() >= 1 and per_user.max() <= 3
            assert all(len(set(data.labels[data.rows == u])) == np.sum(data.rows == u) for u in users[:20])
        else:
            assert spec.metric == "accuracy"
            shares = np.bincount(data.labels, minlength=spec.num_classes) / len(data)
            assert shares.min() > 0.5 / spec.num_classes, "quantile bins keep classes balanced-ish"


def test_labels_follow_the_sequences(tmp_path):
    # What a user consumed (their item mix alone) must predict held-out binary labels well above
    # chance: the tasks and the sequences are driven by the same latent traits.
    spec_path = synthesize(tmp_path / "data", tasks=1, users=4000, items=200, seed=11)
    job, sequences, tasks = load_job(spec_path)
    data = tasks[job.tasks[0].name]
    rows = np.repeat(np.arange(len(sequences)), sequences.lengths)
    counts = np.zeros((len(sequences), sequences.vocab_size))
    np.add.at(counts, (rows, sequences.items), 1.0)
    features = np.c_[counts / counts.sum(axis=1, keepdims=True), np.ones(len(sequences))]

    train_rows, train_labels = data.part("train")
    held_rows = data.rows[data.split > 0]
    held_labels = data.labels[data.split > 0]
    x = features[train_rows]
    weights = np.linalg.solve(x.T @ x + 0.01 * np.eye(x.shape[1]), x.T @ (2.0 * train_labels - 1))
    accuracy = np.mean((features[held_rows] @ weights > 0) == held_labels)
    assert accuracy > 0.6, f"held-out accuracy {accuracy:.3f}; chance is 0.5"


def test_cli_writes_and_summarises(tmp_path, capsys):
    code = cli.main(["synth", "--out", str(tmp_path / "demo"), "--tasks", "3", "--users", "50", "--items", "30",
                     "--seed", "4", "--max-len", "25"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "t002_" in printed and str(tmp_path / "demo" / "tasks.toml") in printed
    job, sequences, _ = load_job(tmp_path / "demo" / "tasks.toml")
    assert len(job.tasks) == 3 and sequences.lengths.max() <= 25


def test_cold_start_targets_follow_the_sequences_not_popularity(tmp_path):
    """The targets come from the user's recent items (genre mix and twin items): an item co-occurrence
    recommender fitted on training users beats target popularity by far on held-out users."""
    from reproduce.baselines import ItemKNN

    spec_path = synthesize(tmp_path / "data", tasks=4, users=1500, items=200, seed=3, paper_regime=True)
    job, sequences, tasks = load_job(spec_path)
    data = tasks[job.tasks[3].name]
    assert data.spec.kind == "coldrec" and 100 <= data.spec.target_vocab <= 150
    train_rows, train_labels = data.part("train")
    test_rows, test_labels = data.part("test")
    knn = ItemKNN(alpha=0.5, beta=0.0, last=10).fit(sequences, train_rows, train_labels, data.spec.target_vocab)
    scores = knn.scores(sequences, test_rows)
    popular = np.bincount(train_labels, minlength=data.spec.target_vocab)

    def hit_at_10(s):
        rank = (s > s[np.arange(len(s)), test_labels][:, None]).sum(axis=1)
        return float(np.mean(rank < 10))

    knn_hits, pop_hits = hit_at_10(scores), hit_at_10(np.broadcast_to(popular, scores.shape).astype(float))
    assert knn_hits > 2 * pop_hits and knn_hits > 0.3, (knn_hits, pop_hits)


def test_paper_regime_labels_every_user_in_every_task(tmp_path):
    spec_path = synthesize(tmp_path / "data", tasks=4, users=300, items=60, seed=1, paper_regime=True)
    job, sequences, tasks = load_job(spec_path)
    for task in job.tasks:
        assert set(tasks[task.name].rows) == set(range(len(sequences)))
    default = synthesize(tmp_path / "default", tasks=4, users=300, items=60, seed=1)
    _, _, fewer = load_job(default)
    assert any(len(set(d.rows)) < 300 for d in fewer.values())
