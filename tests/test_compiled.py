"""--compile: a job's training steps run its tasks' backbones through torch.compile, and train the same
models as eager steps do (up to floating-point reassociation); the choice is recorded with each task."""

from __future__ import annotations

import torch

import cli
from support import assert_same_weights, finetune_args, make_world, task_names


def test_compiled_steps_train_the_models_eager_steps_train(tmp_path):
    from peterrec.bundle import open_bundle

    spec, backbone = make_world(tmp_path, tasks=3, users=150)
    names = task_names(spec)
    jobs = {}
    for side, extra in (("eager", []), ("compiled", ["--compile"])):
        jobs[side] = tmp_path / side
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        assert cli.main(finetune_args(spec, backbone, jobs[side], "--in-process", "--precision", "fp32", *extra)) == 0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == (side == "compiled"), f"{side}: {graphs} graphs compiled"
    eager, compiled = open_bundle(jobs["eager"]), open_bundle(jobs["compiled"])
    for name in names:
        assert (eager.config(name)["settings"]["train"]["compile"],
                compiled.config(name)["settings"]["train"]["compile"]) == (False, True)
    assert_same_weights(jobs["eager"], jobs["compiled"], names)
