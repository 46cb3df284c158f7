"""The parameter budget of a job, before it starts and while it runs (no Textual, no Ray).

Per task: what the mode trains, what a bundle stores and what FineAll would train, from task models
built on PyTorch's meta device (shapes only: a 100-task spec with big target vocabularies costs no
memory). Then the whole job: one backbone held once plus every patch set, against N full copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TaskBudget:
    name: str
    kind: str
    trained: int  # parameters optimised for the task
    stored: int  # parameters its bundle entry holds (trained; PeterZero adds its own backbone)
    fineall: int  # what FineAll trains for the same task: backbone + head

    @property
    def ratio(self) -> float:
        """Trained parameters as a percentage of FineAll's."""
        return 100.0 * self.trained / self.fineall if self.fineall else 0.0


@dataclass
class Budget:
    """A job's parameters: the shared backbone and one TaskBudget per task (spec order)."""

    backbone_params: int
    mode: str
    tasks: dict[str, TaskBudget] = field(default_factory=dict)
    estimated: bool = False  # patch settings guessed (defaults): an attached job whose bundle is still empty

    def totals(self, names=None) -> dict:
        """Storage of one backbone + the patch sets of `names` (default all) vs that many full copies."""
        picked = [self.tasks[n] for n in (self.tasks if names is None else names) if n in self.tasks]
        patches = sum(t.stored for t in picked)
        shared = self.backbone_params + patches
        full = sum(t.fineall for t in picked)
        return {"tasks": len(picked), "backbone": self.backbone_params, "patches": patches,
                "trained": sum(t.trained for t in picked), "shared": shared, "full": full,
                "ratio": shared / full if full else None}


def resolve_spec(path: str | Path) -> Path:
    """A spec file, or a data directory holding tasks.toml (as `finetune --tasks` takes it)."""
    path = Path(path).expanduser()
    return path / "tasks.toml" if path.is_dir() else path


def backbone_config(path: str | Path):
    """The BackboneConfig of a checkpoint directory, read from config.json (no tensors)."""
    from peterrec.checkpoint import read_checkpoint_config
    from peterrec.config import BackboneConfig

    return BackboneConfig.from_dict(read_checkpoint_config(Path(path).expanduser())["backbone"])


def compute_budget(backbone_path: str | Path, spec_path: str | Path, settings) -> Budget:
    """Budget of every task of a spec in `settings.mode` (each task's overrides applied).
    Raises CheckpointError / DataError / ValueError naming the file or task that is wrong."""
    from tasks import load_spec

    config = backbone_config(backbone_path)
    job = load_spec(resolve_spec(spec_path))
    return budget_for(config, [(t.name, t.kind, t.num_outputs, t.overrides) for t in job.tasks], settings)


def budget_for(config, tasks: list[tuple], settings) -> Budget:
    """tasks: (name, kind, num_outputs, overrides) tuples. Same-shaped tasks are counted once."""
    import torch

    from peterrec.backbone import Backbone
    from peterrec.efficiency import count_parameters, param_report
    from peterrec.finetune import with_overrides
    from peterrec.modes import build_task_model

    with torch.device("meta"):
        backbone = Backbone(config)
    backbone.requires_grad_(False)
    backbone_params = count_parameters(backbone)
    seen: dict[tuple, tuple[int, int, int]] = {}
    budget = Budget(backbone_params, settings.mode)
    for name, kind, outputs, overrides in tasks:
        try:
            task_settings = with_overrides(settings, overrides or {})
        except (TypeError, ValueError) as e:
            raise ValueError(f"task {name!r}: {e}") from None
        key = (kind, outputs, task_settings.mode, task_settings.patch, task_settings.finelast_blocks)
        if key not in seen:
            with torch.device("meta"):
                model = build_task_model(backbone, kind, outputs, task_settings.mode, task_settings.patch,
                                         task_settings.finelast_blocks, task_settings.representation)
            report = param_report(model)
            seen[key] = (report.trained_params, report.stored_params, report.fineall_params)
        budget.tasks[name] = TaskBudget(name, kind, *seen[key])
    return budget


def settings_from_bundle(job_dir: str | Path):
    """The FinetuneSettings a job's finished tasks were trained with (from any bundle entry), or None."""
    from peterrec.config import PatchConfig
    from peterrec.finetune import FinetuneSettings
    from peterrec.training import TrainConfig

    folder = Path(job_dir) / "bundle" / "tasks"
    for path in sorted(folder.glob("*/adapter_config.json")) if folder.is_dir() else []:
        try:
            s = json.loads(path.read_text(encoding="utf-8"))["settings"]
            return FinetuneSettings(mode=s["mode"], patch=PatchConfig.from_dict(s["patch"]),
                                    train=TrainConfig(**s["train"]), finelast_blocks=s["finelast_blocks"],
                                    representation=s["representation"], eval_negatives=s["eval_negatives"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def job_budget(state, settings=None) -> Budget | None:
    """The budget of a running or finished job from its state (spec, backbone, mode); None when the spec
    or the checkpoint cannot be read (e.g. a job reviewed on another machine): rows then fall back to
    results.parquet, which carries the numbers of finished tasks."""
    if not state.spec or not state.backbone:
        return None
    from peterrec.finetune import FinetuneSettings

    estimated = False
    if settings is None:
        settings = settings_from_bundle(state.job_dir)
    if settings is None:
        settings, estimated = FinetuneSettings(mode=state.mode or "peterrec"), True
    try:
        budget = compute_budget(state.backbone, state.spec, settings)
    except Exception:  # noqa: BLE001  any unreadable input: show what results.parquet has
        return None
    budget.estimated = estimated
    return budget


def from_results(rows: list[dict]) -> dict[str, TaskBudget]:
    """TaskBudgets of finished tasks from results.parquet rows (trained params and % of FineAll)."""
    out = {}
    for r in rows:
        if r.get("status") == "done" and r.get("trained_params") and r.get("ratio_vs_fineall"):
            trained = int(r["trained_params"])
            fineall = round(100.0 * trained / r["ratio_vs_fineall"])
            stored = trained + (r.get("backbone_params") or 0 if r.get("mode") == "peterzero" else 0)
            out[r["task"]] = TaskBudget(r["task"], r["kind"], trained, stored, fineall)
    return out
