"""Parameter-efficiency accounting: what a task trains, against what FineAll would train."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from peterrec.backbone import Backbone


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class ParamReport:
    mode: str
    trained_params: int  # tensors optimised for this task
    backbone_params: int  # the shared pretrained backbone (embedding + blocks)
    fineall_params: int  # what FineAll trains for the same task: backbone + head
    stored_params: int  # what a bundle stores for the task (trained, plus PeterZero's own backbone)

    @property
    def ratio_vs_fineall(self) -> float:
        """Trained parameters as a percentage of FineAll's."""
        return 100.0 * self.trained_params / self.fineall_params

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio_vs_fineall": self.ratio_vs_fineall}


def param_report(task_model) -> ParamReport:
    backbone = count_parameters(task_model.backbone)
    return ParamReport(
        mode=task_model.mode,
        trained_params=count_parameters(task_model, trainable_only=True),
        backbone_params=backbone,
        fineall_params=backbone + count_parameters(task_model.head),
        stored_params=sum(t.numel() for t in task_model.task_state_dict().values()),
    )


@dataclass(frozen=True)
class StorageReport:
    tasks: int
    shared_params: int  # one backbone + every task's patch set
    full_copies_params: int  # one fine-tuned full model per task

    @property
    def ratio(self) -> float:
        """Shared storage as a fraction of N full copies."""
        return self.shared_params / self.full_copies_params


def storage_for(backbone: Backbone | int, per_task_stored: list[int], per_task_fineall: list[int]) -> StorageReport:
    """Storage of one backbone + N patch sets against N full fine-tuned copies."""
    backbone_params = backbone if isinstance(backbone, int) else count_parameters(backbone)
    return StorageReport(
        tasks=len(per_task_stored),
        shared_params=backbone_params + sum(per_task_stored),
        full_copies_params=sum(per_task_fineall),
    )
