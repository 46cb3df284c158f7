"""Import the paper's released format (read by tasks.paper_csv): one user per line, `s1,...,sn,,t1,t2,...`.

Each target label is one row of the task: a cold-start task over a dense target vocabulary, or
(as_classify) a classification task whose classes are the distinct labels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.dataset import NewTask, write_dataset
from tasks.errors import DataError
from tasks.paper_csv import PaperRows, read_paper_csv
from tasks.paths import check_apart, require_dir
from tasks.sequences import Sequences
from tasks.vocab import read_item_vocab


def import_peterrec_csv(
    src: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    force: bool = False,
    as_classify: bool = False,
    source_vocab: str | Path | None = None,
    task_name: str | None = None,
    command: str | None = None,
) -> tuple[Path, list[str]]:
    """Import one pretraining or fine-tuning file into `out`; return (spec path, notes for the summary).

    `source_vocab` is an imported data directory whose source/items.parquet maps raw source ids,
    so a fine-tuning file lines up with an earlier pretraining import; unknown ids are errors.
    """
    path = Path(src)
    check_apart(out, "--out", {"SRC": src, "--source-vocab": source_vocab})
    if source_vocab is not None:
        require_dir(source_vocab, "--source-vocab: an imported data directory")
    parsed = read_paper_csv(path)
    if source_vocab is not None:
        items_path = Path(source_vocab) / "source" / "items.parquet"
        raw_ids = read_item_vocab(items_path)[1:]
        dense = _lookup(path, parsed, raw_ids, items_path)
    else:
        raw_ids, dense = _dense_vocabulary(parsed)
    lengths = np.array([len(s) for s in parsed.sources], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    user_ids = parsed.user_ids()
    sequences = Sequences(user_ids, offsets, dense, vocab_size=len(raw_ids) + 1)
    tasks, notes = [], [f"imported {path} ({'fine-tuning' if parsed.targets is not None else 'pretraining'} file)"]
    if parsed.targets is not None:
        name = task_name or _name_from(path)
        tasks.append(_task(path, name, user_ids, parsed.targets, as_classify))
    made_by = f"Made by: python cli.py import peterrec-csv {src} --out {out} --seed {seed}"
    made_by += " --as-classify" * as_classify + (f" --source-vocab {source_vocab}" if source_vocab else "")
    spec = write_dataset(out, sequences, [str(r) for r in raw_ids], tasks, seed=seed, notes=[made_by],
                         force=force, command=command)
    return spec, notes


def _dense_vocabulary(parsed: PaperRows) -> tuple[np.ndarray, np.ndarray]:
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in parsed.sources])
    raw_ids, dense = np.unique(flat, return_inverse=True)
    return raw_ids, dense.astype(np.int32) + 1


def _lookup(path: Path, parsed: PaperRows, raw_ids: np.ndarray, items_path: Path) -> np.ndarray:
    flat = [str(value) for source in parsed.sources for value in source]
    found = pc.index_in(pa.array(flat, pa.string()), value_set=pa.array(raw_ids, pa.string()))
    if found.null_count:
        missing = int(np.argmax(found.is_null().to_numpy(zero_copy_only=False)))
        offsets = np.cumsum([0] + [len(s) for s in parsed.sources])
        user = int(np.searchsorted(offsets, missing, side="right") - 1)
        raise parsed.fail(user, missing - int(offsets[user]),
                          f"item {flat[missing]} is not in the source vocabulary {items_path}")
    return found.to_numpy().astype(np.int32) + 1


def _task(path: Path, name: str, user_ids: np.ndarray, targets: list[list[str]], as_classify: bool) -> NewTask:
    counts = [len(t) for t in targets]
    flat = np.array([label for labels in targets for label in labels], dtype=object)
    classes, labels = np.unique(flat.astype(np.int64), return_inverse=True)
    names = [str(c) for c in classes]
    rows = np.repeat(user_ids, counts)
    if as_classify:
        if len(classes) < 2:
            raise DataError(path, f"one distinct label ({names[0]}); a classification task needs at least 2",
                            field="targets")
        return NewTask(name, "classify", rows, labels, num_classes=len(classes), label_names=names)
    return NewTask(name, "coldrec", rows, labels, target_raw_ids=names)


def _name_from(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("._-")
    return name or "task"
