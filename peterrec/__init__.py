"""PeterRec model library: backbones, patches, heads, objectives, fine-tuning modes and metrics.

Pure PyTorch: nothing here imports Ray. The names below are imported on first use, so that light
modules (peterrec.config) and the CLI's --help do not pay for importing torch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Backbone": "backbone", "user_representation": "backbone",
    "BackboneConfig": "config", "PatchConfig": "config", "MODES": "modes", "Mode": "modes",
    "ParamReport": "efficiency", "param_report": "efficiency", "storage_for": "efficiency",
    "TaskModel": "task_model", "build_task_model": "task_model",
    "TaskPatches": "patches",
    "Progress": "training", "TrainConfig": "training", "TrainResult": "training", "pick_device": "training",
    "train": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"peterrec.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'peterrec' has no attribute {name!r}")
