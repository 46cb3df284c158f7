"""Parameter-efficiency accounting: what a task trains, against what FineAll would train, and what a job
stores against one full model per task. Imports torch only where it builds models (UIs read reports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def count_parameters(module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass(frozen=True)
class ParamReport:
    mode: str
    trained_params: int  # tensors optimised for this task
    backbone_params: int  # the shared pretrained backbone (embedding + blocks)
    fineall_params: int  # what FineAll trains for the same task: backbone + head (+ a learned pooling)
    stored_params: int  # what a bundle stores for the task (trained, plus PeterZero's own backbone)

    @property
    def ratio_vs_fineall(self) -> float:
        """Trained parameters as a percentage of FineAll's."""
        return 100.0 * self.trained_params / self.fineall_params

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio_vs_fineall": self.ratio_vs_fineall}

    @classmethod
    def from_row(cls, row: dict) -> "ParamReport":
        """From a results.parquet row (or any dict holding the fields)."""
        return cls(row["mode"], int(row["trained_params"]), int(row["backbone_params"]), int(row["fineall_params"]),
                   int(row["stored_params"]))


def param_report(task_model) -> ParamReport:
    backbone = count_parameters(task_model.backbone)
    return ParamReport(
        mode=task_model.mode,
        trained_params=count_parameters(task_model, trainable_only=True),
        backbone_params=backbone,
        fineall_params=backbone + count_parameters(task_model.head) + _pooling_params(task_model),
        stored_params=sum(t.numel() for t in task_model.task_state_dict().values()),
    )


def _pooling_params(task_model) -> int:
    pooling = getattr(task_model, "pooling", None)
    return count_parameters(pooling) if pooling is not None else 0


def count_parameters_of_config(config) -> int:
    """Parameters of a backbone of this BackboneConfig, counted on shapes only."""
    from peterrec.backbone import Backbone
    from peterrec.task_model import shapes_only

    with shapes_only():
        return count_parameters(Backbone(config))


def planned_report(backbone_config, kind: str, num_outputs: int, settings) -> ParamReport:
    """What a task would train and store with these FinetuneSettings (its overrides applied), from a
    model built with shapes only: no memory, no backbone weights."""
    import torch

    from peterrec.backbone import Backbone
    from peterrec.task_model import build_task_model, shapes_only

    with shapes_only(), torch.random.fork_rng(devices=[]):
        model = build_task_model(Backbone(backbone_config), kind, num_outputs, settings.mode, settings.patch,
                                 settings.finelast_blocks, settings.representation)
    return param_report(model)


@dataclass(frozen=True)
class StorageReport:
    tasks: int
    shared_params: int  # the shared backbone (once, when a task reads it) + every task's stored parameters
    full_copies_params: int  # one fine-tuned full model per task
    backbone_params: int = 0  # the shared backbone, as counted in shared_params (0: no task reads it)

    @property
    def ratio(self) -> float:
        """Shared storage as a fraction of N full copies."""
        return self.shared_params / self.full_copies_params

    @property
    def patch_params(self) -> int:
        return self.shared_params - self.backbone_params


def storage_for(backbone, per_task_stored: list[int], per_task_fineall: list[int],
                modes: list[str] | None = None) -> StorageReport:
    """Storage of one backbone (a Backbone, or its parameter count) + N stored task states against N full
    fine-tuned copies. With `modes` (one
    per task), the shared backbone counts only when some task reads it (not for PeterZero or FineAll tasks
    alone: each stores a whole backbone of its own)."""
    from peterrec.modes import get_mode

    backbone_params = backbone if isinstance(backbone, int) else count_parameters(backbone)
    if modes is not None and not any(get_mode(m).needs_shared_backbone for m in modes):
        backbone_params = 0
    return StorageReport(
        tasks=len(per_task_stored),
        shared_params=backbone_params + sum(per_task_stored),
        full_copies_params=sum(per_task_fineall),
        backbone_params=backbone_params,
    )


@dataclass
class JobBudget:
    """A job's parameters: the shared backbone and one ParamReport per task (planned from its settings, or
    measured once it has trained)."""

    backbone_params: int
    tasks: dict[str, ParamReport]
    kinds: dict[str, str] = field(default_factory=dict)  # task -> "classify" | "coldrec", where known

    def storage(self, names: list[str] | None = None) -> StorageReport:
        """What `names` (default: every task) hold together against as many full copies."""
        picked = [self.tasks[n] for n in (self.tasks if names is None else names) if n in self.tasks]
        return storage_for(self.backbone_params, [r.stored_params for r in picked],
                           [r.fineall_params for r in picked], [r.mode for r in picked])
