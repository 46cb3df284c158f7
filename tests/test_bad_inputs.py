"""Bad inputs, one table per command: each case ends with its exit code, a message holding the words it names,
no Python traceback, and nothing written or changed (every input file hashed, every output folder listed,
before and after). Ray never starts here: a bad --address fails within seconds, before anything is written.

The cases of issue 16 come first in each table (data loss, ids beyond 64 bits, a file where a folder is
expected, a byte-order mark, wording and blame, a vocabulary mismatch, a tampered bundle, --address), then
the ones found on the way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cli
from support import (Bad, fill, finetune_args, free_port, make_world, movielens_100k, replace_line, run_bad,
                     silent_listener, task_names, tree_state)

BIG = str(2**63)  # one more than the largest int64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input the tables use, made once: a tiny world and its backbone, a finished job and its archive,
    CSV and MovieLens files with one bad value each. Returns (root, {name: path or value})."""
    from peterrec import Backbone, BackboneConfig
    from peterrec.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("inputs")
    spec, backbone = make_world(root, tasks=2, users=200, items=40)
    names = {"root": root, "world": spec.parent, "spec": spec, "bb": backbone}
    torch.manual_seed(0)
    save_checkpoint(root / "bb80", Backbone(BackboneConfig(vocab_size=81, channels=16, dilations=(1, 2), max_len=20)))
    names["bb80"] = root / "bb80"
    second = task_names(spec)[1]
    names["second"] = second
    shutil.copytree(spec.parent, root / "missing")
    (root / "missing" / "tasks" / f"{second}.parquet").unlink()
    names["missing"] = root / "missing"

    job = root / "job"
    assert cli.main(finetune_args(spec, backbone, job, "--in-process", steps=2)) == 0
    assert cli.main(["bundle", "export", str(job), "--out", str(root / "job.tar")]) == 0
    (root / "imp").mkdir()
    shutil.copy(root / "job.tar", root / "imp" / "job.tar")
    shutil.copytree(job / "bundle", root / "tampered")
    first = task_names(spec)[0]
    weights = root / "tampered" / "tasks" / first / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    names.update(job=job, job_tar=root / "job.tar", imp=root / "imp", tampered=root / "tampered", first=first)

    lines = [f"{7 * u + 1},{7 * u + 2},{7 * u + 3},,{100 + u % 3}" for u in range(6)]
    csv = {"ft": lines, "ft_noline1": [lines[0].replace(",,", ",")] + lines[1:]}
    csv["ft_big_src"] = lines[:2] + [f"15,{BIG},17,,102"] + lines[3:]
    csv["ft_big_tgt"] = lines[:1] + [lines[1].split(",,")[0] + f",,{BIG}"] + lines[2:]
    csv["pt_big"] = ["1,2,3", "4,5,6", "7,8", f"{BIG},9"]
    for name, text in csv.items():
        (root / f"{name}.csv").write_text("\n".join(text) + "\n")
        names[name] = root / f"{name}.csv"
    (root / "ft_bom.csv").write_bytes(b"\xef\xbb\xbf" + (root / "ft.csv").read_bytes())
    (root / "dense_bom.csv").write_bytes(b"\xef\xbb\xbf" + b"1,2,3\n4,5,6\n")
    names.update(ft_bom=root / "ft_bom.csv", dense_bom=root / "dense_bom.csv")
    names["seqs"] = spec.parent / "source" / "sequences.parquet"
    (root / "search").mkdir()
    (root / "search" / "space.toml").write_text('lr = { type = "loguniform", low = 1e-4, high = 1e-2 }\n')
    names["search"] = root / "search"

    names["ml"] = movielens_100k(root / "ml")
    for name, file, line, field, sep in (("ml_big_data", "u.data", 10, 1, "\t"), ("ml_big_user", "u.user", 5, 0, "|"),
                                         ("ml_big_item", "u.item", 5, 0, "|")):
        names[name] = movielens_100k(root / name)
        replace_line(names[name] / file, line, field, BIG, sep)
    (root / "ml_link").symlink_to(root / "ml")
    names["ml_link"] = root / "ml_link"
    for folder in ("adir", "adir.parquet"):
        (root / folder).mkdir()
        names[folder.replace(".", "_")] = root / folder
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("mine\n")
    names["existing"] = root / "existing"
    names.update(big=BIG, closed=free_port(), silent=silent_listener())
    return root, {k: str(v) for k, v in names.items()}


@pytest.fixture
def check(inputs, tmp_path, capfd, monkeypatch):
    """check(case): run a table's case with the inputs and a fresh output folder; returns its stderr."""
    root, names = inputs
    names = {**names, "out": str(tmp_path / "out"), "tmp": str(tmp_path)}
    return lambda case: run_bad(case, names, [root, tmp_path], capfd, monkeypatch)


IMPORT = [
    # 1: --out equal to, holding, or inside the input (movielens --force deleted the release it read)
    Bad("out-is-src", ["import", "movielens", "{ml}", "--out", "{ml}", "--force"], 2, ("--out is the input SRC",)),
    Bad("out-inside-src", ["import", "movielens", "{ml}", "--out", "{ml}/sub"], 2, ("lies inside the input SRC",)),
    Bad("out-holds-src", ["import", "movielens", "{ml}", "--out", "{root}", "--force"], 2, ("holds the input SRC",)),
    Bad("out-is-src-by-link", ["import", "movielens", "{ml}", "--out", "{ml_link}", "--force"], 2, ("is the input",)),
    Bad("data-dir-out-holds-its-data", ["import", "data-dir", "{world}", "--out", "{world}/tasks", "--force"], 2,
        ("holds the input", "the data of task")),
    Bad("csv-out-is-source-vocab", ["import", "peterrec-csv", "{ft}", "--out", "{world}", "--source-vocab", "{world}",
                                    "--force"], 2, ("--out is the input --source-vocab",)),
    # 2: ids at or above 2**63, at their own line and field
    Bad("id-2^63-source", ["import", "peterrec-csv", "{ft_big_src}", "--out", "{out}"], 2,
        ("ft_big_src.csv: line 3, field 'source[1]'", "does not fit a 64-bit integer")),
    Bad("id-2^63-target", ["import", "peterrec-csv", "{ft_big_tgt}", "--out", "{out}"], 2,
        ("ft_big_tgt.csv: line 2, field 'target[0]'", "64-bit")),
    Bad("id-2^63-target-classify", ["import", "peterrec-csv", "{ft_big_tgt}", "--out", "{out}", "--as-classify"], 2,
        ("line 2, field 'target[0]'", "64-bit")),
    Bad("id-2^63-pretraining", ["import", "peterrec-csv", "{pt_big}", "--out", "{out}"], 2,
        ("pt_big.csv: line 4, field 'source[0]'", "64-bit")),
    Bad("id-2^63-movielens-ratings", ["import", "movielens", "{ml_big_data}", "--out", "{out}"], 2,
        ("u.data: line 10, field 'item_id'", "64-bit")),
    Bad("id-2^63-movielens-users", ["import", "movielens", "{ml_big_user}", "--out", "{out}"], 2,
        ("u.user: line 5, field 'user_id'", "64-bit")),
    Bad("id-2^63-movielens-movies", ["import", "movielens", "{ml_big_item}", "--out", "{out}"], 2,
        ("u.item: line 5, field 'item_id'", "64-bit")),
    # 3, 5: kinds of path, wording and blame
    Bad("folder-as-csv", ["import", "peterrec-csv", "{adir}", "--out", "{out}"], 2, ("is a directory, expected a file",)),
    Bad("file-as-movielens", ["import", "movielens", "{ml}/u.data", "--out", "{out}"], 2,
        ("is a file, expected a directory",)),
    Bad("file-as-source-vocab", ["import", "peterrec-csv", "{ft}", "--out", "{out}", "--source-vocab", "{spec}"], 2,
        ("is a file, expected a directory",)),
    Bad("first-line-without-targets", ["import", "peterrec-csv", "{ft_noline1}", "--out", "{out}"], 2,
        ("ft_noline1.csv: line 1, field 'targets'", "5 of 6 lines have targets")),
    Bad("out-exists", ["import", "peterrec-csv", "{ft}", "--out", "{existing}"], 2,
        ("exists and is not empty; use --force to replace it",)),
    Bad("missing-task-data-names-its-task", ["import", "data-dir", "{missing}", "--out", "{out}"], 2,
        ("{second}.parquet: not found", "task[1] '{second}'")),
    Bad("missing-src", ["import", "peterrec-csv", "{tmp}/nope.csv", "--out", "{out}"], 2, ("nope.csv: not found",)),
]


@pytest.mark.parametrize("case", IMPORT, ids=str)
def test_import_bad_inputs(check, case):
    check(case)


SYNTH = [
    Bad("out-exists", ["synth", "--out", "{existing}", "--users", "20"], 2, ("use --force to replace it",)),
    Bad("items-beyond-int32", ["synth", "--out", "{out}", "--items", str(2**70)], 2, ("--items", "32-bit integers")),
    Bad("too-big-for-memory", ["synth", "--out", "{out}", "--items", "2000000000", "--users", "5"], 2,
        ("GiB of memory",)),
    Bad("negative-tasks", ["synth", "--out", "{out}", "--tasks", "-1"], 2, ("--tasks",)),
    Bad("no-users", ["synth", "--out", "{out}", "--users", "0"], 2, ("--users",)),
]


@pytest.mark.parametrize("case", SYNTH, ids=str)
def test_synth_bad_inputs(check, case):
    check(case)


PRETRAIN = [
    Bad("out-holds-storage", ["pretrain", "--data", "{world}", "--out", "{out}", "--workers", "2", "--storage",
                              "{out}/ray"], 2, ("holds the input --storage",)),
    Bad("out-holds-data", ["pretrain", "--data", "{spec}", "--out", "{world}", "--force"], 2,
        ("holds the input --data",)),
    Bad("out-is-data", ["pretrain", "--data", "{seqs}", "--out", "{seqs}", "--force"], 2, ("is the input --data",)),
    Bad("missing-data", ["pretrain", "--data", "{tmp}/nope.parquet", "--out", "{out}"], 2, ("not found",)),
    Bad("folder-as-parquet", ["pretrain", "--data", "{adir_parquet}", "--out", "{out}"], 2,
        ("is a directory, expected a file",)),
    Bad("out-exists", ["pretrain", "--data", "{world}", "--out", "{existing}"], 2, ("already exists",)),
    Bad("negative-sampled-softmax", ["pretrain", "--data", "{world}", "--out", "{out}", "--sampled-softmax", "-3"], 2,
        ("--sampled-softmax", "not >= 0")),
    Bad("valid-fraction-above-1", ["pretrain", "--data", "{world}", "--out", "{out}", "--valid-fraction", "1.5"], 2,
        ("--valid-fraction", "between 0 and 1")),
    Bad("valid-fraction-0", ["pretrain", "--data", "{world}", "--out", "{out}", "--valid-fraction", "0"], 2,
        ("--valid-fraction",)),
    Bad("dilations-not-numbers", ["pretrain", "--data", "{world}", "--out", "{out}", "--dilations", "a,b"], 2,
        ("--dilations", "'a' is not an integer")),
    Bad("address-closed-port", ["pretrain", "--data", "{world}", "--out", "{out}", "--workers", "2", "--address",
                                "127.0.0.1:{closed}"], 2, ("--address 127.0.0.1:{closed}", "nothing answers there")),
]


@pytest.mark.parametrize("case", PRETRAIN, ids=str)
def test_pretrain_bad_inputs(check, case):
    check(case)


def _finetune(*extra, backbone="{bb}", tasks="{world}", out="{out}") -> list[str]:
    return ["finetune", "--backbone", backbone, "--tasks", tasks, "--out", out, "--max-steps", "2", *extra]


FINETUNE = [
    Bad("out-is-backbone", _finetune("--force", out="{bb}"), 2, ("--out is the input --backbone",)),
    Bad("out-holds-spec", _finetune("--force", out="{world}"), 2, ("holds the input --tasks",)),
    Bad("out-inside-backbone", _finetune(out="{bb}/job"), 2, ("lies inside the input --backbone",)),
    Bad("file-as-backbone", _finetune("--in-process", backbone="{bb}/model.safetensors"), 2,
        ("model.safetensors: is a file", "the folder holding it: {bb}")),
    Bad("other-catalogue", _finetune("--in-process", backbone="{bb80}"), 2,
        ("vocab_size is 41", "pretrained on 80 items", "--vocab-prefix")),
    Bad("missing-task-data", _finetune("--in-process", tasks="{missing}"), 2, ("task[1] '{second}'", "not found")),
    Bad("finelast-blocks-0-blames-the-flag", _finetune("--in-process", "--mode", "finelast", "--finelast-blocks", "0"),
        2, ("--finelast-blocks",)),
    Bad("negative-eval-negatives", _finetune("--in-process", "--eval-negatives", "-1"), 2, ("--eval-negatives",)),
    Bad("missing-spec", _finetune(tasks="{tmp}/nope.toml"), 2, ("nope.toml: not found",)),
    Bad("out-exists", _finetune(out="{existing}"), 2, ("already exists",)),
    # 10: --address fails within seconds, before JOB_DIR is taken, naming the address and what was tried
    Bad("address-closed-port", _finetune("--address", "127.0.0.1:{closed}"), 2,
        ("--address 127.0.0.1:{closed}", "nothing answers there", "connection refused")),
    Bad("address-unknown-host", _finetune("--address", "no-such-host.invalid:6379"), 2,
        ("--address no-such-host.invalid:6379", "cannot resolve")),
    Bad("address-without-port", _finetune("--address", "localhost"), 2, ("expected HOST:PORT",)),
    Bad("address-not-ray", _finetune("--address", "127.0.0.1:{silent}"), 2, ("not a Ray cluster",)),
]


@pytest.mark.parametrize("case", FINETUNE, ids=str)
def test_finetune_bad_inputs(check, case):
    check(case)


def _tune(*extra, backbone="{bb}", tasks="{world}", out="{out}") -> list[str]:
    return ["tune", "--backbone", backbone, "--tasks", tasks, "--out", out, "--max-steps", "2", *extra]


TUNE = [
    Bad("out-holds-spec", _tune("--force", tasks="{spec}", out="{world}"), 2, ("holds the input --tasks",)),
    Bad("out-holds-space", _tune("--force", "--space", "{search}/space.toml", out="{search}"), 2,
        ("holds the input --space",)),
    Bad("file-as-backbone", _tune(backbone="{bb}/config.json"), 2, ("config.json: is a file", "folder holding it")),
    Bad("folder-as-space", _tune("--space", "{adir}"), 2, ("is a directory, expected a file",)),
    Bad("other-catalogue", _tune(backbone="{bb80}"), 2, ("--vocab-prefix",)),
    Bad("address-closed-port", _tune("--address", "127.0.0.1:{closed}"), 2, ("nothing answers there",)),
]


@pytest.mark.parametrize("case", TUNE, ids=str)
def test_tune_bad_inputs(check, case):
    check(case)


BUNDLE = [
    Bad("export-onto-its-archive", ["bundle", "export", "{job_tar}", "--out", "{job_tar}", "--force"], 2,
        ("--out is the input PATH",)),
    Bad("export-into-the-bundle", ["bundle", "export", "{job}", "--out", "{job}/bundle/b.tar"], 2,
        ("lies inside the input PATH",)),
    Bad("export-not-a-tar-name", ["bundle", "export", "{job}", "--out", "{tmp}/b.zip"], 2, (".tar, .tar.gz, .tgz",)),
    Bad("import-over-its-archive", ["bundle", "import", "{imp}/job.tar", "--out", "{imp}", "--force"], 2,
        ("holds the input FILE.tar",)),
    Bad("import-a-folder", ["bundle", "import", "{adir}", "--out", "{out}"], 2, ("is a directory, expected a file",)),
    Bad("import-missing", ["bundle", "import", "{tmp}/nope.tar", "--out", "{out}"], 2, ("nope.tar: not found",)),
    Bad("verify-file-as-backbone", ["bundle", "verify", "{job}", "--backbone", "{bb}/config.json"], 2,
        ("is a file", "folder holding it")),
    # 7: a tampered bundle is not shown as fine
    Bad("inspect-tampered", ["bundle", "inspect", "{tampered}"], 1,
        ("({first}) differ from the checksums in index.json", "bundle verify {tampered}")),
    Bad("inspect-tampered-json", ["bundle", "inspect", "{tampered}", "--json"], 1, ("differ from the checksums",)),
]


@pytest.mark.parametrize("case", BUNDLE, ids=str)
def test_bundle_bad_inputs(check, case):
    check(case)


def _predict(*extra, inp="{seqs}", out="{out}.parquet", backbone="{bb}") -> list[str]:
    return ["predict", "--backbone", backbone, "--bundle", "{job}", "--task", "{first}", "--input", inp,
            "--out", out, *extra]


PREDICT = [
    Bad("out-is-input", _predict(out="{seqs}"), 2, ("--out is the input --input",)),
    Bad("out-inside-backbone", _predict(out="{bb}/p.parquet"), 2, ("lies inside the input --backbone",)),
    Bad("file-as-backbone", _predict(backbone="{bb}/model.safetensors"), 2, ("is a file", "folder holding it")),
    Bad("folder-as-input", _predict(inp="{adir}"), 2, ("is a directory, expected a file (--input)",)),
    Bad("missing-items", _predict("--items", "{tmp}/items.parquet", inp="{dense_bom}"), 2, ("not found (--items)",)),
    Bad("unknown-output-format", _predict(out="{tmp}/p.txt"), 2, ("unknown output format",)),
]


@pytest.mark.parametrize("case", PREDICT, ids=str)
def test_predict_bad_inputs(check, case):
    check(case)


REPRODUCE = [
    Bad("out-inside-movielens", ["reproduce", "--movielens", "{ml}", "--out", "{ml}/run", "--quick"], 2,
        ("lies inside the input --movielens",)),
    Bad("out-is-movielens", ["reproduce", "--movielens", "{ml}", "--out", "{ml}", "--force", "--quick"], 2,
        ("is the input --movielens",)),
    Bad("file-as-movielens", ["reproduce", "--movielens", "{ml}/u.data", "--out", "{out}", "--quick"], 2,
        ("is a file, expected a directory",)),
    Bad("address-closed-port", ["reproduce", "--movielens", "{ml}", "--out", "{out}", "--quick", "--address",
                                "127.0.0.1:{closed}"], 2, ("nothing answers there",)),
]


@pytest.mark.parametrize("case", REPRODUCE, ids=str)
def test_reproduce_bad_inputs(check, case):
    check(case)


def _serve(*extra, backbone="{bb}") -> list[str]:
    return ["serve", "--backbone", backbone, "--bundle", "{job}", "--port", "{closed}", *extra]


SERVE = [
    Bad("file-as-backbone", _serve(backbone="{bb}/model.safetensors"), 2, ("is a file", "folder holding it")),
    Bad("folder-as-items", _serve("--items", "{adir}"), 2, ("is a directory, expected a file",)),
    Bad("address-closed-port", _serve("--address", "127.0.0.1:{closed}"), 2, ("nothing answers there",)),
]


@pytest.mark.parametrize("case", SERVE, ids=str)
def test_serve_bad_inputs(check, case):
    check(case)


NODE = [
    Bad("not-loopback", ["node", "--address", "10.0.0.5:6379"], 2, ("loopback", "ray start --address")),
    Bad("closed-port", ["node", "--address", "127.0.0.1:{closed}"], 2, ("nothing answers there",)),
    Bad("no-cpus", ["node", "--address", "127.0.0.1:6379", "--num-cpus", "0"], 2, ("--num-cpus",)),
]


@pytest.mark.parametrize("case", NODE, ids=str)
def test_node_bad_inputs(check, case):
    check(case)


# What must work: the inputs the issue found refused -----------------------------------------------------------


def test_a_byte_order_mark_is_accepted(inputs, tmp_path, capsys):
    """Spreadsheet programs start a CSV with a UTF-8 byte-order mark: the importer, predict's CSV reader and the
    spec reader take it (issue 16, defect 4)."""
    from tasks import load_spec

    import json

    from tasks import load_job

    root, names = inputs
    assert cli.main(["import", "peterrec-csv", names["ft_bom"], "--out", str(tmp_path / "bom")]) == 0
    plain = tmp_path / "plain"
    assert cli.main(["import", "peterrec-csv", names["ft"], "--out", str(plain)]) == 0
    (_, with_mark, tasks_a), (_, without, tasks_b) = load_job(tmp_path / "bom" / "tasks.toml"), load_job(plain / "tasks.toml")
    assert with_mark.items.tolist() == without.items.tolist()
    assert [t.labels.tolist() for t in tasks_a.values()] == [t.labels.tolist() for t in tasks_b.values()]
    out = tmp_path / "p.jsonl"
    assert cli.main(_predict_args(names, names["dense_bom"], out)) == 0
    assert [json.loads(line)["user_id"] for line in out.read_text().splitlines()] == ["u0", "u1"]
    spec = tmp_path / "bom" / "tasks.toml"
    spec.write_bytes(b"\xef\xbb\xbf" + spec.read_bytes())
    assert load_spec(spec).tasks[0].name == "ft_bom"


def _predict_args(names, inp, out) -> list[str]:
    return fill(_predict(inp=str(inp), out=str(out)), names)


def test_vocab_prefix_pairs_a_larger_backbone(inputs, tmp_path):
    """--vocab-prefix says the spec's items are the first of the backbone's catalogue (defect 6)."""
    root, names = inputs
    out = tmp_path / "job"
    assert cli.main(finetune_args(names["spec"], names["bb80"], out, "--in-process", "--vocab-prefix", steps=2)) == 0
    assert {r.name for r in (out / "bundle" / "tasks").iterdir()} == set(task_names(names["spec"]))


def test_token_mode_without_a_token_fails_in_seconds(inputs, tmp_path):
    """RAY_AUTH_MODE=token but no token anywhere: one line naming what to set, exit 2, nothing written (in a child
    process: Ray reads the mode once per process)."""
    root, names = inputs
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", HOME=str(home))
    before = tree_state(root)
    argv = fill(_finetune("--address", "127.0.0.1:{silent}"), {**names, "out": str(tmp_path / "out")})
    # The listener of this process answers with nothing: the token check comes before any Ray request.
    child = subprocess.run([sys.executable, "cli.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 2, child.stderr
    assert "RAY_AUTH_MODE=token but this process has no token" in child.stderr
    assert "Traceback" not in child.stdout + child.stderr
    assert not (tmp_path / "out").exists() and tree_state(root) == before


def test_an_unexpected_error_is_one_line_unless_debugging(monkeypatch, capfd):
    """The last guard of cli.main: an error no command foresaw prints one `error:` line and exits 1; --debug or
    PETERREC_DEBUG=1 shows the traceback."""
    import commands.synth

    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(commands.synth, "run", broken)
    assert cli.main(["synth", "--out", "x"]) == 1
    err = capfd.readouterr().err
    assert err.startswith("error: RuntimeError: something broke (an unexpected error; run again with --debug")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(RuntimeError):
        cli.main(["synth", "--out", "x", "--debug"])
    monkeypatch.setenv("PETERREC_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "synth", "--out", "x"])
    with pytest.raises(RuntimeError):
        cli.main(["synth", "--out", "x"])
