"""--precision through the product: the flags (and --bf16, their old spelling), `auto` resolved once per
job (in process and on a Ray worker), per search and per pretraining, its record in state.json /
search.json / the checkpoint, and predict using the precision each task trained in.

Whether this CPU has bf16 units decides what `auto` may choose, so the tests that run `auto` for real
accept either choice and check that it is applied and explained; the no-units branch is forced by
patching peterrec.precision.native_bf16 (in process), and the bf16 branch by asking for bf16.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import cli
import peterrec.precision as precision
from orchestrator.results import read_results
from support import finetune_args, make_world, task_names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), tasks=3, users=150)


@pytest.fixture
def no_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: (False, "test CPU: no bf16 matrix units"))


def trained_in(job_dir) -> dict[str, str]:
    """Each task's precision as its bundle entry records it."""
    from peterrec.bundle import open_bundle

    bundle = open_bundle(job_dir)
    return {name: bundle.config(name)["settings"]["train"]["precision"] for name in bundle.names}


def job_state(job_dir):
    from orchestrator.client import JobClient

    return JobClient.attach(job_dir).state()


def test_flags_default_to_auto_and_bf16_is_the_old_spelling():
    from commands._flags import settings_from_args
    from orchestrator.settings import JobSettings, SearchSettings

    parser = cli.build_parser()
    base = ["--backbone", "b", "--tasks", "t", "--out", "o"]
    for command, kind in (("finetune", JobSettings), ("tune", SearchSettings)):
        for extra, expected in (([], "auto"), (["--precision", "fp32"], "fp32"), (["--bf16"], "bf16")):
            settings = settings_from_args(kind, parser.parse_args([command, *base, *extra]))
            assert settings.training.precision == expected
            assert settings.training.finetune_settings().train.precision == expected
    job = JobSettings(backbone="b", tasks="t", out="o")
    job.training.precision = "bf16"
    assert job.command_line()[-2:] == ["--precision", "bf16"]
    for extra, expected in (([], "auto"), (["--bf16"], "bf16"), (["--precision", "fp32"], "fp32")):
        assert parser.parse_args(["pretrain", "--data", "d", "--out", "o", *extra]).precision == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", *base, "--precision", "fp16"])


def assert_job_trained_fp32(out, reason: str) -> None:
    """The job in `out` resolved its precision to fp32 for `reason`, measured nothing, trained every task
    in fp32."""
    resources = job_state(out).resources
    assert (resources["precision"], resources["precision_reason"]) == ("fp32", reason)
    assert resources["precision_measured"] == {}
    assert set(trained_in(out).values()) == {"fp32"}


def test_auto_without_bf16_units_trains_fp32_and_says_why(world, tmp_path, no_bf16_units, capsys):
    spec, backbone = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out, "--in-process")) == 0
    assert_job_trained_fp32(out, "fp32: test CPU: no bf16 matrix units")
    assert "precision: fp32 (fp32: test CPU: no bf16 matrix units)" in capsys.readouterr().out


def test_bf16_as_asked_trains_every_task_and_pack_in_bf16_and_predict_follows(world, tmp_path):
    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from peterrec.predict import MultiTaskPredictor

    spec, backbone_dir = world
    names = task_names(spec)
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone_dir, out, "--in-process", "--bf16", "--pack", 2)) == 0
    assert all(r["status"] == "done" for r in read_results(out))
    state = job_state(out)
    assert state.resources["precision"] == "bf16" and state.resources["precision_reason"] == "bf16: as asked"
    assert "precision_measured" not in state.timings  # nothing measured
    assert max(t.pack for t in state.tasks.values()) == 2  # packed, in bf16
    assert trained_in(out) == {n: "bf16" for n in names}
    backbone, _ = load_backbone(backbone_dir)
    predictor = MultiTaskPredictor(backbone, open_bundle(out))
    assert predictor.precisions == {n: "bf16" for n in names}
    assert MultiTaskPredictor(backbone, open_bundle(out), precision="fp32").precisions == {n: "fp32" for n in names}


def test_predict_runs_each_task_in_the_precision_it_trained_in(world, tmp_path):
    """One bundle, one task trained in bf16 (a spec override) and the others in fp32: a mixed batch scores
    every row as that task alone does, at its own precision."""
    from peterrec.bundle import open_bundle
    from peterrec.checkpoint import load_backbone
    from peterrec.predict import MultiTaskPredictor
    from tasks import load_spec
    from tasks.spec import write_spec

    spec_path, backbone_dir = world
    job = load_spec(spec_path)
    job = replace(job, tasks=[replace(job.tasks[0], overrides={"precision": "bf16"}), *job.tasks[1:]])
    spec = write_spec(spec_path.with_name("mixed.toml"), job, "test")
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone_dir, out, "--in-process", "--precision", "fp32")) == 0
    names = [t.name for t in job.tasks]
    assert trained_in(out) == {n: "bf16" if n == names[0] else "fp32" for n in names}
    backbone, _ = load_backbone(backbone_dir)
    predictor = MultiTaskPredictor(backbone.requires_grad_(False).eval(), open_bundle(out))
    items = torch.randint(1, 40, (6, 20))
    rows = [names[i % len(names)] for i in range(6)]
    mixed = predictor.predict(items, rows)
    for i, name in enumerate(rows):
        alone = predictor.predict_task(name, items[i:i + 1]).row(0)
        got = mixed[i]
        if got.kind == "classify":
            torch.testing.assert_close(got.probabilities, alone.probabilities, atol=1e-5, rtol=1e-4)
        else:
            torch.testing.assert_close(got.scores, alone.scores, atol=1e-5, rtol=1e-4)
    bf16_scores = predictor.predict_task(names[0], items).probabilities if predictor.kind(names[0]) == "classify" \
        else predictor.predict_task(names[0], items).scores
    fp32 = MultiTaskPredictor(backbone, open_bundle(out), [names[0]], precision="fp32")
    fp32_scores = fp32.predict_task(names[0], items)
    fp32_scores = fp32_scores.probabilities if fp32.kind(names[0]) == "classify" else fp32_scores.scores
    assert not torch.equal(bf16_scores, fp32_scores)  # the bf16 task really scored in bf16


def test_auto_is_measured_once_on_a_ray_worker_and_every_task_trains_in_it(world, tmp_path, capsys):
    spec, backbone = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out)) == 0
    state = job_state(out)
    chosen, reason = state.resources["precision"], state.resources["precision_reason"]
    assert chosen in ("fp32", "bf16") and reason.startswith(chosen + ": ")
    assert "precision_measured" in state.timings
    native, _ = precision.native_bf16(torch.device("cpu"))  # the worker runs on this machine's CPU
    assert ("no bf16 matrix units" in reason) == (not native)
    if native:
        assert set(state.resources["precision_measured"]) == {"fp32", "bf16"} and "samples/s" in reason
    assert set(trained_in(out).values()) == {chosen}
    assert f"precision: {chosen} ({reason})" in capsys.readouterr().out


def test_a_search_resolves_auto_once_and_records_it(world, tmp_path, capsys):
    out = tmp_path / "search"
    spec, backbone = world
    argv = ["tune", "--backbone", str(backbone), "--tasks", str(spec), "--out", str(out), "--only",
            task_names(spec)[0], "--samples", "1", "--scheduler", "fifo", "--max-steps", "4", "--epochs", "1",
            "--batch-size", "32", "--evals", "1", "--ui", "plain", "--num-cpus", "2", "--object-store-mb", "100"]
    assert cli.main(argv) == 0
    record = json.loads((out / "search.json").read_text())["precision"]
    assert record["precision"] in ("fp32", "bf16") and record["reason"].startswith(record["precision"] + ": ")
    assert record["precision"] + " (" in capsys.readouterr().out
    assert cli.main([*argv[:-4], "--bf16", "--force", *argv[-4:]]) == 0
    assert json.loads((out / "search.json").read_text())["precision"]["reason"] == "bf16: as asked"


def test_pretraining_resolves_auto_and_records_it(world, tmp_path, no_bf16_units):
    spec, _ = world
    common = ["pretrain", "--data", str(spec), "--channels", "16", "--dilations", "1,2", "--max-len", "20",
              "--max-steps", "3", "--epochs", "1"]
    assert cli.main([*common, "--out", str(tmp_path / "auto")]) == 0
    info = json.loads((tmp_path / "auto" / "config.json").read_text())["pretraining"]
    assert info["train"]["precision"] == "fp32" and info["precision_reason"] == "fp32: test CPU: no bf16 matrix units"
    assert cli.main([*common, "--out", str(tmp_path / "bf16"), "--bf16"]) == 0
    info = json.loads((tmp_path / "bf16" / "config.json").read_text())["pretraining"]
    assert info["train"]["precision"] == "bf16" and info["precision_reason"] == "bf16: as asked"


def test_a_failed_measurement_trains_fp32_and_says_so(world, tmp_path, monkeypatch):
    import peterrec.finetune

    def broken(*args, **kwargs):
        raise RuntimeError("no step could run")

    monkeypatch.setattr(peterrec.finetune, "measure_precision", broken)
    spec, backbone = world
    out = tmp_path / "job"
    assert cli.main(finetune_args(spec, backbone, out, "--in-process")) == 0
    assert_job_trained_fp32(out, "fp32: measuring bf16 failed (RuntimeError: no step could run)")
