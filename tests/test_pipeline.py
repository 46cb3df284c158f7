"""End to end on generated data: pretraining helps, and PeterRec beats the trivial baselines."""

import numpy as np
import pytest
import torch

from peterrec.config import BackboneConfig
from peterrec.finetune import FinetuneSettings, finetune_task, prepare_task
from peterrec.pretrain import pretrain
from peterrec.training import TrainConfig
from tasks import load_job
from tasks.synth import synthesize


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    spec = synthesize(tmp_path_factory.mktemp("world") / "data", tasks=1, users=3000, items=80, seed=3, max_len=30)
    job, sequences, data = load_job(spec)
    config = BackboneConfig(vocab_size=job.vocab_size, channels=16, dilations=(1, 4), max_len=30)
    outcome = pretrain(sequences, config, TrainConfig(epochs=3, batch_size=32, lr=3e-3, seed=0))
    return job, sequences, data, outcome


def test_pretraining_lowers_the_next_item_loss(world):
    *_, outcome = world
    assert outcome.valid_loss_after < 0.9 * outcome.valid_loss_before


def majority_accuracy(task_data) -> float:
    _, train_labels = task_data.part("train")
    _, test_labels = task_data.part("test")
    return float(np.mean(test_labels == np.bincount(train_labels).argmax()))


def test_peterrec_beats_the_majority_class_and_peterzero(world):
    job, sequences, data, outcome = world
    task = job.tasks[0]
    assert task.kind == "classify" and task.num_classes == 2
    scores = {}
    for mode in ("peterrec", "peterzero"):
        settings = FinetuneSettings(mode=mode, train=TrainConfig(epochs=50, max_steps=200, batch_size=32, lr=3e-3,
                                                                 eval_every=50))
        scores[mode] = finetune_task(outcome.backbone, task, data[task.name], sequences, settings).value
    majority = majority_accuracy(data[task.name])
    assert scores["peterrec"] > majority + 0.05, (scores, majority)
    assert scores["peterrec"] > scores["peterzero"], scores


@pytest.mark.parametrize("keep_best, eval_every", [(True, 0), (False, 0), (True, 7), (False, 7)])
def test_reported_valid_metrics_are_those_of_the_final_weights(world, keep_best, eval_every):
    """finish() takes the valid metrics from the validation that saw the final weights, when one did:
    they equal a fresh evaluation of the trained model."""
    job, sequences, data, outcome = world
    task = job.tasks[0]
    settings = FinetuneSettings(train=TrainConfig(epochs=3, max_steps=20, batch_size=64, lr=3e-2,
                                                  eval_every=eval_every, keep_best=keep_best))
    done = finetune_task(outcome.backbone, task, data[task.name], sequences, settings)
    task_prepared = prepare_task(outcome.backbone, task, data[task.name], sequences, settings)
    assert done.valid == task_prepared.evaluators["valid"].evaluate(done.model)
    assert len(done.result.history) >= 2
