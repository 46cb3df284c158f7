"""The paper's released text format, read in one place (`import peterrec-csv` and `predict` both use it).

One user per line: `s1,...,sn,,t1,t2,...`: source item ids (leading `0`s are padding), a double comma,
then one or more target labels; a pretraining file has only the source part. Blank lines are skipped.
The user on line k+1 is named "u{k}" wherever the file is read. Errors name the file, the line and the
field: `source[k]` is the k-th comma-separated value of the line (0-based, padding included), `target[k]`
the k-th label after the double comma.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import DataError
from tasks.text import line_error, numbered_lines, to_int

SEPARATOR = ",,"
PADDING = "0"


@dataclass
class PaperRows:
    """A parsed file: per user, its line, its source items (padding removed) and its target labels."""

    path: Path
    lines: list[int]  # 1-based line number of each user
    sources: list[list]  # source ids, padding removed: ints, or the raw text with integer_ids=False
    starts: list[int]  # position (field index) of each source's first item in its line, after the padding
    targets: list[list[str]] | None  # raw target labels; None for a pretraining file

    def user_ids(self) -> np.ndarray:
        return np.array([f"u{line - 1}" for line in self.lines], dtype=object)

    def fail(self, user: int, position: int, problem: str) -> DataError:
        """An error at a user's source item (`position` counts from its first item after the padding)."""
        return line_error(self.path, self.lines[user], f"source[{self.starts[user] + position}]", problem)


def read_paper_csv(path: str | Path, integer_ids: bool = True) -> PaperRows:
    """Parse a pretraining or fine-tuning file. integer_ids: source ids must be non-negative integers (the
    paper's files); False keeps them as text (ids mapped through an items.parquet, any raw id)."""
    path = Path(path)
    lines, sources, starts, targets = [], [], [], []
    numbered = list(numbered_lines(path))
    marked = sum(SEPARATOR in text for _, text in numbered)
    # The kind of file is what most of its lines say (a tie: the first line's kind); the odd line is blamed.
    finetune = 2 * marked > len(numbered) or (2 * marked == len(numbered) > 0 and SEPARATOR in numbered[0][1])
    for number, text in numbered:
        if (SEPARATOR in text) != finetune:
            raise line_error(
                path, number, "targets",
                f"no ',,' separator, but {marked} of {len(numbered)} lines have targets (a fine-tuning file is "
                f"s1,...,sn,,t1,...)" if finetune else
                f"',,' separator, but {len(numbered) - marked} of {len(numbered)} lines have none (a pretraining "
                f"file is s1,...,sn)",
            )
        source_text, _, target_text = text.partition(SEPARATOR)
        tokens = [token.strip() for token in source_text.split(",")]
        if integer_ids:
            values = [to_int(path, number, f"source[{k}]", token) for k, token in enumerate(tokens)]
            padding = 0
        else:
            for k, token in enumerate(tokens):
                if not token:
                    raise line_error(path, number, f"source[{k}]", "empty item id")
            values, padding = tokens, PADDING
        lead = next((k for k, value in enumerate(values) if value != padding), len(values))
        if lead == len(values):
            raise line_error(path, number, "source", "no items, only padding (0)")
        if padding in values[lead:]:
            k = values.index(padding, lead)
            raise line_error(path, number, f"source[{k}]", "0 is padding and may only lead the sequence")
        lines.append(number)
        sources.append(values[lead:])
        starts.append(lead)
        if finetune:
            labels = target_text.split(",")
            for k, label in enumerate(labels):
                if not label.strip() or SEPARATOR in label:
                    raise line_error(path, number, f"target[{k}]", f"{label!r} is not a target label")
                to_int(path, number, f"target[{k}]", label)
            targets.append([str(int(label)) for label in labels])
    if not lines:
        raise DataError(path, "no lines, expected one user per line")
    return PaperRows(path, lines, sources, starts, targets if finetune else None)
