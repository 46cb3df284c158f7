"""Several single-process pretrainings at once, one Ray task each, over one put of the sequences.

For experiments that pretrain more than one backbone (reproduce: a causal and a non-causal one): each
run is peterrec.pretrain.pretrain in its own worker with one thread, and comes back as it finishes.
"""

from __future__ import annotations

from typing import Iterator


def _pretrain(sequences, kwargs: dict, threads: int):
    import torch

    from peterrec.pretrain import pretrain

    torch.set_num_threads(threads)
    return pretrain(sequences, **kwargs)


def pretrain_side_by_side(sequences, runs: dict[str, dict], cpus_per_run: int = 1) -> Iterator[tuple[str, object]]:
    """Yield (name, peterrec.pretrain.PretrainOutcome) for every run as it finishes. runs: name -> keyword
    arguments of peterrec.pretrain.pretrain (config, train_config, windows, patience, ...). Needs a
    connected Ray (orchestrator.cluster.connect)."""
    import ray

    sequences_ref = ray.put(sequences)
    remote = ray.remote(num_cpus=cpus_per_run, max_retries=0)(_pretrain)
    refs = {remote.remote(sequences_ref, kwargs, cpus_per_run): name for name, kwargs in runs.items()}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield refs[ready[0]], ray.get(ready[0])

