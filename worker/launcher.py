"""Start and stop `newsq worker` processes from Python (the demo, the tests, the GPU launcher).

A worker is a separate process so that it can be killed and restarted like in production; it is
ready when it answers a Celery control ping by its node name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from producer.client import celery_client


class WorkerProcess:
    def __init__(
        self,
        broker_url: str,
        env: Mapping[str, str],
        *,
        name: str = "newsq",
        queues: str = "newsq.classify",
        concurrency: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.hostname = f"{name}@{socket.gethostname()}"
        self.env = {**os.environ, **env, "NEWSQ_BROKER_URL": broker_url}
        self.args = [
            sys.executable,
            "-m",
            "newsq",
            "worker",
            "--queues",
            queues,
            "--hostname",
            self.hostname,
        ]
        if concurrency is not None:
            self.args += ["--concurrency", str(concurrency)]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        client = celery_client(self.broker_url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise RuntimeError(f"worker exited with {self.returncode}{self._log_tail()}")
                if client.control.ping(destination=[self.hostname], timeout=0.5):
                    return
            raise TimeoutError(
                f"worker {self.hostname} not ready after {timeout:.0f}s{self._log_tail()}"
            )
        finally:
            client.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no acks; what it held must be redelivered."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: Celery's warm shutdown finishes the tasks in hand, then exits."""
        if self.process is None or not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + self.log_path.read_text(errors="replace")[-3000:]
