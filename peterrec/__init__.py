"""PeterRec model library: backbones, patches, heads, objectives, fine-tuning modes and metrics.

Pure PyTorch: nothing here imports Ray.
"""

from peterrec.backbone import Backbone, user_representation
from peterrec.config import BackboneConfig, PatchConfig
from peterrec.efficiency import ParamReport, param_report, storage_for
from peterrec.modes import MODES, TaskModel, build_task_model
from peterrec.patches import TaskPatches
from peterrec.training import Progress, TrainConfig, TrainResult, pick_device, train

__version__ = "0.1.0"

__all__ = [
    "Backbone", "BackboneConfig", "MODES", "ParamReport", "PatchConfig", "Progress", "TaskModel",
    "TaskPatches", "TrainConfig", "TrainResult", "build_task_model", "param_report", "pick_device",
    "storage_for", "train", "user_representation",
]
