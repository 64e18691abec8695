"""Start and stop `newsq worker` processes: the per-GPU supervisor, the demo and the tests.

A worker is a separate process so that it can be killed and restarted like in production; it is
ready when it answers a Celery control ping by its node name.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from producer.client import celery_client
from worker.gpus import Slot

log = logging.getLogger(__name__)


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
        """`log_path`: append the worker's output there; None: share this process's output."""
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
        self.started_at = 0.0

    def start(self, timeout: float | None = 120.0) -> WorkerProcess:
        """Start the process; wait until it answers a ping unless `timeout` is None."""
        log = self.log_path.open("ab") if self.log_path else None
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT if log else None
        )
        self.started_at = time.monotonic()
        if timeout is not None:
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


class Supervisor:
    """`newsq worker --gpus ...`: one worker process per slot, each pinned to its GPU by
    CUDA_VISIBLE_DEVICES and named after it (`gpu0@host`). A process that dies is started again
    (after a pause that grows while it keeps dying young); SIGTERM or SIGINT is passed on to
    every worker, which finish the batch in hand, ack, and exit (Celery's warm shutdown)."""

    def __init__(
        self,
        slots: list[Slot],
        broker_url: str,
        *,
        queues: str,
        concurrency: int | None,
        metrics_port: int,
        stop_timeout: float = 120.0,
    ) -> None:
        self.workers: list[WorkerProcess] = []
        for index, slot in enumerate(slots):
            env = {
                "CUDA_VISIBLE_DEVICES": slot.visible_devices or "",
                "NEWSQ_DEVICE": slot.device,
                "NEWSQ_METRICS_PORT": str(metrics_port + index if metrics_port else 0),
            }
            self.workers.append(
                WorkerProcess(
                    broker_url, env, name=slot.name, queues=queues, concurrency=concurrency
                )
            )
        self.stop_timeout = stop_timeout
        self.stopping = False
        self.pauses = [1.0] * len(self.workers)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for worker in self.workers:
            log.info("starting %s", worker.hostname)
            worker.start(timeout=None)
        status = 0
        while not self.stopping:
            time.sleep(0.5)
            for index, worker in enumerate(self.workers):
                if worker.returncode == os.EX_CONFIG:
                    # It cannot start as configured (a model that does not load): starting it
                    # again would fail the same way, so stop them all and say so.
                    log.error("%s cannot start as configured: stopping", worker.hostname)
                    self.stopping, status = True, os.EX_CONFIG
                elif not worker.alive and not self.stopping:
                    self._restart(index, worker)
        for worker in self.workers:
            if worker.process is not None and worker.alive:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for worker in self.workers:
            worker.stop(timeout=max(1.0, deadline - time.monotonic()))
        return status

    def _restart(self, index: int, worker: WorkerProcess) -> None:
        lived = time.monotonic() - worker.started_at
        pause = self.pauses[index] = 1.0 if lived > 60 else min(self.pauses[index] * 2, 60.0)
        log.warning(
            "%s exited with %s after %.0fs; restarting in %.0fs",
            worker.hostname,
            worker.returncode,
            lived,
            pause,
        )
        time.sleep(pause)
        if not self.stopping:
            worker.start(timeout=None)

    def _stop(self, signum: int, _frame: object) -> None:
        log.info("%s: stopping the workers (warm shutdown)", signal.Signals(signum).name)
        self.stopping = True
