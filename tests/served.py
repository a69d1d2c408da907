"""A `chatbot serve` process for tests: started as a user starts it, stopped with Ctrl+C."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence


class ServedProcess:
    """``python -m chatbot ARGS...`` with its output collected line by line (stdout and stderr)."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatbot", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy() if env is None else env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output if the process ends."""
        while (line := self._queue.get(timeout=timeout)) is not None:
            if found := re.search(pattern, line):
                return found
        self.process.wait()
        raise AssertionError(f"the process ended ({self.process.returncode}):\n{self.output()}")

    def stop(self) -> int:
        """Ctrl+C, as a person stops it; the exit code (a graceful stop is 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def run_to_end(args: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m chatbot ARGS...`` run until it exits by itself (a refused start-up)."""
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy() if env is None else env,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
