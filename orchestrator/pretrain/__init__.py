"""Pretraining on Ray: data-parallel Ray Train runs (ray_train.py) with resumable checkpoints (state.py),
and several single-process pretrainings side by side as Ray tasks (side_by_side.py)."""
