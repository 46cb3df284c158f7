"""`peterrec bundle`: pack, unpack, list and check the patch sets a job carries away.

  python cli.py bundle inspect runs/demo/job
  python cli.py bundle verify runs/demo/job --backbone runs/demo/backbone
  python cli.py bundle export runs/demo/job --out demo-bundle.tar
  python cli.py bundle import demo-bundle.tar --out bundles/demo
"""

from __future__ import annotations

import json
import sys

HELP = "export, import, inspect or verify a bundle (one backbone fingerprint + a patch set per task)"
DESCRIPTION = (
    "A bundle is BUNDLE/index.json plus tasks/<name>/adapter_config.json and adapter_model.safetensors. "
    "PATH may be a bundle directory, a job directory holding bundle/, or a .tar archive made by export."
)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="pack a bundle into one .tar archive (verified first)")
    export.add_argument("path", metavar="PATH", help="bundle directory or job directory (JOB_DIR/bundle)")
    export.add_argument("--out", required=True, metavar="FILE.tar", help="archive to write (.tar or .tar.gz)")
    export.add_argument("--force", action="store_true", help="replace an existing archive")
    unpack = sub.add_parser("import", help="unpack a .tar archive into a bundle directory (verified first)")
    unpack.add_argument("archive", metavar="FILE.tar", help="archive written by `bundle export`")
    unpack.add_argument("--out", required=True, metavar="DIR", help="bundle directory to create")
    unpack.add_argument("--force", action="store_true", help="replace an existing non-empty directory")
    inspect = sub.add_parser("inspect", help="list tasks, sizes, parameter counts, ratios and metrics")
    inspect.add_argument("path", metavar="PATH", help="bundle directory, job directory or .tar archive")
    inspect.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    verify = sub.add_parser("verify", help="check every file, checksum, header and shape (and the backbone)")
    verify.add_argument("path", metavar="PATH", help="bundle directory, job directory or .tar archive")
    verify.add_argument("--backbone", metavar="CKPT", help="backbone checkpoint whose fingerprint must match")


def run(args) -> int:
    from commands._common import user_errors  # noqa: PLC0415  (heavy: torch)

    action = {"export": _export, "import": _import, "inspect": _inspect, "verify": _verify}[args.bundle_command]
    with user_errors():
        return action(args)


def _export(args) -> int:
    from pathlib import Path  # noqa: PLC0415

    from peterrec.bundle import export_bundle, find_bundle  # noqa: PLC0415
    from tasks.paths import check_apart  # noqa: PLC0415

    source = Path(args.path)
    check_apart(args.out, "--out", {"PATH": find_bundle(source) if source.is_dir() else source})
    out = export_bundle(args.path, args.out, force=args.force)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


def _import(args) -> int:
    from peterrec.bundle import import_bundle, open_bundle  # noqa: PLC0415
    from tasks.paths import check_apart, require_file  # noqa: PLC0415

    require_file(args.archive, "FILE.tar: an archive written by `bundle export`")
    check_apart(args.out, "--out", {"FILE.tar": args.archive})
    out = import_bundle(args.archive, args.out, force=args.force)
    print(f"imported {len(open_bundle(out).tasks)} task(s) into {out}")
    return 0


def _verify(args) -> int:
    from peterrec.bundle import backbone_fingerprint, open_bundle  # noqa: PLC0415
    from peterrec.checkpoint import load_backbone  # noqa: PLC0415

    bundle = open_bundle(args.path)
    backbone = load_backbone(args.backbone)[0] if args.backbone else None
    problems = bundle.verify()
    if backbone is not None and backbone_fingerprint(backbone) != bundle.fingerprint:
        problems.insert(0, f"{args.backbone}: backbone fingerprint {backbone_fingerprint(backbone)[:16]}... "
                           f"differs from {bundle.fingerprint[:16]}... in the bundle's index.json: the bundle "
                           f"was trained on another backbone")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    checked = "files, checksums, shapes" + (" and the backbone fingerprint" if backbone is not None else "")
    if problems:
        print(f"{args.path}: {len(problems)} problem(s) in {len(bundle.tasks)} task(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: ok, {len(bundle.tasks)} task(s); {checked} match")
    return 0


def summary(bundle) -> dict:
    """Everything `inspect` shows, as plain data."""
    from peterrec.efficiency import storage_for  # noqa: PLC0415

    rows = []
    for entry in bundle.tasks:
        if not bundle.unchanged(entry["name"]):  # its numbers cannot be trusted: shown as changed, not counted
            rows.append({"task": entry["name"], "kind": entry["kind"], "mode": entry["mode"], "bytes": entry["bytes"],
                         "files_ok": False, "trained_params": None, "stored_params": 0, "fineall_params": 0,
                         "backbone_params": 0, "ratio_vs_fineall": None, "metric": None, "value": None,
                         "metrics": {}})
            continue
        config = bundle.config(entry["name"])
        metrics, metric = config.get("metrics") or {}, config["task"].get("metric")
        value = metrics.get("value", (metrics.get("test") or {}).get(metric, metrics.get(metric)))
        rows.append({"task": entry["name"], "kind": entry["kind"], "mode": entry["mode"], "bytes": entry["bytes"],
                     "files_ok": True, **config["params"], "metric": metric, "value": value, "metrics": metrics})
    good = [r for r in rows if r["files_ok"]]
    backbone_params = good[0]["backbone_params"] if good else 0
    storage = storage_for(backbone_params, [r["stored_params"] for r in good], [r["fineall_params"] for r in good],
                          [r["mode"] for r in good])
    return {"path": str(bundle.source), "format_version": bundle.index["version"],
            "backbone": {"fingerprint": bundle.fingerprint, "config": bundle.index["backbone"]["config"],
                         "params": backbone_params},
            "tasks": rows,
            "totals": {"tasks": storage.tasks, "bytes": sum(r["bytes"] for r in good),
                       "backbone_params": storage.backbone_params, "shared_params": storage.shared_params,
                       "full_copies_params": storage.full_copies_params,
                       "shared_vs_full_copies": storage.ratio if storage.full_copies_params else None}}


def _inspect(args) -> int:
    from peterrec.bundle import open_bundle  # noqa: PLC0415

    info = summary(open_bundle(args.path))
    changed = [r["task"] for r in info["tasks"] if not r["files_ok"]]
    if args.json:
        print(json.dumps(info, indent=2))
        return _changed(info["path"], changed)
    from rich import box  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"{info['path']}  (backbone {info['backbone']['fingerprint'][:12]})", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False)
    for column, justify, width in (("task", "left", 4), ("kind", "left", 8), ("mode", "left", 9),
                                   ("trained params", "right", 7), ("% of FineAll", "right", 7),
                                   ("size on disk", "right", 8), ("metric", "left", 6), ("value", "right", 6)):
        table.add_column(column, justify=justify, min_width=width)
    for r in info["tasks"]:
        if not r["files_ok"]:
            table.add_row(r["task"], r["kind"], r["mode"], "[red]files changed", "", _size(r["bytes"]), "-", "-")
            continue
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        table.add_row(r["task"], r["kind"], r["mode"], f"{r['trained_params']:,}", f"{r['ratio_vs_fineall']:.2f}%",
                      _size(r["bytes"]), r["metric"] or "-", value)
    console = Console()
    console.print(table)
    totals = info["totals"]
    if totals["tasks"]:
        held = totals["backbone_params"]
        parts = (f"backbone {held:,} params (once) + patch sets " if held
                 else "task models (each with its own backbone) ")
        console.print(f"{totals['tasks']} task(s): {parts}{totals['shared_params'] - held:,} = "
                      f"{totals['shared_params']:,} params, vs {totals['full_copies_params']:,} for "
                      f"{totals['tasks']} full copies ({100 * totals['shared_vs_full_copies']:.1f}%); "
                      f"{_size(totals['bytes'])} on disk")
    return _changed(info["path"], changed)


def _changed(path: str, changed: list[str]) -> int:
    """inspect's exit code: 1, with a line pointing to `verify`, when a task's files differ from index.json."""
    if not changed:
        return 0
    print(f"error: {path}: the files of {len(changed)} task(s) ({', '.join(changed)}) differ from the checksums "
          f"in index.json (changed or corrupted); `peterrec bundle verify {path}` says which", file=sys.stderr)
    return 1


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
