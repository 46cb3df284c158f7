"""`reproduce`: the grid, the settings record, the tables and the plot from result rows (no data needed),
and the real command's smoke variant (`--quick`) on MovieLens 100K where ../shared/data/ml-100k exists."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cli
from reproduce.grid import METHODS, Cell, ReproduceConfig, grid_cells, method
from reproduce.pipeline import prepare_out
from reproduce.report import arch_table, select_lrs, table_markdown, tradeoff_plot

ML100K = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ml-100k").resolve()
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
                rows.append({"arch": arch, "task": task, "method": name, "kind": kinds[task], "seed": seed,
                             "lr": 1e-3, "status": "done", "value": value + 0.01 * seed, "valid_value": value,
                             "trained_params": int(r * 1000), "ratio_vs_fineall": r, "cell": f"{task}__{name}__s{seed}",
                             "error": None})
    return rows


def test_grid_cells_cover_every_combination_costliest_first():
    config = ReproduceConfig(seeds=2)
    cells = grid_cells(config)
    assert len(cells) == 6 * 3 * 2
    assert len({c.name() for c in cells}) == len(cells)
    assert cells[0].name() == "coldrec__fineall__s0" and cells[-1].name() == "gender__finecls__s1"
    assert {c.method.name for c in cells} == {m.name for m in METHODS}
    swept = grid_cells(ReproduceConfig(seeds=1), lrs=[1e-3, 3e-4])
    assert len(swept) == 6 * 3 * 2 and "age__peterzero__lr0.0003__s0" in {c.name(tag_lr=True) for c in swept}


def test_cell_overrides_are_the_cell_settings():
    config = ReproduceConfig(epochs_classify=7, epochs_coldrec=3)
    cell = Cell("age", method("peterrec_parallel"), seed=2, lr=5e-4)
    assert cell.overrides(config, "classify") == {"mode": "peterrec", "insertion": "parallel", "seed": 2,
                                                   "lr": 5e-4, "epochs": 7, "batch_size": config.batch_size}
    assert cell.overrides(config, "coldrec")["epochs"] == 3


def test_config_reports_every_problem():
    with pytest.raises(ValueError) as error:
        ReproduceConfig(seeds=0, methods=("fineall", "nope"), archs=())
    message = str(error.value)
    assert "seeds must be >= 1" in message and "'nope'" in message and "archs" in message
    assert ReproduceConfig.from_dict(ReproduceConfig.quick().to_dict()) == ReproduceConfig.quick()


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
    assert (out / "results.md").exists()
    prepare_out(out, config, resume=False, force=True, source="ml")
    assert not (out / "results.md").exists() and (out / "mine.txt").exists()


def test_table_rows_methods_columns_tasks_mean_and_spread():
    values = {(m.name, t): 0.5 for m in METHODS for t in ("coldrec", "gender", "age")}
    values["fineall", "gender"] = 0.9
    rows = fake_rows(values)
    table = arch_table(rows, "noncausal", [m.name for m in METHODS], ["coldrec", "gender", "age"],
                       references={"gender": 0.7})
    lines = table.splitlines()
    assert lines[0] == TABLE_HEADER
    fineall = next(line for line in lines if line.startswith("| FineAll |"))
    assert "0.910 ± 0.010" in fineall and fineall.endswith("| 100.0% |")
    peterrec = next(line for line in lines if line.startswith("| PeterRec (serial) |"))
    assert "9.0% (coldrec) · 3.0% (classify)" in peterrec
    assert lines[-1].startswith("| *reference (no model)* |") and "0.700" in lines[-1]
    text = table_markdown(rows, ReproduceConfig())
    assert text.index("Non-causal") < text.index("Causal backbone")


def test_lr_selection_uses_validation_scores_only():
    rows = []
    for lr, valid, test in ((1e-4, 0.6, 0.9), (1e-3, 0.8, 0.1)):
        for row in fake_rows({("fineall", "gender"): valid}, seeds=(0,)):
            rows.append({**row, "lr": lr, "value": test})
    chosen, scores = select_lrs(rows)
    assert chosen == {"fineall": 1e-3}
    assert scores["fineall"][1e-3] == pytest.approx(1.0) and scores["fineall"][1e-4] == pytest.approx(0.75)


def test_plot_is_a_png(tmp_path):
    rows = fake_rows({(m.name, t): 0.3 for m in METHODS for t in ("coldrec", "gender")})
    path = tradeoff_plot(rows, tmp_path / "tradeoff.png")
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
    assert len(table) == len(grid_cells(config)) * len(config.archs) == 36
    assert {r["status"] for r in table} == {"done"}
    assert {(r["arch"], r["task"], r["method"], r["seed"]) for r in table} == \
        {(a, c.task, c.method.name, c.seed) for a in config.archs for c in grid_cells(config)}
    assert all(r["valid_value"] is not None and r["trained_params"] > 0 for r in table)
    fineall = {r["ratio_vs_fineall"] for r in table if r["method"] == "fineall"}
    assert fineall == {100.0}
    text = (out / "results.md").read_text()
    assert text.count(TABLE_HEADER) == 2 and text.index("Non-causal") < text.index("Causal backbone")
    for m in METHODS:
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
