"""The local Airflow set-up of ``make standalone`` (scripts/airflow_local.py): ports, loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from airflow_local import airflow_env, components  # noqa: E402


def test_workers_call_the_execution_api_on_the_ui_port(tmp_path, monkeypatch):
    env = airflow_env(tmp_path, port=18080)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert (env["AIRFLOW__API__HOST"], env["AIRFLOW__API__PORT"]) == ("127.0.0.1", "18080")
    # `AIRFLOW__API__PORT=18081 make standalone`: the port comes from the environment
    monkeypatch.setenv("AIRFLOW__API__PORT", "18081")
    env = airflow_env(tmp_path)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18081/execution/"
    procs = components(env)
    assert procs["api-server"][-4:] == ["--host", "127.0.0.1", "--port", "18081"]
    monkeypatch.delenv("AIRFLOW__API__PORT")
    assert airflow_env(tmp_path)["AIRFLOW__API__PORT"] == "8080"


def test_airflow_reads_the_execution_api_url_and_loopback_hostname(tmp_path):
    env = airflow_env(tmp_path, port=18080)
    probe = (
        "from airflow.configuration import conf; from airflow.utils.net import get_hostname; "
        "print(conf.get('core', 'execution_api_server_url')); print(get_hostname())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["http://127.0.0.1:18080/execution/", "127.0.0.1"]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.add(addr)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_log_servers_listen_on_loopback_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(free_port()))
    monkeypatch.setenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(free_port()))
    env = airflow_env(tmp_path)
    procs = components(env)
    # Airflow's own log servers would bind every interface: the scheduler and triggerer skip them
    assert "--skip-serve-logs" in procs["scheduler"] and "--skip-serve-logs" in procs["triggerer"]
    for name, var in (
        ("worker-logs", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"),
        ("trigger-logs", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"),
    ):
        port = int(env[var])
        proc = subprocess.Popen(
            procs[name], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 90
            while not listening_addresses(port) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.5)
            assert listening_addresses(port) == {"0100007F"}, name  # 127.0.0.1, nothing else
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        finally:
            proc.terminate()
            proc.wait(30)
