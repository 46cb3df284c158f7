"""Validated configuration dataclasses for the backbone and the model patches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


# Where a patch sits in a residual block (what each does: patches.PATCH_INPUT); a new kind is an entry here
# and its function there.
INSERTIONS = {
    "serial": "patch each dilated conv's output: h + patch(h)",
    "parallel": "patch beside each dilated conv, reading its input: h + patch(x)",
}
REPRESENTATIONS = {  # how the user vector is read off the hidden states (peterrec.pooling)
    "auto": "mean for profile (classify) tasks, attention for cold start (chosen on validation, docs/RESULTS.md)",
    "last": "the last position",
    "first_last": "the sum of the first real item's and the last position",
    "mean": "the mean over real (non-padding) positions",
    "attention": "a learned attention pooling over real positions (3C parameters, trained with the head)",
}
AUTO_REPRESENTATION = {"classify": "mean", "coldrec": "attention"}
# How a new backbone's item embedding starts before pretraining (peterrec.item_init).
ITEM_INITS = {
    "random": "normal(0, 1/C) item vectors, trained with the blocks (the paper's)",
    "svd": "item factors of a truncated SVD of the training users' bags of items, held fixed while the blocks "
           "pretrain (unsupervised: no labels)",
}
DEFAULT_ITEM_INIT = "svd"  # what `pretrain` and `reproduce` use unless told (chosen on validation: docs/RESULTS.md)


def resolve_representation(how: str, kind: str, causal: bool) -> str:
    """The representation a task model uses: 'auto' becomes the default for the task's kind."""
    if how != "auto":
        return how
    return AUTO_REPRESENTATION.get(kind, "last" if causal else "first_last")


def legacy_representation(how: str, causal: bool) -> str:
    """What 'auto' meant in bundles written before it was resolved when the model was built: the last
    position (causal), or column 0 + the last one (non-causal)."""
    if how != "auto":
        return how
    return "last" if causal else "legacy_first_last"


def _check(problems: list[str], owner: str) -> None:
    if problems:
        raise ValueError(f"invalid {owner}: " + "; ".join(problems))


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of a NextItNet-style dilated-CNN backbone."""

    vocab_size: int  # item ids 0..vocab_size-1, 0 is padding; one extra row is the [MASK] token
    channels: int = 64  # embedding width C, kept through every block
    kernel_size: int = 3
    dilations: tuple[int, ...] = (1, 4, 1, 4)  # one per residual block; a block covers d and 2d
    causal: bool = True  # True: NextItNet (left padding only); False: GRec encoder (symmetric)
    pad_id: int = 0
    max_len: int = 50  # sequences are cut to their most recent max_len items
    # Padding positions held at zero after the embedding and every block: a user's hidden states then do
    # not depend on how much padding the batch gave them (and batches may be cut to their longest row).
    # Checkpoints written before this field existed read as False, so they compute what they always did.
    mask_padding: bool = True

    def __post_init__(self):
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        problems = []
        if self.vocab_size < 2:
            problems.append(f"vocab_size must be >= 2 (got {self.vocab_size})")
        if self.channels < 1:
            problems.append(f"channels must be >= 1 (got {self.channels})")
        if self.kernel_size < 1:
            problems.append(f"kernel_size must be >= 1 (got {self.kernel_size})")
        if not self.causal and self.kernel_size % 2 == 0:
            problems.append("a non-causal backbone needs an odd kernel_size (symmetric padding)")
        if not self.dilations or any(d < 1 for d in self.dilations):
            problems.append(f"dilations must be a non-empty list of positive ints (got {list(self.dilations)})")
        if not 0 <= self.pad_id < self.vocab_size:
            problems.append(f"pad_id must lie in 0..vocab_size-1 (got {self.pad_id})")
        if self.max_len < 1:
            problems.append(f"max_len must be >= 1 (got {self.max_len})")
        _check(problems, "BackboneConfig")

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def arch(self) -> str:
        return "causal" if self.causal else "noncausal"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        if not self.mask_padding:  # as checkpoints written before the field had it (same fingerprint)
            del d["mask_padding"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"invalid BackboneConfig: unknown fields {unknown}")
        return cls(**{"mask_padding": False, **d})


@dataclass(frozen=True)
class PatchConfig:
    """A model patch: x -> x + W_up(GELU(W_down(x))) with a C/ratio bottleneck."""

    bottleneck_ratio: int = 4  # bottleneck width = channels // ratio (paper: C/4)
    # ResNeXt-style branches of width/cardinality, summed. A patch is per position (1x1), where the sum of
    # the branches is one matmul over their concatenation: the same function as cardinality 1 of the same
    # width, so cardinality changes nothing but a check that the width divides. Kept for the paper's configs.
    cardinality: int = 1
    insertion: str = "serial"  # a key of INSERTIONS
    train_layernorm2: bool = True  # the reference code also trains each block's second LayerNorm
    init_std: float = 1e-3  # W_up starts this small, so a fresh patch is near identity
    # A task's low-rank change of the frozen item embedding, E[i] + A[i] @ B (A: vocab x r, starts at zero):
    # per-item weights learnt from the task's labels, which a frozen embedding cannot give (issue 14's
    # findings: the only PeterRec variant above the majority class on ML-100K age). 0 = the paper's patches
    # only (the embedding stays untouched).
    embedding_rank: int = 0

    def __post_init__(self):
        problems = []
        if self.bottleneck_ratio < 1:
            problems.append(f"bottleneck_ratio must be >= 1 (got {self.bottleneck_ratio})")
        if self.cardinality < 1:
            problems.append(f"cardinality must be >= 1 (got {self.cardinality})")
        if self.insertion not in INSERTIONS:
            problems.append(f"insertion must be one of {', '.join(INSERTIONS)} (got {self.insertion!r})")
        if self.init_std < 0:
            problems.append(f"init_std must be >= 0 (got {self.init_std})")
        if self.embedding_rank < 0:
            problems.append(f"embedding_rank must be >= 0 (got {self.embedding_rank})")
        _check(problems, "PatchConfig")

    def width(self, channels: int) -> int:
        width = channels // self.bottleneck_ratio
        if width < self.cardinality or width % self.cardinality:
            raise ValueError(
                f"invalid PatchConfig: bottleneck width {width} (= {channels} // {self.bottleneck_ratio}) "
                f"must be a positive multiple of cardinality {self.cardinality}"
            )
        return width

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.embedding_rank:  # as bundles written before the field had it
            del d["embedding_rank"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PatchConfig":
        return cls(**d)
