"""The Flower App on Flower's deployment engine, on loopback: a SuperLink, three SuperNodes, ``flwr run``.

The test starts ``flower-superlink --insecure`` and three ``flower-supernode`` processes on 127.0.0.1 (free
ports, each in its own session), runs the App folder unchanged with ``flwr run``, waits (bounded) for the
server's committed report, and stops every process it started together with their descendants
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``), also when an assertion fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hierfedlora.planner.fleet import make_fleet, save_fleet
from hierfedlora.planner.fleets.datasets import read_csv
from hierfedlora.planner.io import write_json
from hierfedlora.runtime.checkpoint import REPORTS_NAME, read_reports
from tests.factories import make_cost_model, make_two_group_plan

pytestmark = pytest.mark.flower

psutil = pytest.importorskip("psutil")
pytest.importorskip("flwr")

APP_DIR = Path(__file__).resolve().parents[2] / "flower_app"
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 900.0
WORDS = {"animal": ["dog", "cat", "horse", "cow"], "food": ["bread", "cake", "rice", "soup"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args[0]} exited with {process.returncode} before listening")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {START_TIMEOUT_S:g} s")


def _stop_all(processes: list[subprocess.Popen]) -> list[int]:
    """Terminate the processes and all their descendants (collected first); return pids still alive after."""
    tree = []
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            tree += [*parent.children(recursive=True), parent]
        except psutil.NoSuchProcess:
            continue
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=15)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        if process.poll() is None:
            process.wait(timeout=5)
    return [member.pid for member in tree if member.is_running() and member.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def loopback_inputs(tmp_path, minilm_slice_dir):
    """A 3-device fleet over a 2-class CSV, a cost model, a plan of two depths (one intra round each)."""
    rows = ["text,label"] + [
        f"a {w} is a kind of {label} number {i},{label}"
        for label, words in WORDS.items()
        for i, w in enumerate(words)
        for _ in range(3)
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    fleet = make_fleet(read_csv(tmp_path / "data.csv"), num_devices=3, partition="iid", test_fraction=0.25, seed=0)
    save_fleet(tmp_path / "fleet.json", fleet)
    write_json(tmp_path / "cost.json", make_cost_model(2))
    plan = make_two_group_plan(fleet)
    plan = dataclasses.replace(plan, groups=tuple(dataclasses.replace(g, intra_rounds=1) for g in plan.groups))
    write_json(tmp_path / "plan.json", plan)
    return tmp_path, plan


def test_flwr_run_on_a_loopback_superlink_with_three_supernodes(loopback_inputs, minilm_slice_dir):
    """``flwr run flower_app`` against a loopback SuperLink: discovery, a 2-depth round, a committed report."""
    # Arrange
    folder, plan = loopback_inputs
    home = folder / "flwr-home"
    home.mkdir()
    link_port = _free_port()
    connection = f'[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    (home / "config.toml").write_text('[superlink]\ndefault = "loopback"\n\n' + connection)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    files = {"fleet-file": "fleet.json", "plan-file": "plan.json", "cost-model-file": "cost.json", "run-dir": "run"}
    run_config = " ".join(
        [f"rounds=1 model='{minilm_slice_dir}' batch-size=4 eval-samples=4 timeout-s=600.0"]
        + [f"{key}='{folder / name}'" for key, name in files.items()]
    )
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = (folder / f"{name}.log").open("w")
        logs.append(log)
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        link = start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--port",
            str(link_port),
            "--disable-runtime-dependency-installation",
        )
        _wait_for_port(link_port, link, deadline)
        for index in range(3):
            node_port = _free_port()
            node = start(
                f"supernode{index}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--port",
                str(node_port),
                "--node-config",
                f"partition-id={index} num-partitions=3",
            )
            _wait_for_port(node_port, node, deadline)
        # Act
        submitted = subprocess.run(
            [str(BIN / "flwr"), "run", str(APP_DIR), "loopback", "--run-config", run_config],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        reports_path = folder / "run" / REPORTS_NAME
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and not (reports_path.exists() and read_reports(reports_path)):
            time.sleep(0.5)
        reports = read_reports(reports_path) if reports_path.exists() else []
        run_fleet = json.loads((folder / "run" / "fleet.json").read_text()) if reports else {}
    finally:
        survivors = _stop_all(processes)
        for log in logs:
            log.close()
    # Assert
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert [r.global_round for r in reports] == [1], (folder / "superlink.log").read_text()[-3000:]
    assert reports[0].plan_id == plan.plan_id and len(reports[0].groups) == 2
    assert reports[0].eval_loss > 0 and set(reports[0].measured_step_s) == {"d0", "d1", "d2"}
    assert [d["device_id"] for d in run_fleet["devices"]] == ["d0", "d1", "d2"]
    assert survivors == []
    assert all(process.returncode is not None for process in processes)
