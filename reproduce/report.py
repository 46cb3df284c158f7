"""Tables and the plot of a reproduction (reproduce/pipeline.py), from its merged result rows.

No Ray and no torch here: rows in, Markdown and a PNG out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from tasks.atomic import staged_file

ARCH_TITLES = {
    "noncausal": "Non-causal backbone (GRec encoder, cloze pretraining): the architecture of the paper's Table 3",
    "causal": "Causal backbone (NextItNet, next-item pretraining)",
}


def _labels():
    from reproduce.grid import GRID_TASKS, METHODS

    return {m.name: m.label for m in METHODS}, {t.name: t.label for t in GRID_TASKS}


def _done(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "done" and r["value"] is not None]


def _pct(value: float) -> str:
    return f"{value:.2g}%" if value < 1 else f"{value:.1f}%"


# Metrics over all test users, with confidence intervals ----------------------------------------------------

NO_MODEL = {"classify": "majority", "coldrec": "popularity"}
STRONG = {"classify": "bag_lr", "coldrec": "item_knn"}
REFERENCES = ("peterrec_serial", "peterrec_parallel")  # the methods every other row is compared with


def _aligned(records: list[dict]) -> dict[tuple[int, int], tuple[int, float]]:
    """{(fold, index): (user, value averaged over seeds)} of one method's test rows."""
    sums = defaultdict(lambda: [0, 0.0, 0])
    for r in records:
        cell = sums[r["fold"], r["index"]]
        cell[0], cell[1], cell[2] = r["user"], cell[1] + r["value"], cell[2] + 1
    return {k: (u, total / n) for k, (u, total, n) in sums.items()}


def summarise(rows: list[dict], per_row: list[dict], config, seed: int = 0) -> dict:
    """{"cells": {(arch, task, name): metric with CI + params}, "diffs": {(arch, task): [(a, b, paired)]},
    "folds", "archs", "kinds"}: every method per architecture and every baseline (the same for each
    architecture) over all test users of every fold; paired differences on the test rows both have."""
    from reproduce.stats import bootstrap_ci, paired_difference

    done = _done(rows)
    archs = [a for a in config.archs if any(r["arch"] == a for r in done)]
    kinds = {r["task"]: r["kind"] for r in done}
    grouped = defaultdict(list)
    for r in per_row:
        grouped[r["arch"], r["task"], r["method"]].append(r)
    baselines = sorted({m for (a, _, m) in grouped if a is None})
    cells, diffs = {}, {}
    for arch in archs:
        for task in config.tasks:
            series = {m: _aligned(grouped[arch, task, m]) for m in config.methods if grouped.get((arch, task, m))}
            series.update({b: _aligned(grouped[None, task, b]) for b in baselines if grouped.get((None, task, b))})
            for name, values in series.items():
                users = np.array([u for u, _ in values.values()])
                summary = bootstrap_ci(np.array([v for _, v in values.values()]), users, seed=seed)
                mine = [r for r in done if r["arch"] == arch and r["task"] == task and r["method"] == name]
                summary["params"] = float(np.mean([r["trained_params"] for r in mine])) if mine else None
                summary["ratio"] = float(np.mean([r["ratio_vs_fineall"] for r in mine])) if mine else None
                cells[arch, task, name] = summary
            kind = kinds.get(task, "classify")
            references = [m for m in REFERENCES if m in config.methods]
            pairs = [(ref, m) for i, ref in enumerate(references)
                     for m in [*config.methods, *baselines] if m not in references[:i + 1]]
            pairs += [(m, NO_MODEL[kind]) for m in config.methods if m not in references]
            pairs += [(m, STRONG[kind]) for m in config.methods if m not in references]
            out = []
            for a, b in dict.fromkeys(pairs):
                if a not in series or b not in series:
                    continue
                keys = sorted(set(series[a]) & set(series[b]))
                if keys:
                    users = np.array([series[a][k][0] for k in keys])
                    out.append((a, b, paired_difference(np.array([series[a][k][1] for k in keys]),
                                                        np.array([series[b][k][1] for k in keys]), users,
                                                        seed=seed)))
            diffs[arch, task] = out
    return {"cells": cells, "diffs": diffs, "archs": archs, "kinds": kinds, "baselines": baselines,
            "folds": sorted({r["fold"] for r in per_row})}


def _name(name: str) -> str:
    from reproduce.baselines import BASELINES

    method_labels, _ = _labels()
    short = {"majority": "Majority class", "popularity": "Popularity", "bag_lr": "Bag-of-items LR",
             "item_knn": "Item kNN"}
    return method_labels.get(name) or short.get(name) or BASELINES.get(name, name)


def arch_table(summary: dict, arch: str, methods: list[str], tasks: list[str]) -> str:
    """One architecture: rows = methods then baselines, columns = tasks ("metric [95% CI]" over all test
    users of every fold), and the trained parameters as % of FineAll."""
    from reproduce.stats import format_ci

    _, task_labels = _labels()
    cells = summary["cells"]
    header = ["Method", *(task_labels.get(t, t) for t in tasks), "trained params, % of FineAll"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in [*methods, *summary["baselines"]]:
        row = [cells.get((arch, t, name)) for t in tasks]
        if not any(row):
            continue
        shown = [format_ci(c) if c else "" for c in row]
        by_kind = defaultdict(list)  # a cold-start head is a whole target table, a classifier's is tiny
        for t, c in zip(tasks, row):
            if c and c["ratio"] is not None:
                by_kind[summary["kinds"].get(t)].append(c["ratio"])
        ratios = {k: _pct(float(np.mean(v))) for k, v in by_kind.items()}
        if len(set(ratios.values())) > 1:
            ratio = " · ".join(f"{r} ({k})" for k, r in sorted(ratios.items(), key=lambda kr: kr[0] != "coldrec"))
        else:
            ratio = next(iter(ratios.values()), "-")
        label = _name(name) if name in methods else f"*{_name(name)}*"
        lines.append("| " + " | ".join([label, *shown, ratio]) + " |")
    return "\n".join(lines)


def diff_table(summary: dict, arch: str, tasks: list[str]) -> str:
    """Paired differences (row a - row b on the same test users), 95% bootstrap CI, * where it excludes 0."""
    from reproduce.stats import format_diff

    _, task_labels = _labels()
    pairs = list(dict.fromkeys((a, b) for t in tasks for a, b, _ in summary["diffs"].get((arch, t), [])))
    by = {(t, a, b): d for t in tasks for a, b, d in summary["diffs"].get((arch, t), [])}
    lines = ["| a - b | " + " | ".join(task_labels.get(t, t) for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for a, b in pairs:
        shown = [format_diff(by[t, a, b]) if (t, a, b) in by else "" for t in tasks]
        lines.append(f"| {_name(a)} - {_name(b)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def table_markdown(summary: dict, config, command: str = "", pretraining: dict[str, dict] | None = None,
                   rows: list[dict] | None = None) -> str:
    """OUT/results.md: per architecture (non-causal first) the metric table and the paired differences;
    then each backbone's pretraining and any failed cell."""
    from reproduce.baselines import BASELINES

    folds = summary["folds"]
    out = ["# PeterRec on MovieLens: the paper's comparison, user-level k-fold", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    users = max((c["users"] for c in summary["cells"].values()), default=0)
    out += [f"{len(folds)}-fold user-level cross-validation: every labelled user is a test user exactly once "
            f"(up to {users} test users per task). Each cell is the task metric over all test rows of every fold "
            f"(seeds averaged per row) with a 95% bootstrap CI over users (10,000 resamples). ColdRec: MRR@5 of "
            f"the true target among 100 candidates (99 sampled negatives, the same for every row of the table); "
            f"Gender, Age: accuracy. Trained params: what each method optimises per task, as % of FineAll's. "
            f"Rows in italics are baselines computed by the same command on the same folds: "
            + "; ".join(f"{_name(k)}: {v}" for k, v in BASELINES.items()) + ".", ""]
    for arch in summary["archs"]:
        out += [f"## {ARCH_TITLES.get(arch, arch)}", "", arch_table(summary, arch, list(config.methods),
                                                                       list(config.tasks)), "",
                "Paired differences (a - b on the same test users; 95% bootstrap CI; * = significant, the CI "
                "excludes 0):", "", diff_table(summary, arch, list(config.tasks)), ""]
    if pretraining:
        out += ["## Pretraining", "", "| Backbone | objective | item embedding start | examples | epochs run | "
                "best epoch | validation loss (start -> best) | seconds |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for arch, p in pretraining.items():
            out.append(f"| {arch} | {p.get('objective', '')} | {p.get('item_init', 'random')} | "
                       f"{p.get('examples', '')} | {len(p.get('curve', []))} "
                       f"| {p.get('best_epoch')} | {p['valid_loss_before']:.3f} -> {p['valid_loss_after']:.3f} | "
                       f"{p['seconds']:.0f} |")
        out.append("")
    failed = [r for r in rows or [] if r["status"] != "done"]
    if failed:
        out += ["## Failed cells", ""] + [f"- {r['arch']}/{r['cell']}: {r['error']}" for r in failed] + [""]
    return "\n".join(out)


# Learning-rate selection on the validation split -------------------------------------------------------------


def select_lrs(rows: list[dict]) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Per method, the learning rate with the best mean *relative validation score*: a cell's validation
    metric divided by the best validation metric any method reached on that (arch, task), averaged over
    the (arch, task) pairs. Returns (chosen lr per method, score per method and lr)."""
    rows = [r for r in _done(rows) if r["valid_value"] is not None and not math.isnan(r["valid_value"])]
    best = defaultdict(float)
    for r in rows:
        best[r["arch"], r["task"]] = max(best[r["arch"], r["task"]], r["valid_value"])
    parts = defaultdict(list)
    for r in rows:
        top = best[r["arch"], r["task"]]
        parts[r["method"], r["lr"]].append(r["valid_value"] / top if top > 0 else 0.0)
    scores = defaultdict(dict)
    for (name, lr), values in parts.items():
        scores[name][lr] = float(np.mean(values))
    chosen = {name: max(by_lr, key=by_lr.get) for name, by_lr in scores.items()}
    return chosen, scores


def selection_markdown(rows: list[dict], config) -> tuple[dict[str, float], str]:
    """OUT/selection.md: validation metrics only, and the learning rate chosen per method."""
    method_labels, task_labels = _labels()
    chosen, scores = select_lrs(rows)
    lrs = sorted({r["lr"] for r in rows})
    out = ["# Learning-rate selection on the validation split", "",
           "Score: a cell's validation metric / the best validation metric of any method on the same "
           "(architecture, task), averaged over architectures and tasks. Test metrics are not shown.", "",
           "| Method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |",
           "|---|" + "---:|" * (len(lrs) + 1)]
    for name in config.methods:
        if name not in scores:
            continue
        cells = [f"**{scores[name][lr]:.3f}**" if lr == chosen[name] else
                 (f"{scores[name][lr]:.3f}" if lr in scores[name] else "") for lr in lrs]
        out.append(f"| {method_labels[name]} | " + " | ".join(cells) + f" | {chosen[name]:g} |")
    for arch in config.archs:
        out += ["", f"## {arch}: validation metric per task and learning rate", "",
                "| Method | Task | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
                "|---|---|" + "---:|" * len(lrs)]
        for name in config.methods:
            for task in config.tasks:
                values = {r["lr"]: r["valid_value"] for r in _done(rows)
                          if r["arch"] == arch and r["method"] == name and r["task"] == task}
                if values:
                    cells = [f"{values[lr]:.3f}" if values.get(lr) is not None else "" for lr in lrs]
                    out.append(f"| {method_labels[name]} | {task_labels[task]} | " + " | ".join(cells) + " |")
    out += ["", "Chosen (reproduce/grid.py, REPRODUCE_LR):", "", "```python",
            "REPRODUCE_LR = {", *(f'    "{k}": {chosen[k]:g},' for k in config.methods if k in chosen), "}", "```",
            ""]
    return chosen, "\n".join(out)


# The plot ---------------------------------------------------------------------------------------------------

MARKERS = {"finecls": "v", "finelast": "s", "fineall": "o", "peterrec_serial": "*", "peterrec_parallel": "P",
           "peterzero": "X", "peterrec_emb": "D"}
COLOURS = {"noncausal": "tab:blue", "causal": "tab:orange"}
# PeterRec (both insertions) and PeterZero train the same number of parameters: their markers are spread
# by a few percent along x so that none hides another.
NUDGE = {"peterrec_serial": 0.93, "peterrec_parallel": 1.0, "peterzero": 1.075, "peterrec_emb": 1.0}


def tradeoff_plot(summary: dict, path: Path, tasks: list[str] | None = None) -> Path:
    """OUT/tradeoff.png: test metric over all test users (95% CI bars) against trained parameters (log x),
    one panel per task, one marker shape per method, one colour per architecture; the baselines as
    horizontal lines (grey dashed: no model; green dotted: bag-of-items LR / item kNN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    method_labels, task_labels = _labels()
    cells = summary["cells"]
    present = list(dict.fromkeys(t for _, t, _ in cells))
    tasks = [t for t in (tasks or present) if t in present] or ["(none)"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.2), squeeze=False)
    methods = list(dict.fromkeys(m for _, _, m in cells if m in method_labels))
    archs = summary["archs"]
    for ax, task in zip(axes[0], tasks):
        for (arch, t, name), c in cells.items():
            if t != task or name not in method_labels or c["params"] is None:
                continue
            ax.errorbar(c["params"] * NUDGE.get(name, 1.0), c["value"],
                        yerr=[[c["value"] - c["lo"]], [c["hi"] - c["value"]]], marker=MARKERS.get(name, "o"),
                        color=COLOURS.get(arch, "gray"), markersize=9, capsize=3, linestyle="none", alpha=0.9)
        for name in summary["baselines"]:
            c = cells.get((archs[0], task, name)) if archs else None
            if c:
                strong = name in STRONG.values()
                ax.axhline(c["value"], color="tab:green" if strong else "gray", linestyle=":" if strong else "--",
                           linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task_labels.get(task, task))
        ax.set_xlabel("trained parameters per task (log)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("test metric, all test users (95% CI)")
    handles = [Line2D([], [], marker=MARKERS.get(m, "o"), color="black", linestyle="none", markersize=8,
                      label=method_labels.get(m, m)) for m in methods]
    handles += [Line2D([], [], marker="o", color=COLOURS.get(a, "gray"), linestyle="none", markersize=8,
                       label=a) for a in archs]
    handles.append(Line2D([], [], color="gray", linestyle="--", label="no model (majority / popularity)"))
    handles.append(Line2D([], [], color="tab:green", linestyle=":", label="bag-of-items LR / item kNN"))
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    path = Path(path)
    with staged_file(path) as staging:
        fig.savefig(staging, dpi=110, format="png")
    plt.close(fig)
    return path
