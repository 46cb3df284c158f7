"""Explicit Arrow schemas of every table on disk, and the names the spec allows.

See docs/ARCHITECTURE.md, "Data on disk". Item id 0 is padding; dense item ids run
1..vocab_size-1. Task labels are class indices (classify) or target item ids (coldrec).
"""

import pyarrow as pa

SEQUENCES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("items", pa.list_(pa.field("item", pa.int32(), nullable=False)), nullable=False),
    ]
)
ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("raw_id", pa.string(), nullable=False),
    ]
)
TASK = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
TARGET_ITEMS = pa.schema(
    [
        pa.field("target_id", pa.int32(), nullable=False),
        pa.field("raw_id", pa.string(), nullable=False),
    ]
)

# Key of the sequences file's schema metadata that carries the vocabulary size.
VOCAB_SIZE_KEY = b"vocab_size"
PADDING_ID = 0

SPLITS = ("train", "valid", "test")  # split code = index in this tuple (TaskData.split)
KINDS = ("classify", "coldrec")
METRICS = {
    "classify": ("accuracy",),
    "coldrec": ("mrr@5", "hr@5", "ndcg@5"),  # sampled: true item among 100 candidates
}
DEFAULT_METRIC = {"classify": "accuracy", "coldrec": "mrr@5"}
