"""`python -m reproduce.compare A B`: two reproductions of the same folds, validation side by side and the
paired test difference, on hand-made run directories (the files reproduce/pipeline.py writes)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reproduce.compare import main
from reproduce.grid import ReproduceConfig

USERS = 40


def write_run(out, item_init: str, valid: list[float], correct_every: int, folds: int = 2):
    """A finished run of one cell (noncausal, age, peterrec_serial) per fold; test user u is right
    when u % correct_every == 0."""
    out.mkdir()
    config = ReproduceConfig(folds=folds, item_init=item_init, methods=("peterrec_serial",), tasks=("age",),
                             archs=("noncausal",)).to_dict()
    (out / "reproduce.json").write_text(json.dumps({"config": config, "movielens": "ml-100k"}))
    cells = [{"arch": "noncausal", "task": "age", "method": "peterrec_serial", "fold": f, "seed": 0,
              "status": "done", "valid_value": valid[f], "value": 0.0} for f in range(folds)]
    pq.write_table(pa.Table.from_pylist(cells), out / "results.parquet")
    rows = [{"arch": "noncausal", "task": "age", "method": "peterrec_serial", "fold": u % folds, "seed": 0,
             "index": u // folds, "user": u, "value": float(u % correct_every == 0)} for u in range(USERS)]
    rows += [{"arch": None, "task": "age", "method": "majority", "fold": u % folds, "seed": 0, "index": u // folds,
              "user": u, "value": 0.0} for u in range(USERS)]  # baselines: not compared
    pq.write_table(pa.Table.from_pylist(rows), out / "per_row.parquet")
    return out


def test_compare_prints_validation_and_the_paired_test_difference(tmp_path, capsys):
    a = write_run(tmp_path / "a", "random", [0.40, 0.50], correct_every=4)  # test accuracy 0.25
    b = write_run(tmp_path / "b", "svd", [0.45, 0.48], correct_every=2)  # 0.5: every A-correct user too
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 0
    printed = capsys.readouterr().out
    assert "item_init: 'random' -> 'svd'" in printed
    [row] = [line for line in printed.splitlines() if "PeterRec (serial)" in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:8] == ["noncausal", "Age acc", "PeterRec (serial)", "0.450", "0.465", "1/2", "0.250", "0.500"]
    assert cells[8].startswith("+0.250 [") and cells[8].endswith("]*")
    assert (tmp_path / "cmp.md").read_text() == printed
    assert "majority" not in printed.lower()  # baselines are the same in both runs


def test_compare_refuses_other_folds_and_unfinished_runs(tmp_path, capsys):
    a = write_run(tmp_path / "a", "random", [0.4, 0.5], correct_every=4)
    b = write_run(tmp_path / "b", "svd", [0.4, 0.5, 0.6], correct_every=2, folds=3)
    assert main([str(a), str(b)]) == 2
    assert "do not share their folds" in capsys.readouterr().err
    (b / "per_row.parquet").unlink()
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp.md")]) == 2
    assert "per_row.parquet" in capsys.readouterr().err and not (tmp_path / "cmp.md").exists()


@pytest.mark.parametrize("recorded", [{}, {"item_init": "random"}])
def test_runs_recorded_before_item_init_read_as_random(recorded):
    config = ReproduceConfig().to_dict()
    del config["item_init"]
    assert ReproduceConfig.from_dict({**config, **recorded}).item_init == "random"


def test_bad_run_files_and_an_out_inside_a_run_are_named(tmp_path, capsys):
    a = write_run(tmp_path / "a", "random", [0.4, 0.5], correct_every=4)
    b = write_run(tmp_path / "b", "svd", [0.45, 0.48], correct_every=2)
    assert main([str(a), str(b), "--out", str(a / "cmp.md")]) == 2  # never write into an input
    assert "--out lies inside the input A" in capsys.readouterr().err and not (a / "cmp.md").exists()
    (b / "reproduce.json").write_text("{not json")
    assert main([str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {b / 'reproduce.json'}: field 'config':") and "Traceback" not in err
    write_run(tmp_path / "c", "svd", [0.45, 0.48], correct_every=2)
    table = pq.read_table(tmp_path / "c" / "per_row.parquet").drop(["user"])
    pq.write_table(table, tmp_path / "c" / "per_row.parquet")
    assert main([str(a), str(tmp_path / "c")]) == 2
    assert f"{tmp_path / 'c' / 'per_row.parquet'}: field 'user':" in capsys.readouterr().err
    (tmp_path / "c" / "results.parquet").write_bytes(b"not parquet")
    assert main([str(a), str(tmp_path / "c")]) == 2
    assert "results.parquet: not a Parquet table" in capsys.readouterr().err
