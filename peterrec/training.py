"""The one training loop behind pretraining, fine-tuning and Tune trials.

They differ only in the module and its loss function (the loss of one batch), the arrays
they feed and the evaluation they ask for. Progress goes to a callback after every logged step, so
the orchestrator, the CLI and the UI can follow it and ask it to stop.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import InitVar, asdict, dataclass, field
from typing import Callable, Generator

import numpy as np
import torch
from torch import nn


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context every forward pass runs in (training, evaluation, packs, probes, predict).

    bf16: torch.autocast on the device, CPU or CUDA: matmuls and convolutions in bfloat16, while
    weights, optimizer state, gradients of weights and reductions stay fp32. fp32, and an 'auto'
    that no measurement resolved (peterrec.precision.choose_precision), run as they are."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class TrainConfig:
    epochs: int = 1
    max_steps: int | None = None  # stops early when reached, whatever the epochs
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 5.0
    seed: int = 0
    # fp32 | bf16 (autocast_for) | auto (a job resolves it with peterrec.precision.choose_precision; fp32
    # until then). None: from the `bf16` flag older configs and bundles carry.
    precision: str | None = None
    bf16: InitVar[bool | None] = None  # legacy: bf16 = true reads as precision "bf16"; readable as .bf16
    compile: bool = False  # fine-tuning steps run the backbone through torch.compile (peterrec.compiled)
    eval_every: int = 0  # steps between evaluations; 0 = at the end of each epoch
    log_every: int = 10  # steps between progress callbacks
    keep_best: bool = True  # with an evaluation: restore the trained weights of the best one

    def __post_init__(self, bf16: bool | None = None):
        if self.precision is None:
            self.precision = "bf16" if bf16 else "fp32"
        problems = [f"{n} must be >= 1 (got {v})" for n, v in
                    (("epochs", self.epochs), ("batch_size", self.batch_size), ("log_every", self.log_every))
                    if v < 1]
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 (got {self.max_steps})")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def total_steps(self, n_samples: int) -> int:
        steps = self.epochs * math.ceil(n_samples / self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps

    def to_dict(self) -> dict:
        return asdict(self)


# Read-only, for code that asks the old question; dataclasses.replace passes it back as the InitVar,
# where an explicit precision wins.
TrainConfig.bf16 = property(lambda self: self.precision == "bf16", doc="precision == 'bf16'")


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    samples_per_s: float
    metric: float | None = None  # latest validation metric, if any
    done: bool = False


@dataclass
class TrainState:
    """A run's bookkeeping between steps, kept current by training_steps while it runs: what a checkpoint
    saves beside the weights and the optimizer (peterrec.task_state), so that a run resumed from it
    continues bit-exactly on the same device and thread count.

    Given to `train(state=...)` with step > 0, the run resumes at that step: the shuffles of the steps done
    are replayed (not trained), the best evaluation so far and its weights are kept, and the global torch
    RNG (coldrec heads draw their training negatives from it) is set back to `rng`."""

    step: int = 0
    loss: float = float("nan")
    best: float | None = None
    best_state: list | None = None  # the trainable parameters at the best evaluation (keep_best)
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    rng: torch.Tensor | None = None  # torch.get_rng_state() after `step` steps
    cuda_rng: torch.Tensor | None = None  # torch.cuda.get_rng_state() of the run's device, on CUDA

    def capture_rng(self, device: torch.device) -> None:
        taken = rng_state(device)
        self.rng, self.cuda_rng = taken["cpu"], taken.get("cuda")

    def restore_rng(self, device: torch.device) -> None:
        if self.rng is not None:
            torch.set_rng_state(self.rng)
        if self.cuda_rng is not None and device.type == "cuda":  # a CPU run resumed on CUDA: its CPU stream only
            torch.cuda.set_rng_state(self.cuda_rng, device)


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    best_metric: float | None
    seconds: float
    samples_per_s: float
    stopped: bool = False  # the callback asked to stop
    history: list[dict] = field(default_factory=list)  # one row per evaluation


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, with PyTorch's fused kernel where the parameters' device has one (CPU and CUDA): one
    kernel over every tensor instead of ~10 small ops per tensor, which is most of a small patch
    set's optimizer step (1.1 ms -> 0.2 ms for a C=64 peterrec task on 2 CPU cores)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches over one epoch."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train(module: nn.Module, arrays: tuple[np.ndarray, ...], config: TrainConfig,
          device: torch.device | None = None,
          evaluate: Callable[[], float] | None = None,
          on_progress: Callable[[Progress], bool | None] | None = None,
          loss_fn: Callable[..., torch.Tensor] | None = None,
          optimizer: torch.optim.Optimizer | None = None, start_step: int = 0,
          on_epoch_end: Callable[[Progress], bool | None] | None = None,
          rng: dict[str, torch.Tensor] | None = None, state: TrainState | None = None) -> TrainResult:
    """Minimise loss_fn(*batch) (default: module(*batch)) over shuffled batches of `arrays`
    (aligned along axis 0), training the parameters of `module` that require grad.

    `evaluate` returns a validation metric (higher is better); `on_progress` may return True to stop.
    Resuming (Ray Train checkpoints): pass the `optimizer` with its restored state and the steps already
    done as `start_step`; the shuffles of those steps are replayed, not trained, and `rng` (rng_state() taken
    where the checkpoint was) continues the global RNG (cloze masks, sampled negatives) where it stood; without
    it the global RNG is seeded with config.seed. `on_epoch_end` is called after each epoch (and when
    max_steps ends one early), e.g. to checkpoint; it may return True to stop.
    `state` (TrainState) is kept current while the run goes, for a caller that checkpoints it; given with
    step > 0 (loaded with peterrec.task_state) the run continues from it, RNG included.
    """
    loss_fn = loss_fn or module
    device = device or pick_device()
    if rng is None:
        torch.manual_seed(config.seed)
    else:
        set_rng_state(rng, device)
    params = trainable_parameters(module)
    optimizer = optimizer or make_optimizer(params, config)
    autocast = autocast_for(device, config.precision)
    if state is not None and state.step:
        state.restore_rng(device)  # after the seeding above: where the checkpointed run left the RNG
    run = training_steps(module, params, arrays, config, device, evaluate, on_progress, start_step, on_epoch_end,
                         state=state)
    try:
        batch = next(run)
        while True:
            with autocast:
                loss = loss_fn(*batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_step(params, optimizer, config.grad_clip)
            batch = run.send(loss.item())
    except StopIteration as end:
        return end.value


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG streams a training step draws from (cloze masks, sampled negatives): the CPU
    generator's state and, on CUDA, the device's; uint8 tensors (they go into a safetensors file)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        if "cuda" not in state:
            raise ValueError("the saved RNG state has no CUDA generator: it was taken on CPU")
        torch.cuda.set_rng_state(state["cuda"], device)


def optimizer_step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    """The step after backward: gradients clipped to `grad_clip` (total norm), then the optimizer's step."""
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the module has no trainable parameters")
    return params


def training_steps(module: nn.Module, params: list[nn.Parameter], arrays: tuple[np.ndarray, ...],
                   config: TrainConfig, device: torch.device,
                   evaluate: Callable[[], float] | None = None,
                   on_progress: Callable[[Progress], bool | None] | None = None, start_step: int = 0,
                   on_epoch_end: Callable[[Progress], bool | None] | None = None,
                   start: float | None = None,
                   state: TrainState | None = None) -> Generator[list[torch.Tensor], float, TrainResult]:
    """Everything of a training run but the optimisation step, driven step by step: yields each batch
    (tensors on `device`), takes the step's loss value back by `send`, and returns the TrainResult.

    Epochs of batches shuffled by a generator seeded with config.seed, max_steps, evaluation and
    keep-best, progress reports and stop requests, resume by `start_step` (or a TrainState: step, best
    evaluation, history, all kept current in it while the run goes). `train` drives one run;
    peterrec.fused drives several at once, one fused optimisation step for all of them.
    """
    generator = torch.Generator().manual_seed(config.seed)
    tensors = [torch.as_tensor(a) for a in arrays]
    n = len(tensors[0])
    total = config.total_steps(n)
    per_epoch = math.ceil(n / config.batch_size)

    state = state if state is not None else TrainState(step=start_step)
    step, loss_value = max(start_step, state.step), state.loss
    best, best_state, history = state.best, state.best_state, state.history
    metric = history[-1]["metric"] if history else None
    skip = step  # batches a resumed run already trained: their shuffles are drawn, nothing else
    stopped, seen, epoch = False, 0, 0
    start = time.perf_counter() if start is None else start

    def run_eval(epoch: int):
        nonlocal best, best_state, metric
        module.eval()
        with torch.no_grad():
            metric = float(evaluate())
        module.train()
        history.append({"step": step, "epoch": epoch, "loss": loss_value, "metric": metric})
        if best is None or metric > best:
            best = metric
            if config.keep_best:
                best_state = [p.detach().clone() for p in params]
            state.best, state.best_state = best, best_state

    def progress(epoch: int, done: bool = False) -> Progress:
        rate = seen / max(time.perf_counter() - start, 1e-9)
        return Progress(step, total, epoch, loss_value, rate, metric, done)

    def report(epoch: int, done: bool = False) -> bool:
        return on_progress is not None and bool(on_progress(progress(epoch, done)))

    module.train()
    for epoch in range(config.epochs):
        if skip >= per_epoch or step >= total:  # an epoch a resumed run already finished
            skip -= min(skip, per_epoch)
            torch.randperm(n, generator=generator)
            continue
        for index in batches(n, config.batch_size, generator):
            if skip:
                skip -= 1
                continue
            loss_value = yield [t[index].to(device, non_blocking=True) for t in tensors]
            step += 1
            seen += len(index)
            state.step, state.loss = step, loss_value
            if evaluate is not None and config.eval_every and step % config.eval_every == 0:
                run_eval(epoch)
            if (step % config.log_every == 0 or step == total) and report(epoch):
                stopped = True
            if stopped or step >= total:
                break
        if stopped:
            break
        if evaluate is not None and not config.eval_every:
            run_eval(epoch)
        if on_epoch_end is not None and on_epoch_end(progress(epoch)):
            stopped = True
            break
        if step >= total:
            break
    if evaluate is not None and not history:
        run_eval(epoch)
    if best_state is not None:
        with torch.no_grad():
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    seconds = time.perf_counter() - start
    module.eval()
    report(epoch, done=True)
    return TrainResult(step, loss_value, best, seconds, seen / max(seconds, 1e-9), stopped, history)
