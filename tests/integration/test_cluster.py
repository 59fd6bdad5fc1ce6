"""The cluster itself, as ``make standalone`` would start it on a port other than 8080: tasks
reach the execution API of their own api-server, and nothing but the UI port listens beyond
loopback (issue 11: workers called :8080 whatever the port; log servers bound 0.0.0.0)."""

from __future__ import annotations

import socket
from pathlib import Path


def listening(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            if family == socket.AF_INET:
                raw = raw[::-1]
            else:  # four little-endian 32-bit words
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_tasks_call_the_execution_api_of_their_own_api_server(cluster):
    assert cluster.api_port != 8080
    url = cluster.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
    assert url == f"http://127.0.0.1:{cluster.api_port}/execution/"


def test_servers_listen_on_loopback_only(cluster):
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    ports = {
        "api-server": cluster.api_port,
        "worker log server": int(cluster.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"]),
        "triggerer log server": int(cluster.env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]),
    }
    bound = {name: listening(port) for name, port in ports.items()}
    print("listening:", bound)
    assert bound["api-server"], "the api-server is not listening"
    for name, addresses in bound.items():
        assert addresses <= loopback, f"{name} listens on {addresses}"


def test_no_import_errors_and_every_dataset_has_its_dag(cluster, registry):
    assert cluster.import_errors() == []
    for dataset_id in registry.datasets:
        dag = cluster.wait_dag(f"imageindex_{dataset_id}")
        assert not dag["is_paused"]
