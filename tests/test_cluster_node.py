"""A multi-node Ray cluster on one machine, loopback only, as docs/CLUSTER.md starts it: a head from `ray start
--head --block`, a worker node from `peterrec node`, and `finetune --address` running its tasks there.

Every Ray process of the test lives under its own --temp-dir and is stopped by the pid of the command that
started it (SIGTERM), never with `ray stop` (that would stop every Ray of the machine's user).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from support import finetune_args, free_port, make_world, task_names, wait_for

ROOT = Path(__file__).resolve().parents[1]


def processes_under(temp_dir: Path) -> list[psutil.Process]:
    """The processes whose command line names `temp_dir` (Ray's GCS, raylets, workers and agents of it)."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or []):
                out.append(proc)
        except psutil.Error:
            pass
    return out


def test_loopback_cluster_of_a_head_and_a_peterrec_node(tmp_path):
    spec, backbone = make_world(tmp_path, tasks=2)
    temp_dir = Path("/tmp") / f"prt-{secrets.token_hex(3)}"  # Ray's socket paths must stay short
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
                             str(port), "--num-cpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
                             "--temp-dir", str(temp_dir), "--object-store-memory", str(80 * 1024 * 1024)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = None
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: _answers(port) or head.poll() is not None, 120)
        node_log = tmp_path / "node.log"
        with open(node_log, "w") as log:
            node = subprocess.Popen([sys.executable, "cli.py", "node", "--address", address, "--num-cpus", "1",
                                     "--object-store-mb", "80", "--temp-dir", str(temp_dir)],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "joined the cluster" in node_log.read_text() or node.poll() is not None, 240)
        assert node.poll() is None, node_log.read_text()

        out = tmp_path / "job"
        argv = finetune_args(spec, backbone, out)[:-4]  # less the embedded cluster's --num-cpus, --object-store-mb
        job = subprocess.run([sys.executable, "cli.py", *argv, "--address", address], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stderr[-3000:]
        assert job.stdout.startswith(f"fine-tuning 2 of 2 tasks in mode peterrec on the Ray cluster at {address}")
        state = json.loads((out / "state.json").read_text())
        assert state["cluster"]["nodes"] == 2 and state["cluster"]["node_ips"] == ["127.0.0.1"]
        assert state["cluster"]["cpus"] == 1  # the head has none: the tasks ran on the worker node
        assert sorted(t["name"] for t in state["tasks"].values() if t["status"] == "done") == \
            sorted(task_names(spec))
        # Every socket the cluster's processes listen on is on loopback.
        listening = [c.laddr.ip for p in processes_under(temp_dir) for c in _connections(p) if c.status == "LISTEN"]
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening), listening
    finally:
        for proc in (node, head):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(90)
                except subprocess.TimeoutExpired:
                    proc.kill()
        try:
            wait_for(lambda: not processes_under(temp_dir), 60)
        finally:
            for proc in processes_under(temp_dir):  # whatever outlived its node's stop
                proc.kill()
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert "node stopped" in node_log.read_text()


def _answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _connections(proc: psutil.Process) -> list:
    try:
        return proc.net_connections(kind="inet")
    except psutil.Error:
        return []
