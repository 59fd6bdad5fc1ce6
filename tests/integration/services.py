"""Debian's PostgreSQL and Redis for the CeleryExecutor tier: loopback only, throwaway, no Docker.

``start_postgres()`` makes a fresh cluster in a temp dir (``initdb`` from
/usr/lib/postgresql/*/bin), listening on 127.0.0.1 and a unix socket on a free port, with one
password-protected role and database (``airflow``/``airflow``, as docker-compose.yaml's postgres
service). Postgres refuses to run as root, so as root the cluster belongs to the ``postgres``
user that the Debian package creates. ``start_redis()`` runs ``redis-server`` on 127.0.0.1 with
a password and no persistence. Both return an object with ``stop()``; :func:`missing` names
what is not installed (``.ci/run`` installs both with apt-get).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tier_hostname() -> str:
    """``[core] hostname_callable`` of the tier's workers: ``$IMAGEINDEX_TIER_HOSTNAME``.

    In compose every worker container has its own host name; processes on one machine share
    one, so each worker of the tier is told its own.
    """
    return os.environ["IMAGEINDEX_TIER_HOSTNAME"]


def pg_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin that has initdb."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    return Path(max(found, key=lambda p: int(Path(p).parent.parent.name))).parent


def missing() -> list[str]:
    """What the tier needs and this machine lacks (Debian package names)."""
    out = []
    if pg_bin_dir() is None:
        out.append("postgresql")
    if shutil.which("redis-server") is None:
        out.append("redis-server")
    return out


def _wait(what: str, ready, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s\n{tail}")


@dataclass
class Postgres:
    port: int
    root: Path
    password: str
    user: str = "airflow"
    database: str = "airflow"
    #: The unix user that owns the cluster (None: the current user).
    os_user: str | None = None
    bin_dir: Path = field(default_factory=Path)
    start_seconds: float = 0.0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, scheme: str = "postgresql+psycopg2") -> str:
        """TCP on loopback with the password, as compose's URLs reach the postgres service."""
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.os_user,
            group=self.os_user,
            extra_groups=[] if self.os_user else None,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
            **kw,
        )

    def is_ready(self) -> bool:
        proc = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-h", str(self.socket_dir)]
            + ["-p", str(self.port), "-d", self.database, "-U", self.user],
            capture_output=True,
        )
        return proc.returncode == 0

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(timeout: float = 60) -> Postgres:
    """A fresh PostgreSQL cluster with role and database ``airflow`` (password auth over TCP)."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
    t0 = time.perf_counter()
    os_user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "postgres refuses to run as root and there is no 'postgres' user "
                "(the Debian postgresql package creates it)"
            ) from None
        os_user = "postgres"
    # Not under pytest's tmp dirs: those are 0700 root, which the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="imageindex-pg-"))
    pg = Postgres(
        port=free_port(),
        root=root,
        password=secrets.token_hex(16),
        os_user=os_user,
        bin_dir=bin_dir,
    )
    pg.socket_dir.mkdir()
    pwfile = root / "pwfile"
    pwfile.write_text(pg.password + "\n")
    if os_user:
        for path in (root, pg.socket_dir, pwfile):
            shutil.chown(path, os_user, os_user)
    try:
        # The socket trusts the cluster's owner; TCP wants the password, as in compose.
        pg._run(
            "initdb",
            "-D",
            str(pg.data_dir),
            "-U",
            pg.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()
        # A throwaway database: no fsync, no WAL flushes.
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={pg.port} "
            f"-c unix_socket_directories={pg.socket_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        pg._run(
            "pg_ctl",
            "start",
            "-D",
            str(pg.data_dir),
            "-l",
            str(pg.log),
            "-o",
            opts,
            "-w",
            timeout=timeout,
        )
        _wait("postgres", pg.is_ready, timeout, pg.log)
        pg._run(
            "createdb", "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", pg.user, pg.database
        )
    except BaseException as exc:
        detail = getattr(exc, "stderr", "") or ""
        pg.stop()
        if detail:
            raise RuntimeError(f"starting postgres failed: {detail}") from exc
        raise
    pg.start_seconds = time.perf_counter() - t0
    return pg


@dataclass
class Redis:
    port: int
    root: Path
    password: str
    proc: subprocess.Popen | None = None
    start_seconds: float = 0.0

    @property
    def log(self) -> Path:
        return self.root / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def ping(self) -> bool:
        """True when the server answers an authenticated PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                data = b""
                while data.count(b"\r\n") < 2:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                return data == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_redis(timeout: float = 30) -> Redis:
    """``redis-server`` on 127.0.0.1 with a password, no RDB/AOF files (a broker for one session)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise FileNotFoundError("no redis-server on PATH: apt-get install redis-server")
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="imageindex-redis-"))
    r = Redis(port=free_port(), root=root, password=secrets.token_hex(16))
    conf = root / "redis.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {r.port}\nrequirepass {r.password}\ndir {root}\n"
        'save ""\nappendonly no\ndaemonize no\nprotected-mode yes\n'
        f"logfile {r.log}\n"
    )
    conf.chmod(0o600)
    r.proc = subprocess.Popen([exe, str(conf)], stdin=subprocess.DEVNULL)
    try:
        _wait("redis-server", r.ping, timeout, r.log)
    except BaseException:
        r.stop()
        raise
    r.start_seconds = time.perf_counter() - t0
    return r
