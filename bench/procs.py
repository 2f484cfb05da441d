"""Child processes of a bench run: every one is started in its own session and registered, and all of them are
stopped at the end, also on Ctrl-C, SIGTERM and errors (``with Processes() as procs: ...``).

Only processes this run started are ever signalled, each by its own process group id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any


class Child:
    """One started process: its argv, log file, and how to stop it."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None,
                 stop_signal: int = signal.SIGTERM, stdin: int | None = subprocess.DEVNULL) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self.stop_signal = stop_signal
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log, "ab")
        self.started = time.time()
        self.popen = subprocess.Popen(self.argv, cwd=cwd, env=env, stdin=stdin, stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_text(self, tail: int = 4000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-tail:] if tail else text

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def signal(self, signum: int) -> None:
        if self.running:
            try:
                os.kill(self.popen.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, grace: float = 5.0) -> int | None:
        """The stop signal, then SIGKILL to the whole process group after ``grace`` seconds."""
        if self.running:
            self.signal(self.stop_signal)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the leader's leftovers (nginx workers, ...)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        return self.popen.returncode


class Processes:
    """The registry of a run's children. ``stop_all`` stops them newest first; it runs on exit of the ``with``
    block whatever happened; SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` so they all unwind that way."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self._cleanups: list[Callable[[], Any]] = []
        self._old: dict[int, Any] = {}

    def start(self, name: str, argv: Sequence[str], **kwargs: Any) -> Child:
        child = Child(name, argv, **kwargs)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> int | None:
        code = child.stop(grace)
        if child in self.children:
            self.children.remove(child)
        return code

    def stop_many(self, children: list[Child], grace: float = 5.0) -> None:
        """Stop several at once: every stop signal first, then one wait for all of them."""
        for child in children:
            child.signal(child.stop_signal)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for child in children:
            self.stop(child, grace=1.0)

    def add_cleanup(self, function: Callable[[], Any]) -> None:
        self._cleanups.append(function)

    def stop_all(self) -> None:
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # keep stopping the rest
                print(f"cleanup failed: {exc!r}")
        while self.children:
            self.stop(self.children[-1], grace=3.0)

    def _interrupt(self, signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> Processes:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too, even where it came ignored
            self._old[signum] = signal.signal(signum, self._interrupt)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A second Ctrl-C while stopping must not leave children behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)
            for signum, handler in self._old.items():
                signal.signal(signum, handler)


# ---------------------------------------------------------------------------------------------------- ports & waits

def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def udp_block_free(first: int, count: int) -> bool:
    """Whether UDP ports ``first .. first+count-1`` can all be bound on 127.0.0.1 (and on 0.0.0.0) now."""
    held: list[socket.socket] = []
    try:
        for port in range(first, first + count):
            for host in ("127.0.0.1", "0.0.0.0"):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind((host, port))
                sock.close()
        return True
    except OSError:
        return False
    finally:
        for sock in held:
            sock.close()


def udp_blocks(start: int, count: int, size: int, limit: int = 32000) -> list[int]:
    """``count`` free blocks of ``size`` consecutive UDP ports (first port even), from ``start`` up."""
    found: list[int] = []
    port = start + (start % 2)
    while len(found) < count:
        if port + size > limit:
            raise RuntimeError(f"not enough free UDP ports between {start} and {limit}")
        if udp_block_free(port, size):
            found.append(port)
        port += size
    return found


def tcp_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
               alive: Child | None = None) -> Any:
    """Poll ``condition`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout`` seconds, or
    ``RuntimeError`` when ``alive`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and not alive.running:
            raise RuntimeError(f"{alive.name} exited ({alive.popen.returncode}) while waiting for {what}:\n"
                               f"{alive.log_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f} s")
        time.sleep(interval)


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to UDP ``port`` (any address), from /proc/net/udp (no probing bind)."""
    suffix = f":{port:04X}"
    try:
        with open("/proc/net/udp", encoding="ascii") as table:
            next(table)
            return any(line.split()[1].endswith(suffix) for line in table)
    except OSError:
        return False
