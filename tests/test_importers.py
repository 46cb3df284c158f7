"""Importers: the paper's CSV samples, MovieLens 100K (when present) and a hand-made 1M fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cli
from tasks import DataError, load_job, read_item_vocab, read_target_vocab
from tasks.importers import import_data_dir, import_movielens, import_peterrec_csv

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
PETERREC_FORMAT = SHARED / "peterrec-format"
ML_100K = SHARED / "ml-100k"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.resolve()} is absent (shared data is not part of the repository)")
    return path


def test_pretraining_file_becomes_the_source_domain(tmp_path):
    source = need(PETERREC_FORMAT / "pretrain_small.csv")
    spec, _ = import_peterrec_csv(source, tmp_path / "pre")
    job, sequences, tasks = load_job(spec)

    lines = source.read_text().splitlines()
    assert job.tasks == [] and len(sequences) == len(lines)
    assert sequences.user_ids[0] == "u0"
    raw = read_item_vocab(tmp_path / "pre" / "source" / "items.parquet")
    first = [int(t) for t in lines[0].split(",")]
    assert raw[sequences.sequence(0)].tolist() == [str(t) for t in first]
    padded_line = next(i for i, line in enumerate(lines) if line.startswith("0,"))
    assert raw[sequences.sequence(padded_line)].tolist() == [t for t in lines[padded_line].split(",") if t != "0"]


def test_finetuning_file_against_the_pretraining_vocab(tmp_path):
    pre, _ = import_peterrec_csv(need(PETERREC_FORMAT / "pretrain_small.csv"), tmp_path / "pre")
    spec, _ = import_peterrec_csv(PETERREC_FORMAT / "finetune_small.csv", tmp_path / "fine",
                                  source_vocab=tmp_path / "pre", task_name="coldrec_1")
    job, sequences, tasks = load_job(spec)
    _, pre_sequences, _ = load_job(pre)

    assert job.vocab_size == pre_sequences.vocab_size
    assert np.array_equal(sequences.items, pre_sequences.items), "the sample files share their source parts"
    cold = job.task("coldrec_1")
    lines = (PETERREC_FORMAT / "finetune_small.csv").read_text().splitlines()
    targets = [line.split(",,")[1].split(",") for line in lines]
    assert len(tasks["coldrec_1"]) == sum(len(t) for t in targets), "one row per target label"
    raw_targets = read_target_vocab(cold.target_items, cold.target_vocab)
    first_user = tasks["coldrec_1"].rows == 0
    assert raw_targets[tasks["coldrec_1"].labels[first_user]].tolist() == targets[0]


def test_finetuning_file_as_classification(tmp_path):
    spec, _ = import_peterrec_csv(need(PETERREC_FORMAT / "finetune_small.csv"), tmp_path / "cls", as_classify=True)
    job, _, tasks = load_job(spec)
    task = job.tasks[0]
    assert (task.kind, task.metric, task.name) == ("classify", "accuracy", "finetune_small")
    assert task.labels[:3] == ["1844", "1845", "1846"]
    assert tasks[task.name].labels.max() < task.num_classes


def movielens_1m(folder: Path) -> Path:
    """A tiny hand-made MovieLens 1M folder: 4 users, 6 movies."""
    folder.mkdir()
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::F::45::7::02460\n")
    (folder / "movies.dat").write_text(
        "".join(f"{m}::Movie {m} (2000)::Drama\n" for m in range(1, 7)), encoding="latin-1")
    ratings = [(1, 1, 5, 30), (1, 2, 3, 10), (1, 3, 4, 20), (1, 4, 4, 20), (1, 5, 2, 40), (1, 6, 1, 50),
               (2, 6, 5, 10), (2, 5, 5, 10), (2, 1, 5, 5), (3, 2, 1, 7), (3, 3, 1, 8), (3, 4, 2, 9),
               (4, 5, 3, 1), (4, 6, 4, 2)]
    (folder / "ratings.dat").write_text("".join("::".join(map(str, r)) + "\n" for r in ratings))
    return folder


def test_movielens_1m_layout(tmp_path):
    src = movielens_1m(tmp_path / "ml-1m")
    spec, notes = import_movielens(src, tmp_path / "out", target_share=0.4, seed=3, coldrec_max=2)
    job, sequences, tasks = load_job(spec)

    assert [t.name for t in job.tasks] == ["gender", "age", "occupation", "coldrec"]
    assert job.task("age").num_classes == 7 and job.task("occupation").num_classes == 21
    raw = read_item_vocab(tmp_path / "out" / "source" / "items.parquet")
    cold = job.task("coldrec")
    targets = set(read_target_vocab(cold.target_items, cold.target_vocab))
    assert targets and not targets & set(raw[1:]), "source and target catalogues are disjoint"
    for row, user in enumerate(sequences.user_ids):
        movies = raw[sequences.sequence(row)].astype(int).tolist()
        if user == "1":  # times 10, 20, 20, 30, 40, 50 -> ties broken by movie id
            assert movies == [m for m in [2, 3, 4, 1, 5, 6] if str(m) not in targets]
    gender = tasks["gender"]
    assert dict(zip(sequences.user_ids[gender.rows], gender.labels)) == {
        u: {"1": 0, "2": 1, "3": 1, "4": 0}[u] for u in sequences.user_ids}
    age = tasks["age"]
    assert job.task("age").labels[age.labels[sequences.user_ids[age.rows] == "2"][0]] == "56+"
    per_user = np.bincount(tasks["coldrec"].rows)
    assert per_user.max() <= 2
    assert any("dropped" in note for note in notes)


def test_movielens_users_without_source_movies_are_dropped(tmp_path):
    src = movielens_1m(tmp_path / "ml-1m")
    # User 4 rates only movies 5 and 6; find a seed that puts both in the target part.
    for seed in range(200):
        spec, notes = import_movielens(src, tmp_path / "out", target_share=0.5, seed=seed, force=True)
        job, sequences, tasks = load_job(spec)
        if "4" not in set(sequences.user_ids):
            break
    else:
        pytest.fail("no seed held out both of user 4's movies")
    assert all("4" not in set(sequences.user_ids[t.rows]) for t in tasks.values())
    assert any(note.startswith("dropped 1 users") for note in notes)


def test_movielens_bad_user_line(tmp_path, capsys):
    src = movielens_1m(tmp_path / "ml-1m")
    (src / "users.dat").write_text("1::F::1::10::48067\n2::X::56::16::70072\n")
    code = cli.main(["import", "movielens", str(src), "--out", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2
    assert "users.dat: line 2, field 'gender': 'X'" in message
    assert not (tmp_path / "out").exists()


def test_movielens_rating_of_an_unknown_user(tmp_path):
    src = movielens_1m(tmp_path / "ml-1m")
    with open(src / "ratings.dat", "a") as out:
        out.write("9::1::5::99\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 15, field 'user_id': user 9 is not in users.dat"):
        import_movielens(src, tmp_path / "out")


def test_movielens_100k(tmp_path, capsys):
    src = need(ML_100K)
    code = cli.main(["import", "movielens", str(src), "--out", str(tmp_path / "ml"), "--seed", "1"])
    printed = capsys.readouterr().out
    assert code == 0 and "tasks.toml" in printed
    job, sequences, tasks = load_job(tmp_path / "ml" / "tasks.toml")

    assert [t.name for t in job.tasks] == ["gender", "age", "occupation", "coldrec"]
    assert len(sequences) == 943
    assert job.task("occupation").num_classes == 21 and job.task("gender").labels == ["F", "M"]
    assert 0.6 < (job.vocab_size - 1) / 1682 < 0.75, "about 70% of the catalogue stays on the source side"
    assert job.task("coldrec").target_vocab < 0.35 * 1682
    assert len(sequences.items) + len(tasks["coldrec"]) <= 100_000
    shares = np.bincount(tasks["gender"].split, minlength=3) / 943
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.04)


def test_data_dir_round_trip_keeps_everything(tmp_path):
    src = movielens_1m(tmp_path / "ml-1m")
    spec, _ = import_movielens(src, tmp_path / "a", target_share=0.4)
    copy, _ = import_data_dir(tmp_path / "a", tmp_path / "b")
    for name in ["source/sequences.parquet", "source/items.parquet", "tasks/age.parquet", "tasks/coldrec.parquet",
                 "tasks/coldrec.items.parquet"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
