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


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _pct(value: float) -> str:
    return f"{value:.2g}%" if value < 1 else f"{value:.1f}%"


def _ratio_cell(rows: list[dict], tasks: list[str]) -> str:
    """Trained parameters as % of FineAll: one value when every task agrees (to the shown digits),
    else one per task kind (a cold-start head is a whole target-item table, a classifier head is tiny)."""
    by_kind = {}
    for task in tasks:
        values = [r["ratio_vs_fineall"] for r in rows if r["task"] == task and r["ratio_vs_fineall"] is not None]
        if values:
            kind = next(r["kind"] for r in rows if r["task"] == task)
            by_kind.setdefault(kind, []).append(float(np.mean(values)))
    shown = {kind: _pct(float(np.mean(v))) for kind, v in by_kind.items()}
    if len(set(shown.values())) <= 1:
        return next(iter(shown.values()), "")
    return " · ".join(f"{v} ({kind})" for kind, v in sorted(shown.items(), key=lambda kv: kv[0] != "coldrec"))


def arch_table(rows: list[dict], arch: str, methods: list[str], tasks: list[str],
               references: dict[str, float] | None = None) -> str:
    """Table 3 for one architecture: rows = methods, columns = tasks ("mean ± std" over seeds of the test
    metric), and the trained parameters as % of FineAll."""
    method_labels, task_labels = _labels()
    rows = [r for r in _done(rows) if r["arch"] == arch]
    header = ["Method", *(task_labels[t] for t in tasks), "trained params, % of FineAll"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        cells = []
        for task in tasks:
            values = [r["value"] for r in mine if r["task"] == task]
            if values:
                mean, std = mean_std(values)
                cells.append(f"{mean:.3f} ± {std:.3f}")
            else:
                cells.append("n/a")
        lines.append("| " + " | ".join([method_labels[name], *cells, _ratio_cell(mine, tasks)]) + " |")
    if references:
        cells = [f"{references[t]:.3f}" if t in references else "" for t in tasks]
        lines.append("| " + " | ".join(["*reference (no model)*", *cells, "0"]) + " |")
    return "\n".join(lines)


def table_markdown(rows: list[dict], config, command: str = "", references: dict | None = None,
                   pretraining: dict[str, dict] | None = None) -> str:
    """OUT/results.md: one Table 3 per architecture, non-causal first; then each backbone's pretraining."""
    archs = [a for a in config.archs if any(r["arch"] == a for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    out = ["# PeterRec on MovieLens: the paper's Table 3", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    out += [f"Test split; mean ± sample std over {len(seeds)} fine-tuning seed(s) ({', '.join(map(str, seeds))}). "
            "ColdRec: MRR@5 of the true target item among 100 candidates (99 sampled negatives); Gender, Age: "
            "accuracy. Trained params: what each method optimises per task, as % of FineAll's "
            "(backbone + head).", ""]
    if references:
        out += ["Reference row: majority class of the training split (Gender, Age) and item popularity in the "
                "training split (ColdRec), scored on the same test rows and candidates.", ""]
    for arch in archs:
        out += [f"## {ARCH_TITLES.get(arch, arch)}", "",
                arch_table(rows, arch, list(config.methods), list(config.tasks), references), ""]
    if pretraining:
        out += ["## Pretraining", "", "| Backbone | objective | examples | epochs run | best epoch | "
                "validation loss (start -> best) | seconds |", "|---|---|---:|---:|---:|---:|---:|"]
        for arch, p in pretraining.items():
            out.append(f"| {arch} | {p.get('objective', '')} | {p.get('examples', '')} | {len(p.get('curve', []))} "
                       f"| {p.get('best_epoch')} | {p['valid_loss_before']:.3f} -> {p['valid_loss_after']:.3f} | "
                       f"{p['seconds']:.0f} |")
        out.append("")
    failed = [r for r in rows if r["status"] != "done"]
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
           "peterzero": "X"}
COLOURS = {"noncausal": "tab:blue", "causal": "tab:orange"}
# PeterRec (both insertions) and PeterZero train the same number of parameters: their markers are spread
# by a few percent along x so that none hides another.
NUDGE = {"peterrec_serial": 0.93, "peterrec_parallel": 1.0, "peterzero": 1.075}


def tradeoff_plot(rows: list[dict], path: Path, tasks: list[str] | None = None,
                  references: dict[str, float] | None = None) -> Path:
    """OUT/tradeoff.png: test metric (mean ± std over seeds) against trained parameters (log x), one
    panel per task, one marker shape per method, one colour per architecture; a dashed line for the
    reference without a model, when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    method_labels, task_labels = _labels()
    rows = _done(rows)
    present = list(dict.fromkeys(r["task"] for r in rows))
    tasks = [t for t in (tasks or present) if t in present] or ["(none)"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.2), squeeze=False)
    groups = defaultdict(list)
    for r in rows:
        groups[r["arch"], r["task"], r["method"]].append(r)
    methods = list(dict.fromkeys(name for _, _, name in groups))
    archs = list(dict.fromkeys(arch for arch, _, _ in groups))
    for ax, task in zip(axes[0], tasks):
        for (arch, t, name), mine in groups.items():
            if t != task:
                continue
            mean, std = mean_std([r["value"] for r in mine])
            params = float(np.mean([r["trained_params"] for r in mine])) * NUDGE.get(name, 1.0)
            ax.errorbar(params, mean, yerr=std, marker=MARKERS.get(name, "o"), color=COLOURS.get(arch, "gray"),
                        markersize=9, capsize=3, linestyle="none", alpha=0.9)
        if references and task in references:
            ax.axhline(references[task], color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(task_labels.get(task, task))
        ax.set_xlabel("trained parameters per task (log)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("test metric (mean ± std over seeds)")
    handles = [Line2D([], [], marker=MARKERS.get(m, "o"), color="black", linestyle="none", markersize=8,
                      label=method_labels.get(m, m)) for m in methods]
    handles += [Line2D([], [], marker="o", color=COLOURS.get(a, "gray"), linestyle="none", markersize=8,
                       label=a) for a in archs]
    if references:
        handles.append(Line2D([], [], color="gray", linestyle="--", label="no model (majority / popularity)"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = Path(path)
    with staged_file(path) as staging:
        fig.savefig(staging, dpi=110, format="png")
    plt.close(fig)
    return path
