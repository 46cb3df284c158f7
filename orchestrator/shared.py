"""The frozen backbone and the sequences, put into Ray's object store once per job and read zero-copy.

Ray hands numpy arrays out of its object store as read-only views of shared memory, while a torch
tensor put through it is deserialised into a private copy in every worker. So the driver puts plain
numpy arrays (one put per job); a worker wraps them with torch.from_numpy (no copy) into a Backbone
built on the meta device, and caches it per process, so a worker that runs many tasks builds it once
(and, on a GPU, moves it to the device once).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from peterrec.backbone import Backbone
from peterrec.checkpoint import backbone_arrays
from peterrec.config import BackboneConfig
from tasks.sequences import Sequences


@dataclass(frozen=True)
class SharedRefs:
    """What every task of a job reads, by reference. Ray resolves ObjectRefs passed as top-level
    arguments; inside this object they stay references, so the worker decides when to read them."""

    backbone: object  # ObjectRef of {name: np.ndarray}
    backbone_config: dict
    sequences: object  # ObjectRef of {"offsets", "items", "vocab_size"}


class SequenceArrays:
    """The part of tasks.Sequences that training reads (offsets + items), without the user ids."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray, vocab_size: int):
        self.offsets, self.items, self.vocab_size = offsets, items, int(vocab_size)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    padded = Sequences.padded  # the same code; it reads only offsets and items


def share(backbone: Backbone, sequences: Sequences) -> SharedRefs:
    """Driver side: one put of the backbone's arrays and one of the sequences' arrays."""
    import ray

    arrays = {"offsets": sequences.offsets, "items": sequences.items, "vocab_size": sequences.vocab_size}
    return SharedRefs(ray.put(backbone_arrays(backbone)), backbone.config.to_dict(), ray.put(arrays))


# Per worker process: the newest job's backbone (per device) and sequences. Older jobs' entries are
# dropped, so a long-lived worker does not pin old backbones in the object store.
_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, build):
    if key not in _CACHE:
        for old in [k for k in _CACHE if k[0] != key[0] and k[1] == key[1]]:
            del _CACHE[old]
        _CACHE[key] = build()
    return _CACHE[key]


def backbone_from_arrays(arrays: dict[str, np.ndarray], config: BackboneConfig) -> Backbone:
    """A frozen Backbone whose tensors are the given (read-only) arrays' memory: nothing is copied."""
    with warnings.catch_warnings():
        # The arrays are read-only shared memory; the backbone is frozen and never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    with torch.device("meta"):  # no storage is allocated for the weights that are replaced below
        backbone = Backbone(config)
    backbone.load_state_dict(tensors, strict=True, assign=True)
    return backbone.requires_grad_(False).eval()


def shared_backbone(refs: SharedRefs, device: torch.device | str = "cpu") -> Backbone:
    """Worker side: the job's backbone, zero-copy on CPU; on a GPU one copy per worker process."""
    import ray

    device = torch.device(device)

    def build():
        if device.type == "cpu":
            return backbone_from_arrays(ray.get(refs.backbone), BackboneConfig.from_dict(refs.backbone_config))
        return shared_backbone(refs, "cpu").to(device)

    return _cached((refs.backbone.hex(), "backbone", str(device)), build)


def shared_sequences(refs: SharedRefs) -> SequenceArrays:
    """Worker side: the job's sequences as zero-copy array views."""
    import ray

    def build():
        arrays = ray.get(refs.sequences)
        return SequenceArrays(arrays["offsets"], arrays["items"], arrays["vocab_size"])

    return _cached((refs.sequences.hex(), "sequences"), build)
