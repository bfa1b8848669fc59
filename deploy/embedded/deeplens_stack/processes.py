"""Background processes with a pid record and a log file each, stoppable from another invocation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    name: str
    pid: int
    started: float
    argv: list[str]


class ProcessTable:
    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = log_dir
        # Processes started by this object; others are known only by their pid record.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path | None = None) -> ProcessRecord:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() signals the whole group
            )
        self._children[proc.pid] = proc
        record = ProcessRecord(name=name, pid=proc.pid, started=time.time(), argv=argv)
        self._record_path(name).write_text(json.dumps(asdict(record)))
        return record

    def get(self, name: str) -> ProcessRecord | None:
        path = self._record_path(name)
        if not path.exists():
            return None
        try:
            return ProcessRecord(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None

    def running(self, name: str) -> bool:
        record = self.get(name)
        return record is not None and self._alive(record.pid)

    def stop(self, name: str, *, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> bool:
        """Signals the process group, waits, then SIGKILLs what is left. Returns whether it was running."""
        record = self.get(name)
        if record is None:
            return False
        was_running = self._alive(record.pid)
        if was_running:
            _signal_group(record.pid, sig)
            deadline = time.monotonic() + timeout
            while self._alive(record.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(record.pid):
                _signal_group(record.pid, signal.SIGKILL)
                while self._alive(record.pid):
                    time.sleep(0.05)
        _signal_group(record.pid, signal.SIGKILL)  # leftovers in the group (e.g. backend stubs)
        self._record_path(name).unlink(missing_ok=True)
        self._children.pop(record.pid, None)
        return was_running

    def _alive(self, pid: int) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
