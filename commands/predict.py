"""`peterrec predict`: run one task of a bundle over users' item sequences.

  python cli.py predict --backbone runs/demo/backbone --bundle runs/demo/job --task gender \\
      --input data/demo/source/sequences.parquet --out gender.parquet
"""

from __future__ import annotations

import json
from pathlib import Path

from tasks.atomic import staged_file
from commands._common import int_at_least

HELP = "predict with one task of a bundle: class probabilities, or the top-K target items"
DESCRIPTION = (
    "Input (--input): a Parquet sequences table (user_id, items), a Parquet task table (user_id, label, "
    "split; its users' sequences come from --sequences or the [source] of --tasks), or the paper's CSV "
    "(one user per line: s1,...,sn[,,t1,...]; leading 0s are padding). The CSV holds raw source item ids: "
    "pass --items source/items.parquet to map them to dense ids; without it they must already be dense "
    "ids 1..vocab_size-1 of the backbone. Output (--out): Parquet (.parquet) or JSON lines (.jsonl, "
    ".ndjson, .json), one row per input row, written atomically."
)
OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def add_arguments(parser):
    parser.add_argument("--backbone", required=True, metavar="CKPT", help="backbone checkpoint directory")
    parser.add_argument("--bundle", required=True, metavar="PATH",
                        help="bundle directory, job directory holding bundle/, or .tar archive")
    parser.add_argument("--task", required=True, metavar="NAME", help="task of the bundle to run")
    parser.add_argument("--input", required=True, metavar="FILE", help="sequences/task table (.parquet) or CSV")
    parser.add_argument("--out", required=True, metavar="FILE", help="predictions: .parquet or .jsonl")
    parser.add_argument("--top-k", type=int_at_least(1), default=10, metavar="K", help="target items per user (coldrec)")
    parser.add_argument("--sequences", metavar="FILE", help="sequences table for a task-table input")
    parser.add_argument("--tasks", metavar="SPEC.toml", help="task spec whose [source] locates the sequences")
    parser.add_argument("--items", metavar="FILE",
                        help="source items.parquet (item_id, raw_id) mapping the CSV's raw ids to dense ids")
    parser.add_argument("--batch-size", type=int_at_least(1), default=512, metavar="N", help="rows per forward pass")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def run(args) -> int:
    from commands._common import user_errors  # noqa: PLC0415  (heavy: torch)

    with user_errors():
        return _predict(args)


def _predict(args) -> int:
    import torch  # noqa: PLC0415

    from peterrec.bundle import open_bundle  # noqa: PLC0415
    from peterrec.checkpoint import load_backbone  # noqa: PLC0415
    from peterrec.predict import MultiTaskPredictor  # noqa: PLC0415
    from peterrec.training import pick_device  # noqa: PLC0415
    from tasks import DataError  # noqa: PLC0415

    from tasks.paths import check_apart, require_file  # noqa: PLC0415

    out = Path(args.out)
    check_apart(out, "--out", {"--input": args.input, "--backbone": args.backbone, "--bundle": args.bundle,
                               "--sequences": args.sequences, "--tasks": args.tasks, "--items": args.items})
    for flag in ("input", "sequences", "tasks", "items"):  # before the backbone is loaded
        if getattr(args, flag):
            require_file(getattr(args, flag), f"--{flag}")
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise DataError(out, f"unknown output format {out.suffix!r}, expected one of {', '.join(OUTPUT_FORMATS)}")
    backbone, _ = load_backbone(Path(args.backbone), pick_device(args.device))
    bundle = open_bundle(args.bundle)
    bundle.entry(args.task)  # an unknown task fails before the input is read
    user_ids, items, extra = read_input(args, backbone.config)
    predictor = MultiTaskPredictor(backbone, bundle, [args.task], top_k=args.top_k)
    parts = [predictor.predict_task(args.task, torch.from_numpy(items[i:i + args.batch_size]))
             for i in range(0, len(items), args.batch_size)]
    columns = _columns(parts, predictor.configs[args.task])
    write_output(out, {"user_id": list(user_ids), **extra, **columns},
                 {"task": args.task, "kind": predictor.kind(args.task)})
    print(f"wrote {len(items)} prediction(s) of task {args.task!r} to {out}")
    return 0


def _columns(parts, task: dict) -> dict:
    """Output columns of a task from its per-batch predictions."""
    import torch  # noqa: PLC0415

    if task["kind"] == "classify":
        probabilities = torch.cat([p.probabilities for p in parts]) if parts else torch.empty(0, task["num_classes"])
        predicted = probabilities.argmax(dim=1).tolist()
        columns = {"prediction": predicted}
        if task.get("labels"):
            columns["prediction_label"] = [task["labels"][i] for i in predicted]
        columns["probabilities"] = probabilities.tolist()
        return columns
    items = torch.cat([p.items for p in parts]).tolist() if parts else []
    columns = {"top_items": items, "top_scores": torch.cat([p.scores for p in parts]).tolist() if parts else []}
    if task.get("target_raw_ids"):
        columns["top_raw_ids"] = [[task["target_raw_ids"][j] for j in row] for row in items]
    return columns


# ---------------------------------------------------------------------------------------------------
# Input


def read_input(args, config):
    """(user ids, items (N, max_len) int64 left-padded, passthrough columns) from --input."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from tasks import DataError, read_sequences, schema  # noqa: PLC0415
    from tasks.io import read_table  # noqa: PLC0415

    path = Path(args.input)
    if path.suffix.lower() in (".csv", ".txt"):
        return read_paper_csv(path, config, Path(args.items) if args.items else None)
    if path.suffix.lower() != ".parquet":
        raise DataError(path, f"unknown input format {path.suffix!r}, expected .parquet or .csv")
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable Parquet file ({e})") from None
    if "items" in names:  # a sequences table
        sequences = read_sequences(path, vocab_size=config.vocab_size)
        rows = list(range(len(sequences)))
        return list(sequences.user_ids), sequences.padded(rows, config.max_len), {}
    if "user_id" not in names:
        raise DataError(path, f"expected a sequences table (user_id, items) or a task table (user_id, label, "
                              f"split); columns found: {', '.join(names) or 'none'}")
    fields = [f for f in schema.TASK if f.name in names]
    table = read_table(path, pa.schema(fields))
    sequences = read_sequences(*_sequences_of(args, path), vocab_size=config.vocab_size)
    user_ids = table.column("user_id").to_pylist()
    rows = sequences.row_of(user_ids, path=path)
    extra = {f.name: table.column(f.name).to_pylist() for f in fields if f.name != "user_id"}
    return user_ids, sequences.padded(rows, config.max_len), extra


def _sequences_of(args, path: Path):
    from tasks import DataError, load_spec  # noqa: PLC0415

    if args.sequences:
        return (Path(args.sequences),)
    if args.tasks:
        return (load_spec(args.tasks).sequences,)
    raise DataError(path, "a task table holds user ids only: pass --sequences FILE or --tasks SPEC.toml to "
                          "find their item sequences")


def read_paper_csv(path: Path, config, items_path: Path | None):
    """The paper's format (tasks.paper_csv): raw ids mapped through items.parquet, else dense ids of the
    backbone; users named as `import peterrec-csv` names them (u0 on line 1)."""
    import numpy as np  # noqa: PLC0415

    from tasks import Sequences, read_item_vocab  # noqa: PLC0415
    from tasks.paper_csv import read_paper_csv as parse  # noqa: PLC0415

    rows = parse(path, integer_ids=items_path is None)
    if items_path is not None:  # raw id -> dense id; dense id 0 (padding) has no raw id
        dense = {raw: i for i, raw in enumerate(read_item_vocab(items_path)) if raw is not None}
        for user, source in enumerate(rows.sources):
            for j, token in enumerate(source):
                if token not in dense:
                    raise rows.fail(user, j, f"raw item id {token!r} is not in {items_path}")
        sequences = [[dense[token] for token in source] for source in rows.sources]
    else:
        for user, source in enumerate(rows.sources):
            for j, item in enumerate(source):
                if not 1 <= item < config.vocab_size:
                    raise rows.fail(user, j, f"item id {item} is outside 1..{config.vocab_size - 1} (vocab_size = "
                                             f"{config.vocab_size}); if the CSV holds raw source ids, pass --items "
                                             f"source/items.parquet to map them")
        sequences = rows.sources
    user_ids = list(rows.user_ids())
    items = Sequences.from_lists(user_ids, sequences, config.vocab_size).padded(np.arange(len(user_ids)),
                                                                                 config.max_len)
    targets = rows.targets if rows.targets is not None else [[] for _ in user_ids]
    return user_ids, items, {"targets": targets}


# ---------------------------------------------------------------------------------------------------
# Output


def write_output(out: Path, columns: dict, info: dict) -> None:
    """Parquet or JSON lines by the extension of `out`, via a temporary sibling and a rename."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    types = {"user_id": pa.string(), "label": pa.int32(), "split": pa.string(), "targets": pa.list_(pa.string()),
             "prediction": pa.int32(), "prediction_label": pa.string(), "probabilities": pa.list_(pa.float32()),
             "top_items": pa.list_(pa.int32()), "top_scores": pa.list_(pa.float32()),
             "top_raw_ids": pa.list_(pa.string())}
    out = out.absolute()
    with staged_file(out) as staging:
        if OUTPUT_FORMATS[out.suffix.lower()] == "parquet":
            table = pa.table({name: pa.array(values, type=types[name]) for name, values in columns.items()})
            metadata = {b"peterrec": json.dumps(info).encode()}
            pq.write_table(table.replace_schema_metadata(metadata), staging)
        else:
            names = list(columns)
            with open(staging, "w", encoding="utf-8") as f:
                for values in zip(*columns.values()):
                    f.write(json.dumps(dict(zip(names, values))) + "\n")
