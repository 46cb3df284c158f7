"""`reproduce`: the grid, the settings record, the tables and the plot from result rows (no data needed),
and the real command's smoke variant (`--quick`) on MovieLens 100K where ../shared/data/ml-100k exists."""

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import cli
from reproduce.grid import DEFAULT_METHODS, METHODS, Cell, ReproduceConfig, grid_cells, method
from reproduce.pipeline import prepare_out
from reproduce.report import arch_table, select_lrs, summarise, table_markdown, tradeoff_plot

ML100K = Path(os.environ.get("PETERREC_ML100K") or
              (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ml-100k")).resolve()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE_HEADER = "| Method | ColdRec MRR@5 | Gender acc | Age acc | trained params, % of FineAll |"


def fake_rows(values: dict, seeds=(0, 1, 2), archs=("noncausal", "causal")) -> list[dict]:
    """Result rows of a grid: values[(method, task)] -> test metric of seed 0 (each later seed adds 0.01)."""
    kinds = {"coldrec": "coldrec", "gender": "classify", "age": "classify"}
    ratio = {"finecls": 0.1, "finelast": 8.0, "fineall": 100.0, "peterrec_serial": 3.0,
             "peterrec_parallel": 3.0, "peterzero": 3.0}
    rows = []
    for arch in archs:
        for (name, task), value in values.items():
            for seed in seeds:
                r = ratio[name] * (3.0 if kinds[task] == "coldrec" and name != "fineall" else 1.0)
                rows.append({"arch": arch, "task": task, "fold": 0, "method": name, "kind": kinds[task], "seed": seed,
                             "lr": 1e-3, "status": "done", "value": value + 0.01 * seed, "valid_value": value,
                             "trained_params": int(r * 1000), "ratio_vs_fineall": r,
                             "cell": f"{task}__{name}__s{seed}__f0", "error": None})
    return rows


def fake_per_row(accuracy: dict, users: int = 400, folds: int = 2, archs=("noncausal", "causal")) -> list[dict]:
    """Per-row test values: accuracy[(method, task)] is the share of users a method gets right (the same
    first users for every method, so differences are paired); method None rows are baselines."""
    out = []
    for (name, task), share in accuracy.items():
        start, share = share if isinstance(share, tuple) else (0, share)  # right: users start.. start + share
        for arch in (archs if name not in ("majority", "bag_lr", "popularity", "item_knn") else (None,)):
            for user in range(users):
                fold, index = user % folds, user // folds
                out.append({"arch": arch, "task": task, "method": name, "fold": fold, "seed": 0, "index": index,
                            "user": user, "value": float(start <= user < start + share * users)})
    return out


def test_grid_cells_cover_every_combination_and_fold_costliest_first():
    config = ReproduceConfig(seeds=2, folds=3)
    cells = grid_cells(config)
    assert len(cells) == 6 * 3 * 2 * 3
    assert len({c.name() for c in cells}) == len(cells)
    assert cells[0].name() == "coldrec__fineall__s0__f0" and cells[-1].name() == "gender__finecls__s1__f2"
    assert {c.method.name for c in cells} == set(DEFAULT_METHODS) == {m.name for m in METHODS} - {"peterrec_emb"}
    swept = grid_cells(ReproduceConfig(seeds=1), lrs=[1e-3, 3e-4], folds=1)
    assert len(swept) == 6 * 3 * 2 and "age__peterzero__lr0.0003__s0__f0" in {c.name(tag_lr=True) for c in swept}


def test_cell_overrides_are_the_cell_settings():
    config = ReproduceConfig(epochs_classify=7, epochs_coldrec=3)
    cell = Cell("age", method("peterrec_parallel"), seed=2, lr=5e-4, fold=3)
    assert cell.overrides(config, "classify") == {"mode": "peterrec", "insertion": "parallel", "seed": 2,
                                                   "lr": 5e-4, "epochs": 7, "batch_size": config.batch_size}
    assert cell.overrides(config, "coldrec")["epochs"] == 3
    assert cell.overrides(config, "coldrec")["input_len"] == config.coldrec_input_len < config.max_len
    assert Cell("age", method("peterrec_emb"), 0, 1e-3).overrides(config, "classify")["embedding_rank"] == 4


def test_config_reports_every_problem():
    with pytest.raises(ValueError) as error:
        ReproduceConfig(seeds=0, methods=("fineall", "nope"), archs=(), folds=1)
    message = str(error.value)
    assert "seeds must be >= 1" in message and "'nope'" in message and "archs" in message and "folds" in message
    assert ReproduceConfig.from_dict(ReproduceConfig.quick().to_dict()) == ReproduceConfig.quick()
    assert ReproduceConfig.quick().folds == 2 and ReproduceConfig().folds == 5


def test_out_is_refused_reused_or_cleared(tmp_path):
    out = tmp_path / "out"
    config = ReproduceConfig.quick()
    prepare_out(out, config, resume=False, force=False, source="ml")
    (out / "results.md").write_text("old")
    (out / "mine.txt").write_text("not the reproduction's")
    with pytest.raises(FileExistsError, match="--resume"):
        prepare_out(out, config, resume=False, force=False, source="ml")
    with pytest.raises(ValueError, match="seeds"):
        prepare_out(out, ReproduceConfig.quick(seeds=2), resume=True, force=False, source="ml")
    prepare_out(out, config, resume=True, force=False, source="ml")
    prepare_out(out, config, resume=True, force=False, source=str(Path("x", "..", "ml").absolute()))  # same data
    with pytest.raises(ValueError, match="data"):
        prepare_out(out, config, resume=True, force=False, source="other")
    assert (out / "results.md").exists()
    prepare_out(out, config, resume=False, force=True, source="ml")
    assert not (out / "results.md").exists() and (out / "mine.txt").exists()


def test_a_run_recorded_before_item_init_resumes_as_random(tmp_path):
    out = tmp_path / "out"
    prepare_out(out, ReproduceConfig.quick(item_init="random"), resume=False, force=False, source="ml")
    record = json.loads((out / "reproduce.json").read_text())
    del record["config"]["item_init"]
    (out / "reproduce.json").write_text(json.dumps(record))
    prepare_out(out, ReproduceConfig.quick(item_init="random"), resume=True, force=False, source="ml")
    with pytest.raises(ValueError, match="item_init"):
        prepare_out(out, ReproduceConfig.quick(item_init="svd"), resume=True, force=False, source="ml")


def test_tables_give_every_method_and_baseline_a_ci_and_paired_differences_marks():
    methods = list(DEFAULT_METHODS)
    accuracy = {(m, t): 0.5 for m in methods for t in ("gender", "age")}
    accuracy["fineall", "age"] = 0.7  # 0.2 above everything on the same users: significant at 400 users
    accuracy["peterrec_serial", "age"] = (4, 0.505)  # 6 users more right, 4 fewer: not significant
    accuracy.update({("majority", "age"): 0.5, ("bag_lr", "age"): 0.5, ("majority", "gender"): 0.5})
    rows = fake_rows({(m, t): 0.5 for m in methods for t in ("gender", "age")}, seeds=(0,))
    config = ReproduceConfig(tasks=("gender", "age"))
    summary = summarise(rows, fake_per_row(accuracy), config)
    fineall = summary["cells"]["causal", "age", "fineall"]
    assert fineall["value"] == pytest.approx(0.7) and fineall["lo"] < 0.7 < fineall["hi"] and fineall["users"] == 400
    diffs = {(a, b): d for a, b, d in summary["diffs"]["causal", "age"]}
    assert diffs["peterrec_serial", "majority"]["diff"] == pytest.approx(0.005)
    assert diffs["peterrec_serial", "fineall"]["significant"] and diffs["peterrec_serial", "fineall"]["diff"] < 0
    assert not diffs["peterrec_serial", "majority"]["significant"]
    assert diffs["fineall", "majority"]["significant"] and ("fineall", "bag_lr") in diffs
    # Both PeterRec variants are compared with every other method, once per pair.
    assert diffs["peterrec_parallel", "fineall"]["significant"] and ("peterrec_parallel", "peterzero") in diffs
    assert ("peterrec_serial", "peterrec_parallel") in diffs and ("peterrec_parallel", "peterrec_serial") not in diffs
    assert len(diffs) == len(summary["diffs"]["causal", "age"])
    text = table_markdown(summary, config, rows=rows)
    assert text.index("Non-causal") < text.index("Causal backbone")
    table = arch_table(summary, "causal", methods, ["gender", "age"])
    lines = table.splitlines()
    assert lines[0] == "| Method | Gender acc | Age acc | trained params, % of FineAll |"
    assert next(line for line in lines if line.startswith("| FineAll |")).endswith("| 100.0% |")
    assert any(line.startswith("| *Bag-of-items LR* |") for line in lines)
    assert "| PeterRec (serial) - FineAll | " in text and "]*" in text.split("PeterRec (serial) - FineAll")[1].split("\n")[0]


def test_bootstrap_ci_and_paired_difference_resample_users():
    from reproduce.stats import bootstrap_ci, paired_difference

    users = np.repeat(np.arange(200), 3)  # 3 rows per user (coldrec): resampled together
    values = (users < 100).astype(float)
    ci = bootstrap_ci(values, users)
    assert ci["value"] == pytest.approx(0.5) and ci["users"] == 200 and 0.42 < ci["lo"] < 0.5 < ci["hi"] < 0.58
    same = paired_difference(values, values, users)
    assert same["diff"] == 0 and not same["significant"]
    better = paired_difference(np.minimum(values + (users < 150), 1), values, users)
    assert better["diff"] == pytest.approx(0.25) and better["significant"] and better["p"] < 0.01


def test_folds_test_every_user_once_and_validate_on_others(tmp_path):
    from tasks import load_job
    from tasks.folds import kfold_users, write_folds
    from tasks.synth import synthesize

    folds = kfold_users(np.arange(103), k=5, seed=0, valid_fraction=0.1)
    tests = np.concatenate([f.test for f in folds])
    assert sorted(tests) == list(range(103)) and {len(f.test) for f in folds} == {20, 21}
    for f in folds:
        assert len(f.valid) == 10 and not set(f.valid) & set(f.test) and not set(f.train) & set(f.valid)
        assert len(f.train) + len(f.valid) + len(f.test) == 103
    assert [list(f.test) for f in kfold_users(np.arange(103), 5, 0)] == [list(f.test) for f in folds]
    with pytest.raises(ValueError, match="folds"):
        kfold_users(np.arange(10), k=1)
    spec = synthesize(tmp_path / "data", tasks=3, users=60, items=30, seed=0)
    _, _, original = load_job(spec)
    fold_list, specs = write_folds(spec, tmp_path / "folds", k=3, seed=1)
    tested = {}
    for fold, path in zip(fold_list, specs):
        _, _, data = load_job(path)
        for name, task in data.items():
            assert np.array_equal(task.labels, original[name].labels)  # same rows, new splits
            test_rows, _ = task.part("test")
            assert set(test_rows) <= set(fold.test)
            tested.setdefault(name, []).extend(test_rows.tolist())
    for name, rows in tested.items():  # every labelled row tested exactly once over the folds
        assert sorted(rows) == sorted(original[name].rows.tolist())


def test_baselines_score_the_same_rows_and_candidates(tmp_path):
    from reproduce.baselines import baseline_values
    from tasks import load_job
    from tasks.synth import synthesize

    spec = synthesize(tmp_path / "data", tasks=4, users=150, items=40, seed=2)
    job, sequences, data = load_job(spec)
    kinds = {t.kind for t in job.tasks}
    assert kinds == {"classify", "coldrec"}
    for task in job.tasks:
        values = baseline_values(sequences, data[task.name], seeds=2, negatives=10)
        n_test = len(data[task.name].part("test")[1])
        expected = {"majority", "bag_lr"} if task.kind == "classify" else {"popularity", "item_knn"}
        assert set(values) == expected
        for name, (per_row, chosen) in values.items():
            assert per_row.shape == (n_test,) and ((0 <= per_row) & (per_row <= 1)).all()
        if task.kind == "classify":
            assert values["bag_lr"][1]["C"] in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)

def test_lr_selection_uses_validation_scores_only():
    rows = []
    for lr, valid, test in ((1e-4, 0.6, 0.9), (1e-3, 0.8, 0.1)):
        for row in fake_rows({("fineall", "gender"): valid}, seeds=(0,)):
            rows.append({**row, "lr": lr, "value": test})
    chosen, scores = select_lrs(rows)
    assert chosen == {"fineall": 1e-3}
    assert scores["fineall"][1e-3] == pytest.approx(1.0) and scores["fineall"][1e-4] == pytest.approx(0.75)


def test_plot_is_a_png(tmp_path):
    methods = list(DEFAULT_METHODS)
    rows = fake_rows({(m, t): 0.3 for m in methods for t in ("coldrec", "gender")}, seeds=(0,))
    accuracy = {(m, t): 0.3 for m in methods for t in ("coldrec", "gender")}
    accuracy.update({("majority", "gender"): 0.5, ("bag_lr", "gender"): 0.6, ("item_knn", "coldrec"): 0.4})
    summary = summarise(rows, fake_per_row(accuracy, users=50), ReproduceConfig(tasks=("coldrec", "gender")))
    path = tradeoff_plot(summary, tmp_path / "tradeoff.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_quick_reproduce_on_movielens(tmp_path):
    """The real command, end to end on ML-100K: import, two pretrainings, both grids as orchestrated jobs."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (u.data): the reproduce smoke test needs a copy of "
                    f"ml-100k there; it is never part of this repository")
    out = tmp_path / "out"
    code = cli.main(["reproduce", "--movielens", str(ML100K), "--out", str(out), "--quick", "--num-cpus", "2",
                     "--ui", "plain"])
    assert code == 0
    table = pq.read_table(out / "results.parquet").to_pylist()
    config = ReproduceConfig.quick()
    assert len(table) == len(grid_cells(config)) * len(config.archs) == 72  # 2 folds
    assert {r["status"] for r in table} == {"done"}
    assert {(r["arch"], r["task"], r["method"], r["seed"], r["fold"]) for r in table} == \
        {(a, c.task, c.method.name, c.seed, c.fold) for a in config.archs for c in grid_cells(config)}
    # Every cell re-scored per test row gives the job's own test metric; every user is tested once per task.
    per_row = pq.read_table(out / "per_row.parquet").to_pylist()
    for r in table:
        mine = [p["value"] for p in per_row if (p["arch"], p["task"], p["method"], p["fold"], p["seed"]) ==
                (r["arch"], r["task"], r["method"], r["fold"], r["seed"])]
        assert mine and np.mean(mine) == pytest.approx(r["value"], abs=1e-6)
    for task in config.tasks:
        users = [p["user"] for p in per_row if p["task"] == task and p["method"] == "finecls" and p["arch"] == "causal"]
        assert len(set(users)) == len({(p["user"]) for p in per_row if p["task"] == task and p["arch"] is None})
    assert {p["method"] for p in per_row if p["arch"] is None} == {"majority", "bag_lr", "popularity", "item_knn"}
    assert all(r["valid_value"] is not None and r["trained_params"] > 0 for r in table)
    fineall = {r["ratio_vs_fineall"] for r in table if r["method"] == "fineall"}
    assert fineall == {100.0}
    text = (out / "results.md").read_text()
    assert text.count(TABLE_HEADER) == 2 and "Paired differences" in text and "*Bag-of-items LR*" in text and text.index("Non-causal") < text.index("Causal backbone")
    for m in (m for m in METHODS if m.name in DEFAULT_METHODS):
        assert f"| {m.label} |" in text
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    for arch in config.archs:
        assert (out / "backbones" / arch / "model.safetensors").exists()
        assert (out / "jobs" / arch / "bundle" / "index.json").exists()
    # The same command again refuses to overwrite; with --resume it keeps every finished cell.
    args = ["reproduce", "--movielens", str(ML100K), "--out", str(out), "--quick", "--num-cpus", "2", "--ui", "plain"]
    assert cli.main(args) == 2
    seconds = {(r["arch"], r["cell"]): r["seconds"] for r in table}
    assert cli.main([*args, "--resume"]) == 0
    again = pq.read_table(out / "results.parquet").to_pylist()
    assert {(r["arch"], r["cell"]): r["seconds"] for r in again} == seconds


def test_a_data_directory_is_read_in_place_and_its_tasks_checked(tmp_path):
    from reproduce.pipeline import data_spec
    from tasks.synth import synthesize

    spec = synthesize(tmp_path / "world", tasks=4, users=60, items=30, seed=0, paper_regime=True)
    config = ReproduceConfig.quick(tasks=("t000_binary", "t003_coldrec"))
    assert data_spec(tmp_path / "world", "data", tmp_path / "out" / "data", config, resume=False) == spec
    assert not (tmp_path / "out").exists()  # nothing imported, nothing copied
    with pytest.raises(ValueError, match="no task.*'gender'.*t000_binary"):
        data_spec(tmp_path / "world", "data", tmp_path / "out" / "data", ReproduceConfig.quick(), resume=False)
