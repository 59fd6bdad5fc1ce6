"""A real OpenSearch 2.19 node with the k-NN plugin for tests, started from ``opensearch/``.

``opensearch/node.sh`` resolves the server, its modules and the k-NN plugin from Maven Central
into ``~/.m2`` once (``opensearch/target`` keeps the class path), then runs one node on 127.0.0.1
on a free port. Needs Java 17+ and Maven. Usable on its own too::

    with start_opensearch(tmp_dir) as node:
        print(node.url, node.rss_bytes())

The data folder survives :meth:`OpenSearchNode.stop` and :meth:`OpenSearchNode.restart`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# One way to tie a server's life to the test process, shared with the SeaweedFS helper.
from seaweedfs import _PRCTL, _die_with_parent, stop_process_group

NODE_DIR = Path(__file__).resolve().parent.parent / "opensearch"
NODE_SH = NODE_DIR / "node.sh"
#: The first build downloads ~150 MB of jars into ~/.m2; later builds take seconds.
BUILD_TIMEOUT_S = 900.0
START_TIMEOUT_S = 120.0


def missing_tools() -> str | None:
    """Why no node can be started here (None: Java 17+ and Maven are present)."""
    java = shutil.which("java")
    if java is None:
        return "Java is not installed (the OpenSearch test node needs Java 17+ and Maven)"
    if shutil.which("mvn") is None:
        return "Maven (mvn) is not installed (the OpenSearch test node needs Java 17+ and Maven)"
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    ).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0_x" is Java 8
        major = int(m.group(2))
    if major < 17:
        return f"Java 17+ is needed for the OpenSearch test node, found: {out.splitlines()[:1]}"
    return None


def build(timeout: float = BUILD_TIMEOUT_S) -> float:
    """Resolve and compile the node if stale; returns the seconds it took."""
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(NODE_SH), "build"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"building the OpenSearch node failed (exit {proc.returncode}): "
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return time.monotonic() - t0


@dataclass
class OpenSearchNode:
    home: Path
    port: str = "0"
    url: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    #: seconds the last start took, from launch to the first answered request
    start_seconds: float | None = None

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def start(self, timeout: float = START_TIMEOUT_S) -> OpenSearchNode:
        """Launch the JVM and wait until the node answers and its cluster is usable."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"the node in {self.home} is already running")
        if self.url and self.port == "0":
            # Started before: come back on the same port, so clients keep their URL.
            self.port = self.url.rsplit(":", 1)[1]
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "url").unlink(missing_ok=True)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", str(NODE_SH), "run", str(self.home), self.port],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # stop() signals the whole group
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
            )
        try:
            self.url = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        url_file = self.home / "url"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the OpenSearch node exited with code {self.process.returncode}; "
                    f"log tail:\n{self.log_tail()}"
                )
            if url_file.exists():
                url = url_file.read_text().strip()
                try:
                    # Yellow is as good as it gets on one node (replicas stay unassigned).
                    health = _get_json(f"{url}/_cluster/health?wait_for_status=yellow&timeout=5s")
                    if health.get("status") in ("yellow", "green"):
                        return url
                except OSError as exc:
                    last = exc
            time.sleep(0.2)
        raise TimeoutError(
            f"OpenSearch node in {self.home} not ready after {timeout:.0f}s "
            f"(last error: {last!r}); log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (the node closes its shards and exits), SIGKILL if it hangs."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_process_group(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush or close anything."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def restart(self, timeout: float = START_TIMEOUT_S) -> OpenSearchNode:
        """Stop and start on the same data folder and port."""
        self.stop()
        return self.start(timeout)

    def rss_bytes(self) -> int | None:
        """Resident memory of the node's JVM (Linux), None when unknown."""
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


def start(home: Path, *, port: str = "0", timeout: float = START_TIMEOUT_S) -> OpenSearchNode:
    """Build if needed, then start a node whose data lives in ``home``."""
    reason = missing_tools()
    if reason:
        raise FileNotFoundError(reason)
    build()
    return OpenSearchNode(Path(home), port=port).start(timeout)


@contextlib.contextmanager
def start_opensearch(home: Path, **kwargs) -> Iterator[OpenSearchNode]:
    node = start(home, **kwargs)
    try:
        yield node
    finally:
        node.stop()
