"""`pretrain` with --workers 1 (in this process, no Ray): the real command on a tiny synthetic world."""

import json
from pathlib import Path

import pytest

import cli
from peterrec.checkpoint import load_backbone

TINY = ["--channels", "8", "--dilations", "1,2", "--max-len", "20", "--batch-size", "32", "--lr", "0.005"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tasks.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", tasks=2, users=200, items=50, seed=0).parent


def pretrain(*args) -> int:
    return cli.main(["pretrain", *map(str, args)])


@pytest.mark.parametrize("arch", ["causal", "noncausal"])
def test_local_pretrain_lowers_the_loss_and_writes_a_checkpoint(data, tmp_path, capsys, arch):
    out = tmp_path / "backbone"
    assert pretrain("--data", data, "--out", out, "--arch", arch, "--epochs", "2", *TINY) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    backbone, config = load_backbone(out)
    assert backbone.config.arch == arch and backbone.config.channels == 8
    info = config["pretraining"]
    assert info["valid_loss_after"] < info["valid_loss_before"]
    assert info["steps"] > 2 * 6  # windows over whole histories: more than 190 training users / 32 per batch
    assert "workers" not in info  # no Ray involved
    assert pretrain("--data", data, "--out", out, "--arch", arch, "--epochs", "2", "--latest-only", "--force",
                    *TINY) == 0
    assert load_backbone(out)[1]["pretraining"]["steps"] == 2 * 6  # 190 training users / 32 per batch
    printed = capsys.readouterr().out
    assert "pretraining summary" in printed and "validation loss" in printed
    assert not Path(f"{out}.ray").exists()


def test_existing_out_is_refused_without_force(data, tmp_path, capsys):
    out = tmp_path / "backbone"
    assert pretrain("--data", data, "--out", out, "--max-steps", "2", *TINY) == 0
    before = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert pretrain("--data", data, "--out", out, "--max-steps", "2", "--seed", "1", *TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err
    assert (out / "model.safetensors").read_bytes() == before
    assert pretrain("--data", data, "--out", out, "--max-steps", "2", "--seed", "1", "--force", *TINY) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert json.loads((out / "config.json").read_text())["pretraining"]["train"]["seed"] == 1


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing"], "missing"),
    (["--data", "{data}", "--workers", "0"], "--workers"),
    (["--data", "{data}", "--resume"], "--resume"),
    (["--data", "{data}", "--kernel", "0"], "kernel_size"),
])
def test_user_errors_exit_2_and_write_nothing(data, tmp_path, capsys, args, message):
    out = tmp_path / "backbone"
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    assert pretrain(*args, "--out", out, *TINY) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
