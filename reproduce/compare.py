"""Two reproductions of the same folds side by side: how a setting that differs between them (say
`--item-init`) is chosen on validation, and what it then gives on test.

    python -m reproduce.compare OUT_A OUT_B [--out compare.md]

For every (architecture, task, method) both ran: the mean validation metric of each over the folds, in
how many folds B beats A on validation, and the paired test difference B - A on the same test users
(95% bootstrap CI over users, * where it excludes 0). Refuses runs whose folds or users differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tasks.errors import DataError

SAME_FOLDS = ("folds", "fold_seed", "fold_valid_fraction", "import_seed", "eval_negatives", "tasks")


COLUMNS = {"results.parquet": ("arch", "task", "method", "fold", "seed", "status", "valid_value"),
           "per_row.parquet": ("arch", "task", "method", "fold", "index", "user", "value")}


def load_run(out: Path) -> dict:
    """A reproduction's config, cells (results.parquet) and test rows (per_row.parquet); DataError naming
    the file (and field) when one is missing or not what reproduce writes."""
    import pyarrow.parquet as pq

    from reproduce.grid import ReproduceConfig

    files = {name: out / name for name in ("reproduce.json", *COLUMNS)}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{out}: not a finished reproduction (missing {', '.join(missing)})")
    path = files["reproduce.json"]
    try:
        config = ReproduceConfig.from_dict(json.loads(path.read_text())["config"]).to_dict()
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(path, f"not a reproduction's settings ({type(e).__name__}: {e})", field="config") from None
    tables = {}
    for name, columns in COLUMNS.items():
        try:
            table = pq.read_table(files[name])
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(files[name], f"not a Parquet table ({e})") from None
        absent = [c for c in columns if c not in table.column_names]
        if absent:
            raise DataError(files[name], "a column reproduce writes is missing", field=absent[0])
        tables[name] = table.to_pylist()
    # settings recorded before a field existed read as its old value
    return {"config": config, "cells": tables["results.parquet"], "rows": tables["per_row.parquet"]}


def differing_settings(a: dict, b: dict) -> list[str]:
    """The settings of B that are not A's (what the comparison is about); raises when the folds differ."""
    changed = [k for k in SAME_FOLDS if a["config"].get(k) != b["config"].get(k)]
    if changed:
        raise ValueError(f"the runs do not share their folds and test users ({', '.join(changed)} differ)")
    keys = sorted(set(a["config"]) | set(b["config"]))
    return [f"{k}: {a['config'].get(k)!r} -> {b['config'].get(k)!r}" for k in keys
            if k not in ("methods", "archs") and a["config"].get(k) != b["config"].get(k)]


def compare(a: dict, b: dict, seed: int = 0) -> list[dict]:
    """One record per (arch, task, method) that both runs finished."""
    from reproduce.report import _aligned
    from reproduce.stats import paired_difference

    def valid(run: dict) -> dict:
        out = {}
        for r in run["cells"]:
            if r["status"] == "done" and r["valid_value"] is not None:
                out.setdefault((r["arch"], r["task"], r["method"]), {})[r["fold"], r["seed"]] = r["valid_value"]
        return out

    def tests(run: dict) -> dict:
        out = {}
        for r in run["rows"]:
            if r["arch"] is not None:
                out.setdefault((r["arch"], r["task"], r["method"]), []).append(r)
        return out

    valid_a, valid_b, test_a, test_b = valid(a), valid(b), tests(a), tests(b)
    records = []
    for key in sorted(set(valid_a) & set(valid_b) & set(test_a) & set(test_b)):
        va, vb = valid_a[key], valid_b[key]
        shared = sorted(set(va) & set(vb))
        ta, tb = _aligned(test_a[key]), _aligned(test_b[key])
        rows = sorted(set(ta) & set(tb))
        if any(ta[k][0] != tb[k][0] for k in rows):
            raise ValueError(f"{'/'.join(key)}: the runs' test rows belong to different users")
        users = np.array([ta[k][0] for k in rows])
        diff = paired_difference(np.array([tb[k][1] for k in rows]), np.array([ta[k][1] for k in rows]), users,
                                 seed=seed)
        records.append({"arch": key[0], "task": key[1], "method": key[2],
                        "valid_a": float(np.mean([va[k] for k in shared])),
                        "valid_b": float(np.mean([vb[k] for k in shared])),
                        "b_better": sum(vb[k] > va[k] for k in shared), "compared": len(shared),
                        "test_a": float(np.mean([ta[k][1] for k in rows])),
                        "test_b": float(np.mean([tb[k][1] for k in rows])), "diff": diff})
    return records


def markdown(records: list[dict], names: tuple[str, str], settings: list[str]) -> str:
    from reproduce.report import _labels
    from reproduce.stats import format_diff

    methods, tasks = _labels()
    a, b = names
    lines = [f"A = `{a}`, B = `{b}`; B differs in: {'; '.join(settings) or 'nothing recorded'}.", "",
             f"| arch | task | method | valid A | valid B | folds B > A (valid) | test A | test B | test B - A |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['arch']} | {tasks.get(r['task'], r['task'])} | {methods.get(r['method'], r['method'])} "
                     f"| {r['valid_a']:.3f} | {r['valid_b']:.3f} | {r['b_better']}/{r['compared']} "
                     f"| {r['test_a']:.3f} | {r['test_b']:.3f} | {format_diff(r['diff'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the first reproduction's OUT directory")
    parser.add_argument("b", type=Path, help="the second one's (the same folds, one setting changed)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        if args.out:
            from tasks.paths import check_apart

            check_apart(args.out, "--out", {"A": args.a, "B": args.b})
        runs = load_run(args.a), load_run(args.b)
        settings = differing_settings(*runs)
        text = markdown(compare(*runs), (str(args.a), str(args.b)), settings)
    except (OSError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        from tasks.atomic import write_text_atomic

        write_text_atomic(args.out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
