"""`peterrec serve` end to end: the real command in a subprocess (its embedded Ray: 2 CPUs, a small object
store, two replicas), real HTTP calls on loopback. Answers must equal `predict`'s; reload adds a task while
requests are in flight; foreign and corrupt entries are refused while the old version keeps serving; every
bad request gets a 4xx and the server keeps answering; every listener is on loopback; Ctrl-C stops it."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

import cli
from orchestrator.serve.metrics import merge
from orchestrator.serve.request import MAX_BODY_BYTES, MAX_ITEMS, MAX_REQUESTS
from peterrec import Backbone, BackboneConfig
from peterrec.bundle import backbone_fingerprint, write_task
from peterrec.checkpoint import save_checkpoint
from peterrec.finetune import FinetuneSettings
from tasks import Sequences, write_sequences
from tasks.vocab import write_item_vocab
from support import random_task

# Ray Serve 2.60's own pydantic models warn when the command imports it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.serve")

REPO = Path(__file__).resolve().parents[1]
CONFIG = BackboneConfig(vocab_size=30, channels=8, dilations=(1, 2), max_len=6)
LABELS = ["F", "M", "X"]
TARGETS = [f"t{i}" for i in range(9)]
USERS = ["u0", "u1", "u2", "u3"]
SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 9, 12, 13, 2], [29], [5, 6, 7, 8]]
TOKEN = "s3cret"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def add_task(bundle, backbone, name, kind, mode, seed, **extra):
    size = 3 if kind == "classify" else len(TARGETS)
    spec = SimpleNamespace(name=name, kind=kind, metric="accuracy" if kind == "classify" else "mrr@5",
                           num_outputs=size, labels=LABELS if kind == "classify" else None)
    model = random_task(backbone, kind, size, mode, seed)
    write_task(bundle, model, spec, FinetuneSettings(mode=mode), {}, backbone_fingerprint(backbone), CONFIG, **extra)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    backbone = Backbone(CONFIG).eval()
    add_task(root / "bundle", backbone, "gender", "classify", "peterrec", seed=1)
    add_task(root / "bundle", backbone, "cold", "coldrec", "finelast", seed=2, target_raw_ids=TARGETS)
    save_checkpoint(root / "ckpt", backbone)
    write_sequences(root / "sequences.parquet", Sequences.from_lists(USERS, SEQUENCES, CONFIG.vocab_size))
    write_item_vocab(root / "items.parquet", [f"r{k}" for k in range(1, CONFIG.vocab_size)])  # "r<k>" is id k
    (root / "raw.csv").write_text("".join(",".join(f"r{i}" for i in s) + "\n" for s in SEQUENCES))
    return SimpleNamespace(root=root, backbone=backbone, bundle=root / "bundle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(job):
    port = free_port()
    log = job.root / "serve.log"
    env = {**os.environ, "PETERREC_SERVE_TOKEN": TOKEN, "RAY_metrics_report_interval_ms": "1000"}
    command = [sys.executable, "cli.py", "serve", "--backbone", str(job.root / "ckpt"), "--bundle", str(job.bundle),
               "--sequences", str(job.root / "sequences.parquet"), "--items", str(job.root / "items.parquet"),
               "--port", str(port), "--replicas", "2", "--cpus-per-replica", "0.5", "--max-batch-size", "64",
               "--num-cpus", "2", "--object-store-mb", "100", "--ui", "plain"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    family = []
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine can take minutes to start Ray
        while "ready: " not in log.read_text() or call(url, "GET", "/healthz", timeout=5)[0] != 200:
            assert process.poll() is None, f"serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve did not come up:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        family = psutil.Process(process.pid).children(recursive=True)
        yield SimpleNamespace(url=url, port=port, process=process, log=log, family=family)
    finally:
        if process.poll() is None:
            family += psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for child in family:  # Ray's agents take up to a minute to notice; end them now
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def call(url: str, method: str, path: str, body=None, token: str | None = None, timeout: float = 60):
    """(status, parsed JSON or text); status 0 when nothing answers."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def predict_http(server, body):
    status, answer = call(server.url, "POST", "/v1/predict", body)
    assert status == 200, answer
    return answer


def predict_cli(job, tmp_path, task, input_file, *extra):
    out = tmp_path / f"{task}-{input_file.stem}.jsonl"
    assert cli.main(["predict", "--backbone", str(job.root / "ckpt"), "--bundle", str(job.bundle), "--task", task,
                     "--input", str(input_file), "--out", str(out), *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def same_answer(http: dict, offline: dict) -> None:
    """The served answer carries the offline output's columns, with the same values. Scores may differ in
    their last bits: a row's float result depends on the batch it is computed in (BLAS blocking), as
    `predict`'s own output does on --batch-size."""
    exact = [c for c in ("prediction", "prediction_label", "top_items", "top_raw_ids") if c in offline]
    close = [c for c in ("probabilities", "top_scores") if c in offline]
    assert exact and close
    assert {c: http.get(c) for c in exact} == {c: offline[c] for c in exact}
    for c in close:
        assert http[c] == pytest.approx(offline[c], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# Answers


def test_answers_equal_predict_in_one_mixed_batch(job, server, tmp_path):
    sequences = job.root / "sequences.parquet"
    gender = predict_cli(job, tmp_path, "gender", sequences)
    cold = predict_cli(job, tmp_path, "cold", sequences, "--top-k", "4")
    body = [item for user in USERS for item in ({"task": "gender", "user_id": user},
                                                {"task": "cold", "user_id": user, "top_k": 4})]
    answers = predict_http(server, body)
    for i, user in enumerate(USERS):
        assert answers[2 * i]["task"] == "gender" and answers[2 * i + 1]["task"] == "cold"
        same_answer(answers[2 * i], gender[i])
        same_answer(answers[2 * i + 1], cold[i])
        assert len(answers[2 * i + 1]["top_items"]) == 4


def test_raw_and_dense_item_ids_answer_as_predict_does(job, server, tmp_path):
    offline = predict_cli(job, tmp_path, "cold", job.root / "raw.csv", "--items", str(job.root / "items.parquet"))
    for sequence, want in zip(SEQUENCES, offline):
        raw = predict_http(server, {"task": "cold", "items": [f"r{i}" for i in sequence]})
        dense = predict_http(server, {"task": "cold", "items": sequence})
        same_answer(raw, want)
        same_answer(dense, want)
        assert len(raw["top_items"]) == min(10, len(TARGETS))  # predict's default --top-k, at most every target


def test_tasks_health_and_metrics(job, server):
    status, health = call(server.url, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["tasks"] == 2
    status, listing = call(server.url, "GET", "/v1/tasks")
    fingerprint = backbone_fingerprint(job.backbone)
    assert status == 200 and listing["backbone"]["fingerprint"] == fingerprint
    tasks = {t["name"]: t for t in listing["tasks"]}
    assert tasks["gender"]["kind"] == "classify" and tasks["gender"]["labels"] == LABELS
    assert tasks["cold"]["kind"] == "coldrec" and tasks["cold"]["metric"] == "mrr@5"
    assert all(t["params"]["trained_params"] > 0 and t["backbone_fingerprint"] == fingerprint for t in tasks.values())
    predict_http(server, [{"task": "gender", "items": [1, 2]}, {"task": "cold", "items": [3]}])
    deadline = time.monotonic() + 30  # Ray exports metrics every RAY_metrics_report_interval_ms
    while True:
        status, text = call(server.url, "GET", "/metrics")
        assert status == 200
        if all(f in text for f in ("ray_peterrec_serve_rows", "ray_peterrec_serve_batch_tasks_bucket",
                                   "ray_serve_num_http_requests", "ray_serve_actual_batch_size")):
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(1)
    types = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))


def test_merge_keeps_one_header_per_family_across_nodes():
    node = ("# HELP ray_serve_x X.\n# TYPE ray_serve_x counter\nray_serve_x{n=\"%s\"} 1\n"
            "# HELP ray_other Y.\n# TYPE ray_other gauge\nray_other 2\n")
    text = merge([node % "a", node % "b"])
    assert text.splitlines() == ["# HELP ray_serve_x X.", "# TYPE ray_serve_x counter", 'ray_serve_x{n="a"} 1',
                                 'ray_serve_x{n="b"} 1']


# ---------------------------------------------------------------------------------------------------
# Bad requests: each gets a 4xx naming the field, and a good request right after still works


BAD = {
    # case: (body, status, field the first problem names)
    "not_json": (b'{"task": ', 400, "body"),
    "not_an_object_or_list": (b'"gender"', 400, "body"),
    "empty_list": ([], 422, "body"),
    "too_many_requests": ([{"task": "gender", "items": [1]}] * (MAX_REQUESTS + 1), 413, "body"),
    "oversized_body": (b"[" + b" " * MAX_BODY_BYTES + b"]", 413, "body"),
    "missing_task": ({"items": [1]}, 422, "task"),
    "task_not_a_string": ({"task": 3, "items": [1]}, 422, "task"),
    "unknown_task": ({"task": "age", "items": [1]}, 404, "task"),
    "missing_items_and_user": ({"task": "gender"}, 422, "items"),
    "items_and_user": ({"task": "gender", "items": [1], "user_id": "u0"}, 422, "items"),
    "empty_items": ({"task": "gender", "items": []}, 422, "items"),
    "items_not_a_list": ({"task": "gender", "items": "1,2"}, 422, "items"),
    "oversized_items": ({"task": "gender", "items": [1] * (MAX_ITEMS + 1)}, 413, "items"),
    "id_outside_vocab": ({"task": "gender", "items": [1, CONFIG.vocab_size]}, 422, "items[1]"),
    "padding_id": ({"task": "gender", "items": [0, 1]}, 422, "items[0]"),
    "unknown_raw_id": ({"task": "gender", "items": ["r1", "zz"]}, 422, "items[1]"),
    "float_id": ({"task": "gender", "items": [1.5]}, 422, "items[0]"),
    "bool_id": ({"task": "gender", "items": [True]}, 422, "items[0]"),
    "unknown_user": ({"task": "gender", "user_id": "nobody"}, 404, "user_id"),
    "user_not_a_string": ({"task": "gender", "user_id": 7}, 422, "user_id"),
    "top_k_on_classify": ({"task": "gender", "items": [1], "top_k": 3}, 422, "top_k"),
    "top_k_zero": ({"task": "cold", "items": [1], "top_k": 0}, 422, "top_k"),
    "top_k_beyond_targets": ({"task": "cold", "items": [1], "top_k": len(TARGETS) + 1}, 422, "top_k"),
    "top_k_a_string": ({"task": "cold", "items": [1], "top_k": "3"}, 422, "top_k"),
    "unknown_field": ({"task": "gender", "items": [1], "user": "u0"}, 422, "user"),
    "one_bad_row_in_a_list": ([{"task": "gender", "items": [1]}, {"task": "cold", "items": [99]}], 422,
                              "[1].items[0]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_4xx_naming_the_field(server, case):
    body, status, field = BAD[case]
    got, error = call(server.url, "POST", "/v1/predict", body)
    assert got == status, error
    assert error["problems"][0]["field"] == field and error["problems"][0]["expected"]
    assert field in error["error"]
    answer = predict_http(server, {"task": "gender", "items": [1, 2, 3]})
    assert answer["task"] == "gender" and len(answer["probabilities"]) == 3


def test_wrong_method_and_path_are_4xx(server):
    assert call(server.url, "GET", "/v1/predict")[0] == 405
    assert call(server.url, "POST", "/v2/predict", {})[0] == 404


# ---------------------------------------------------------------------------------------------------
# Reload


def test_admin_reload_needs_the_token(server):
    assert call(server.url, "POST", "/v1/admin/reload")[0] == 401
    status, error = call(server.url, "POST", "/v1/admin/reload", token="wrong")
    assert status == 401 and error["problems"][0]["field"] == "Authorization"


class Traffic:
    """Requests for the served tasks in a loop on another thread, while a test changes the bundle."""

    def __init__(self, server):
        self.server, self.statuses, self.stop = server, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            body = [{"task": "gender", "user_id": "u1"}, {"task": "cold", "items": [4, 5]}]
            self.statuses.append(call(self.server.url, "POST", "/v1/predict", body)[0])

    def __enter__(self):
        self.thread.start()
        while not self.statuses:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_reload_adds_a_task_while_serving(job, server, tmp_path):
    with Traffic(server) as traffic:
        add_task(job.bundle, job.backbone, "age", "classify", "peterrec", seed=5)
        status, report = call(server.url, "POST", "/v1/admin/reload", token=TOKEN)
        answers = predict_http(server, [{"task": "age", "user_id": u} for u in USERS])  # any replica has it
    assert status == 200 and report["added"] == ["age"] and not report["refused"], report
    assert report["replicas"]["serving_it"] == report["replicas"]["alive"] == 2
    assert traffic.statuses and set(traffic.statuses) == {200}  # nothing dropped during the reload
    for answer, want in zip(answers, predict_cli(job, tmp_path, "age", job.root / "sequences.parquet")):
        same_answer(answer, want)


def corrupt(job, tmp_path) -> tuple[str, str]:
    """A new version of gender whose model file no longer matches index.json."""
    add_task(job.bundle, job.backbone, "gender", "classify", "peterrec", seed=11)
    model = job.bundle / "tasks/gender/adapter_model.safetensors"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0x10
    model.write_bytes(bytes(data))
    return str(model), "checksum"


def foreign(job, tmp_path) -> tuple[str, str]:
    """gender replaced by a task of another backbone, its files and the index consistent with each other."""
    other = Backbone(CONFIG).eval()  # a different random init: another fingerprint
    add_task(tmp_path / "other", other, "gender", "classify", "peterrec", seed=1)
    shutil.rmtree(job.bundle / "tasks/gender")
    shutil.copytree(tmp_path / "other/tasks/gender", job.bundle / "tasks/gender")
    index = json.loads((job.bundle / "index.json").read_text())
    theirs = json.loads((tmp_path / "other/index.json").read_text())["tasks"][0]
    next(t for t in index["tasks"] if t["name"] == "gender")["files"] = theirs["files"]
    (job.bundle / "index.json").write_text(json.dumps(index))
    return str(job.bundle / "tasks/gender/adapter_config.json"), "another backbone"


@pytest.mark.parametrize("breaker", [corrupt, foreign], ids=["corrupt", "foreign"])
def test_bad_entry_is_refused_and_the_old_version_keeps_serving(job, server, tmp_path, breaker):
    body = [{"task": "gender", "user_id": u} for u in USERS]
    before = predict_http(server, body)
    saved = tmp_path / "saved"
    shutil.copytree(job.bundle, saved)
    path, phrase = breaker(job, tmp_path)
    try:
        with Traffic(server) as traffic:
            status, report = call(server.url, "POST", "/v1/admin/reload", token=TOKEN)
            after = predict_http(server, body)
        assert status == 200 and set(report["refused"]) == {"gender"}, report
        assert path in report["refused"]["gender"] and phrase in report["refused"]["gender"]
        assert after == before and set(traffic.statuses) == {200}
        assert call(server.url, "GET", "/v1/status")[1]["refused"].keys() == {"gender"}
        deadline = time.monotonic() + 10  # the catalog's log line reaches the command's output through Ray
        while "refused task 'gender'" not in server.log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        shutil.rmtree(job.bundle)
        shutil.copytree(saved, job.bundle)
    status, report = call(server.url, "POST", "/v1/admin/reload", token=TOKEN)
    assert status == 200 and not (report["added"] or report["replaced"] or report["refused"]), report
    assert call(server.url, "GET", "/v1/status")[1]["refused"] == {}


# ---------------------------------------------------------------------------------------------------
# The process


def _other_backbone(job, tmp_path) -> list[str]:
    return ["--backbone", str(save_checkpoint(tmp_path / "other", Backbone(CONFIG)))]


def _busy_port(job, tmp_path) -> list[str]:
    job.holder = socket.socket()
    job.holder.bind(("127.0.0.1", 0))
    job.holder.listen()
    return ["--port", str(job.holder.getsockname()[1])]


USER_ERRORS = {
    # case: (extra arguments (later ones win), phrases of the error), each found before Ray starts
    "foreign_backbone": (_other_backbone, ["index.json", "trained on backbone"]),
    "missing_bundle": (lambda job, tmp: ["--bundle", str(tmp / "nothing")], ["nothing", "not found"]),
    "port_in_use": (_busy_port, ["cannot listen on 127.0.0.1"]),
    "too_many_replicas": (lambda job, tmp: ["--replicas", "3", "--num-cpus", "2"], ["--replicas 3", "has 2 CPUs"]),
    "cuda_without_gpus": (lambda job, tmp: ["--device", "cuda"], ["--gpus-per-replica"]),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_exit_2_before_anything_starts(job, tmp_path, case, capsys):
    extra, phrases = USER_ERRORS[case]
    try:
        code = cli.main(["serve", "--backbone", str(job.root / "ckpt"), "--bundle", str(job.bundle),
                         "--port", str(free_port()), *extra(job, tmp_path)])
    finally:
        if getattr(job, "holder", None):
            job.holder.close()
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: "), err
    for phrase in phrases:
        assert phrase in err


def listeners(processes) -> set[tuple[str, int]]:
    found = set()
    for process in processes:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue  # a worker that exited meanwhile
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def test_every_listener_is_on_loopback(server):
    processes = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    found = listeners(processes)
    assert ("127.0.0.1", server.port) in found
    assert {ip for ip, _ in found} <= LOOPBACK, sorted(found)


def test_ctrl_c_stops_serve_cleanly(server):
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(90) == 0, server.log.read_text()[-3000:]
    assert "stopped" in server.log.read_text()
    assert call(server.url, "GET", "/healthz")[0] == 0
    assert not [p for p in server.family if "Serve" in name_of(p) or "TaskCatalog" in name_of(p)]


def name_of(process) -> str:
    """The process title of a live process ("ray::ServeReplica:..."), "" for one that has exited."""
    try:
        return "" if process.status() == psutil.STATUS_ZOMBIE else " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""
