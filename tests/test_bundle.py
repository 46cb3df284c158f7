"""Bundles: exact round trips for every mode, mixed-task batches, archives, and every kind of bad input.

Tiny random models (8 channels, 2 blocks) with every task tensor randomised, so a tensor that came back
from anywhere but the file would change the predictions. No training.
"""

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

import cli
from peterrec import Backbone, BackboneConfig, PatchConfig, build_task_model
from peterrec.bundle import reader as bundle_module  # where backbone_fingerprint hashes
from peterrec.bundle import BundleError, backbone_fingerprint, open_bundle, write_task
from peterrec.checkpoint import save_checkpoint
from peterrec.finetune import FinetuneSettings
from peterrec.modes import MODE_NAMES, PATCHED_MODES
from peterrec.predict import MultiTaskPredictor

CONFIG = BackboneConfig(vocab_size=40, channels=8, dilations=(1, 2), max_len=8)
# (mode, insertion): every fine-tuning mode, both patch insertions
MODE_CASES = [(m, "serial") for m in MODE_NAMES] + [(m, "parallel") for m in PATCHED_MODES]  # from the registry
KINDS = {"classify": 3, "coldrec": 11}


def make_backbone(seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(CONFIG).eval()


@pytest.fixture(scope="module")
def backbone():
    return make_backbone()


def make_task(backbone, name, kind, mode="peterrec", insertion="serial", seed=1):
    settings = FinetuneSettings(mode=mode, patch=PatchConfig(insertion=insertion))
    model = build_task_model(backbone, kind, KINDS[kind], mode, settings.patch, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.task_state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    spec = SimpleNamespace(name=name, kind=kind, metric="accuracy" if kind == "classify" else "mrr@5",
                           num_outputs=KINDS[kind], labels=["a", "b", "c"] if kind == "classify" else None)
    return model.eval(), spec, settings


def add_task(root, backbone, name, kind, mode="peterrec", insertion="serial", seed=1, **kwargs):
    model, spec, settings = make_task(backbone, name, kind, mode, insertion, seed)
    metrics = {"metric": spec.metric, "value": 0.5, "test": {spec.metric: 0.5}, "valid": {spec.metric: float("nan")}}
    write_task(root, model, spec, settings, metrics, backbone_fingerprint(backbone), backbone.config, **kwargs)
    return model


def sample_items(n=6, seed=3):
    items = torch.randint(1, CONFIG.vocab_size, (n, CONFIG.max_len), generator=torch.Generator().manual_seed(seed))
    items[0, :5] = 0  # a short, left-padded user
    return items


@pytest.fixture
def small_bundle(tmp_path, backbone):
    """A bundle of two tasks, its backbone checkpoint, and a sequences table to predict on."""
    root = tmp_path / "job" / "bundle"
    add_task(root, backbone, "gender", "classify")
    add_task(root, backbone, "cold", "coldrec", mode="finecls", seed=2)
    ckpt = save_checkpoint(tmp_path / "ckpt", backbone)
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = sample_items(3).tolist()
    pq.write_table(pa.table({"user_id": ["u0", "u1", "u2"], "items": [[i for i in row if i] for row in items]}),
                   tmp_path / "sequences.parquet")
    return SimpleNamespace(root=root, job=tmp_path / "job", ckpt=ckpt, sequences=tmp_path / "sequences.parquet")


@torch.no_grad()
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("mode,insertion", MODE_CASES)
def test_round_trip_is_exact(tmp_path, backbone, mode, insertion, kind):
    trained = add_task(tmp_path, backbone, "t", kind, mode, insertion)
    loaded = open_bundle(tmp_path).load_task("t", backbone)
    items = sample_items()
    assert torch.equal(loaded.scores(items), trained.scores(items))
    for name, tensor in trained.task_state_dict().items():
        assert torch.equal(loaded.task_state_dict()[name], tensor), name
    if mode in ("peterrec", "finecls"):
        assert loaded.backbone is backbone  # shared, never copied
    assert open_bundle(tmp_path).verify(backbone) == []


def test_files_open_with_safetensors_alone(small_bundle):
    index = json.loads((small_bundle.root / "index.json").read_text())
    assert [t["name"] for t in index["tasks"]] == ["gender", "cold"]
    for entry in index["tasks"]:
        folder = small_bundle.root / entry["path"]
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["task"]["name"] == entry["name"] and config["mode"] == entry["mode"]
        assert config["params"]["trained_params"] > 0 and "package_version" in config
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            assert sorted(f.keys()) == sorted(config["tensors"])
            for name in f.keys():
                assert list(f.get_tensor(name).shape) == config["tensors"][name]["shape"]
        for file, digest in entry["files"].items():
            assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest
    # Readable like any other output, although written through owner-only temporary files.
    assert (small_bundle.root / "index.json").stat().st_mode & 0o777 == 0o644
    assert (small_bundle.root / "tasks/gender").stat().st_mode & 0o777 == 0o755
    gender = json.loads((small_bundle.root / "tasks/gender/adapter_config.json").read_text())
    assert any(n.startswith("head.") for n in gender["tensors"]) and any(".ln2." in n for n in gender["tensors"])
    assert gender["metrics"]["valid"]["accuracy"] is None  # NaN is stored as null: strict JSON


@torch.no_grad()
def test_mixed_task_batch_equals_per_task(tmp_path, backbone):
    add_task(tmp_path, backbone, "a", "classify")
    add_task(tmp_path, backbone, "b", "coldrec", mode="finelast", seed=2, target_raw_ids=[f"x{i}" for i in range(11)])
    add_task(tmp_path, backbone, "c", "classify", mode="peterzero", seed=3)
    predictor = MultiTaskPredictor(backbone, open_bundle(tmp_path), top_k=4)
    assert predictor.models["a"].backbone is backbone
    items = sample_items(7)
    tasks = ["a", "b", "c", "a", "b", "b", "c"]
    rows = predictor.predict(items, tasks)
    for name in "abc":
        picked = [i for i, t in enumerate(tasks) if t == name]
        alone = predictor.predict_task(name, items[picked])
        for j, i in enumerate(picked):
            assert rows[i].task == name
            want = alone.row(j)
            if rows[i].kind == "classify":
                assert torch.equal(rows[i].probabilities, want.probabilities)
                assert rows[i].probabilities.sum().item() == pytest.approx(1.0)
            else:
                assert torch.equal(rows[i].items, want.items) and torch.equal(rows[i].scores, want.scores)
                assert rows[i].names == [f"x{k}" for k in rows[i].items.tolist()]
    assert rows[0].names == ["a", "b", "c"]


def test_rewrite_replaces_one_task_and_leaves_the_others_untouched(tmp_path, backbone):
    add_task(tmp_path, backbone, "a", "classify")
    add_task(tmp_path, backbone, "b", "coldrec")
    snapshot = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "tasks" / "a").iterdir()}
    retried = add_task(tmp_path, backbone, "b", "coldrec", seed=9)  # a retry of b with other weights
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp_path / "tasks" / "a").iterdir()} == snapshot
    bundle = open_bundle(tmp_path)
    assert bundle.names == ["a", "b"]
    items = sample_items()
    with torch.no_grad():
        assert torch.equal(bundle.load_task("b", backbone).scores(items), retried.scores(items))
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == ["a", "b"]  # no leftovers


def test_patch_config_is_read_off_the_model(tmp_path, backbone):
    """A serial and a parallel patch have the same shapes; the bundle must record the one trained."""
    model, spec, _ = make_task(backbone, "t", "classify", insertion="parallel")
    spec.overrides = {"finelast_blocks": 1}
    write_task(tmp_path, model, spec, FinetuneSettings(), {}, backbone_fingerprint(backbone), backbone.config)
    loaded = open_bundle(tmp_path).load_task("t", backbone)
    assert loaded.patches.config.insertion == "parallel"
    items = sample_items()
    with torch.no_grad():
        assert torch.equal(loaded.scores(items), model.scores(items))


def test_bundle_of_another_backbone_refuses_new_tasks(tmp_path, backbone):
    add_task(tmp_path, backbone, "a", "classify")
    with pytest.raises(BundleError, match="index.json"):
        add_task(tmp_path, make_backbone(seed=5), "b", "classify")
    assert open_bundle(tmp_path).names == ["a"]


def test_a_frozen_model_is_refused_rather_than_saved_without_its_head(tmp_path, backbone):
    model, spec, settings = make_task(backbone, "a", "classify")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="missing"):
        write_task(tmp_path, model, spec, settings, {}, backbone_fingerprint(backbone), backbone.config)
    assert not (tmp_path / "index.json").exists()


def test_fingerprint_is_cached_per_backbone_until_its_weights_change(monkeypatch):
    backbone = make_backbone()
    calls = []
    real = bundle_module.fingerprint
    monkeypatch.setattr(bundle_module, "fingerprint", lambda b: calls.append(1) or real(b))
    first = backbone_fingerprint(backbone)
    assert backbone_fingerprint(backbone) == first and len(calls) == 1
    with torch.no_grad():
        backbone.blocks[0].ln1.weight.add_(1.0)
    assert backbone_fingerprint(backbone) != first and len(calls) == 2


def test_job_dir_and_tar_archives(small_bundle, tmp_path, backbone):
    archive = tmp_path / "out" / "b.tar"
    assert cli.main(["bundle", "export", str(small_bundle.job), "--out", str(archive)]) == 0
    first = archive.read_bytes()
    assert cli.main(["bundle", "export", str(small_bundle.root), "--out", str(archive), "--force"]) == 0
    assert archive.read_bytes() == first  # packing is deterministic
    assert cli.main(["bundle", "import", str(archive), "--out", str(tmp_path / "imported")]) == 0
    items = sample_items()
    with torch.no_grad():
        want = open_bundle(small_bundle.job).load_task("gender", backbone).scores(items)
        for source in (archive, tmp_path / "imported"):
            assert torch.equal(open_bundle(source).load_task("gender", backbone).scores(items), want)
    assert cli.main(["bundle", "verify", str(archive), "--backbone", str(small_bundle.ckpt)]) == 0


def test_archive_with_foreign_members_is_refused(tmp_path, capsys):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert cli.main(["bundle", "import", str(archive), "--out", str(tmp_path / "x")]) == 2
    assert "evil.tar" in capsys.readouterr().err
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "x").exists()


def test_inspect_lists_tasks_and_totals(small_bundle, capsys):
    assert cli.main(["bundle", "inspect", str(small_bundle.job), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = {r["task"]: r for r in info["tasks"]}
    assert set(rows) == {"gender", "cold"} and rows["cold"]["mode"] == "finecls"
    assert 0 < rows["cold"]["ratio_vs_fineall"] < rows["gender"]["ratio_vs_fineall"] < 100
    assert rows["gender"]["value"] == 0.5 and rows["gender"]["bytes"] > 0
    assert info["totals"]["shared_params"] < info["totals"]["full_copies_params"]
    assert cli.main(["bundle", "inspect", str(small_bundle.root)]) == 0
    table = capsys.readouterr().out
    assert "gender" in table and "finecls" in table and "full copies" in table


# ---------------------------------------------------------------------------------------------------
# Bad input: each case breaks a good bundle one way; the API, `bundle verify` and `predict` must all
# refuse it with an error naming the file, and nothing is loaded or written.


class Exploit:
    """Unpickling this would create a marker file: proof that loading never unpickles."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _reindex(root: Path, name: str, file: str) -> None:
    """Make index.json's checksum agree with a replaced file, so the deeper check is what fails."""
    index = json.loads((root / "index.json").read_text())
    entry = next(t for t in index["tasks"] if t["name"] == name)
    entry["files"][file] = hashlib.sha256((root / entry["path"] / file).read_bytes()).hexdigest()
    (root / "index.json").write_text(json.dumps(index))


def _edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def break_bundle(case: str, root: Path, tmp_path: Path) -> tuple[str, str]:
    """Apply one corruption; returns (the file the error must name, a phrase it must contain)."""
    model = root / "tasks/gender/adapter_model.safetensors"
    if case == "truncated":
        model.write_bytes(model.read_bytes()[:-40])
        return str(model), "checksum"
    if case == "bit_flip":
        data = bytearray(model.read_bytes())
        data[-5] ^= 0x10
        model.write_bytes(bytes(data))
        return str(model), "checksum"
    if case == "truncated_reindexed":
        model.write_bytes(model.read_bytes()[:-40])
        _reindex(root, "gender", model.name)
        return str(model), "safetensors"
    if case == "missing_task_dir":
        shutil.rmtree(root / "tasks/gender")
        return str(root / "tasks/gender"), "missing"
    if case == "duplicate_task":
        _edit_json(root / "index.json", lambda d: d["tasks"].append(dict(d["tasks"][0])))
        return str(root / "index.json"), "listed twice"
    if case == "newer_index":
        _edit_json(root / "index.json", lambda d: d.update(version=2))
        return str(root / "index.json"), "newer"
    if case == "newer_adapter_config":
        _edit_json(root / "tasks/gender/adapter_config.json", lambda d: d.update(version=2))
        _reindex(root, "gender", "adapter_config.json")
        return str(root / "tasks/gender/adapter_config.json"), "newer"
    if case in ("pickle", "pickle_reindexed"):
        Exploit.marker = tmp_path / "pwned"
        model.write_bytes(pickle.dumps({"head.linear.weight": Exploit()}))
        if case == "pickle_reindexed":
            _reindex(root, "gender", model.name)
            return str(model), "pickle"
        return str(model), "checksum"
    raise AssertionError(case)


BAD_CASES = ["truncated", "bit_flip", "truncated_reindexed", "missing_task_dir", "duplicate_task", "newer_index",
             "newer_adapter_config", "pickle", "pickle_reindexed"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_bundle_is_refused(case, small_bundle, tmp_path, backbone, capsys):
    path, phrase = break_bundle(case, small_bundle.root, tmp_path)
    with pytest.raises(BundleError) as error:
        MultiTaskPredictor(backbone, open_bundle(small_bundle.root))
    assert path in str(error.value) and phrase in str(error.value)
    assert cli.main(["bundle", "verify", str(small_bundle.job), "--backbone", str(small_bundle.ckpt)]) != 0
    assert path in capsys.readouterr().err
    out = tmp_path / "pred.jsonl"
    assert cli.main(["predict", "--backbone", str(small_bundle.ckpt), "--bundle", str(small_bundle.job),
                     "--task", "gender", "--input", str(small_bundle.sequences), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and path in err
    assert not out.exists() and not (tmp_path / "pwned").exists()


def test_backbone_with_another_fingerprint_is_refused(small_bundle, tmp_path, capsys):
    other = make_backbone(seed=7)
    with pytest.raises(BundleError, match="fingerprint") as error:
        open_bundle(small_bundle.root).load_task("gender", other)
    assert str(small_bundle.root / "index.json") in str(error.value)
    other_ckpt = save_checkpoint(tmp_path / "other", other)
    assert cli.main(["bundle", "verify", str(small_bundle.root), "--backbone", str(other_ckpt)]) == 1
    assert str(other_ckpt) in capsys.readouterr().err
    out = tmp_path / "pred.parquet"
    assert cli.main(["predict", "--backbone", str(other_ckpt), "--bundle", str(small_bundle.root), "--task",
                     "gender", "--input", str(small_bundle.sequences), "--out", str(out)]) == 2
    assert "index.json" in capsys.readouterr().err and not out.exists()


def test_verify_reports_ok(small_bundle, capsys):
    assert cli.main(["bundle", "verify", str(small_bundle.job), "--backbone", str(small_bundle.ckpt)]) == 0
    assert "ok, 2 task(s)" in capsys.readouterr().out


def test_not_a_bundle(tmp_path, capsys):
    assert cli.main(["bundle", "inspect", str(tmp_path)]) == 2
    assert str(tmp_path / "index.json") in capsys.readouterr().err
    os.makedirs(tmp_path / "job" / "bundle")
    with pytest.raises(BundleError, match="bundle/index.json"):
        open_bundle(tmp_path / "job")
