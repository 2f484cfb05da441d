"""SIPp as the far end of end-to-end tests (reusable fixture; real reactor, Linux).

Typical use in a trial ``TestCase``::

    from tests.e2e.sipp import Sipp, require_sipp

    def setUp(self):
        require_sipp()                                  # SkipTest with a clear reason when sipp is missing

    @inlineCallbacks
    def test_something(self):
        sipp = Sipp(reactor, "uas_answer.xml", workdir=self.mktemp())
        self.addCleanup(sipp.stop)                      # SIGUSR1 twice, then SIGKILL; logs collected
        yield sipp.start()                              # free ports chosen; returns once SIPp's socket is bound
        ...                                             # talk to ("127.0.0.1", sipp.port); SDP at sipp.media_port
        code = yield sipp.wait_exit(timeout=20)         # 0 when every call of the scenario passed
        print(sipp.messages)                            # SIPp's -trace_msg log (also errors, actions, screen)

``scenario`` is a file name in ``tests/e2e/scenarios`` or a path. ``calls`` is SIPp's ``-m``; ``variables`` become
``-set name value`` (``[$name]`` in the scenario); ``extra_args`` are appended to the command line. SIPp runs on
127.0.0.1 only, with its SIP, media (``-mp``, four consecutive ports) and control (``-cp``) ports picked free at start.
Every wait has a deadline and polls a condition; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest

__all__ = ["Sipp", "SippError", "SCENARIOS", "require_sipp", "free_udp_ports"]

SCENARIOS = Path(__file__).parent / "scenarios"
_POLL = 0.02


class SippError(Exception):
    """SIPp did not start, or did not reach the awaited condition before its deadline."""


def require_sipp() -> str:
    """The sipp executable; ``SkipTest`` when it is not installed."""
    path = shutil.which("sipp")
    if path is None:
        raise SkipTest("sipp is not installed (Debian package sip-tester); SIPp end-to-end tests skipped")
    return path


def free_udp_ports(count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive UDP ports that are free on ``host`` right now."""
    for _attempt in range(200):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind((host, 0))
        first = probe.getsockname()[1]
        probe.close()
        if first + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind((host, port))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise SippError(f"no {count} consecutive free UDP ports on {host}")


def _udp_bound(host: str, port: int) -> bool:
    """Whether some socket is bound to host:port (reads /proc/net/udp, no probe that could steal the port)."""
    packed = socket.inet_aton(host)
    wanted = {f"{int.from_bytes(packed, 'little'):08X}:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/udp", encoding="ascii") as table:
            next(table)
            return any(line.split()[1] in wanted for line in table)
    except OSError:
        return False


class _SippProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted override
        if len(self.output) < 1_000_000:
            self.output.extend(data)

    errReceived = outReceived  # noqa: N815

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted override
        value = reason.value
        if isinstance(value, ProcessDone):
            self.exit_code = 0
        elif isinstance(value, ProcessTerminated):
            self.exit_code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        else:
            self.exit_code = -1
        self.ended.callback(self.exit_code)


class Sipp:
    """One SIPp process playing ``scenario`` on 127.0.0.1."""

    def __init__(
        self,
        reactor: Any,
        scenario: str | os.PathLike[str],
        *,
        workdir: str | os.PathLike[str],
        calls: int = 1,
        variables: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
    ) -> None:
        self.reactor = reactor
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SCENARIOS / path
        self.workdir = Path(workdir).absolute()
        self.calls = calls
        self.variables = dict(variables or {})
        self.extra_args = list(extra_args)
        self.host = host
        self.port = 0
        self.media_port = 0
        self.control_port = 0
        self._process: _SippProcess | None = None
        self._transport: Any = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.exit_code is None

    @property
    def exit_code(self) -> int | None:
        return self._process.exit_code if self._process is not None else None

    def command(self) -> list[str]:
        """The SIPp command line (ports filled in by :meth:`start`)."""
        args = [
            require_sipp(),
            "-sf", str(self.scenario),
            "-i", self.host,
            "-p", str(self.port),
            "-mi", self.host,
            "-mp", str(self.media_port),
            "-cp", str(self.control_port),
            "-m", str(self.calls),
            "-nostdin",
            "-timeout", "120",
            "-trace_msg", "-message_file", str(self.workdir / "messages.log"),
            "-trace_err", "-error_file", str(self.workdir / "errors.log"),
            "-trace_logs", "-log_file", str(self.workdir / "actions.log"),
            "-trace_screen", "-screen_file", str(self.workdir / "screen.log"),
        ]  # fmt: skip
        for name, value in self.variables.items():
            args += ["-set", name, value]
        return args + self.extra_args

    @inlineCallbacks
    def start(self, timeout: float = 10.0) -> Any:
        """Spawn SIPp and wait until its SIP socket is bound."""
        if not self.scenario.exists():
            raise SippError(f"no scenario {self.scenario}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_ports(1, self.host)
        self.media_port = free_udp_ports(4, self.host)
        self.control_port = free_udp_ports(1, self.host)
        self._process = _SippProcess()
        command = self.command()
        self._transport = self.reactor.spawnProcess(
            self._process, command[0], command, env=dict(os.environ), path=str(self.workdir)
        )
        try:
            yield self._poll(lambda: _udp_bound(self.host, self.port) or not self.running, timeout, "bind its port")
        except SippError:
            yield self.stop()
            raise
        if not self.running:
            raise SippError(f"SIPp exited with {self.exit_code} at start:\n{self.output}\n{self.errors}")

    def wait_exit(self, timeout: float = 30.0) -> Deferred[int]:
        """SIPp's exit code once it ends by itself (every call of ``-m`` done); ``SippError`` after ``timeout``."""
        if self._process is None:
            raise SippError("SIPp was not started")
        result: Deferred[int] = Deferred()

        def ended(code: int) -> int:
            if not result.called:
                result.callback(code)
            return code

        self._process.ended.addCallback(ended)
        result.addTimeout(timeout, self.reactor)
        return result.addErrback(self._deadline, f"exit within {timeout} s")

    @inlineCallbacks
    def wait_for_log(self, text: str, timeout: float = 10.0) -> Any:
        """Wait until ``text`` appears in the message log (e.g. ``"SIP/2.0 200"`` sent or received)."""
        yield self._poll(lambda: text in self.messages, timeout, f"log {text!r}")

    def stop(self, grace: float = 5.0) -> Deferred[int | None]:
        """Make SIPp quit (SIGUSR1 twice, SIGKILL after ``grace`` s) and wait for it. Idempotent."""
        process = self._process
        if process is None or process.exit_code is not None:
            return succeed(self.exit_code)
        return self._stop(process, grace)

    @inlineCallbacks
    def _stop(self, process: _SippProcess, grace: float) -> Any:
        self._signal("USR1")
        try:
            yield self._poll(lambda: process.exit_code is not None, 0.2, "quit")
        except SippError:
            self._signal("USR1")
            try:
                yield self._poll(lambda: process.exit_code is not None, grace, "quit")
            except SippError:
                self._signal("KILL")
                yield process.ended
        return process.exit_code

    # -- logs -----------------------------------------------------------------------------------------------------

    def _read(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    @property
    def messages(self) -> str:
        """The ``-trace_msg`` log: every SIP message SIPp sent or received."""
        return self._read("messages.log")

    @property
    def errors(self) -> str:
        return self._read("errors.log")

    @property
    def actions(self) -> str:
        """The ``<log>`` action output (``-trace_logs``)."""
        return self._read("actions.log")

    @property
    def screen(self) -> str:
        return self._read("screen.log")

    @property
    def output(self) -> str:
        return bytes(self._process.output).decode("utf-8", "replace") if self._process else ""

    def start_lines(self, direction: str) -> list[str]:
        """The first line of each message ``"received"`` or ``"sent"`` by SIPp, in order (retransmissions too)."""
        lines: list[str] = []
        blocks = self.messages.split("----------------------------------------------- ")
        for block in blocks:
            head, _sep, rest = block.partition("\n")
            if f"message {direction}" in head or f"message {direction}" in rest.split("\n", 1)[0]:
                body = [line.strip() for line in rest.split("\n") if line.strip()]
                body = [line for line in body if not line.startswith(("UDP message", "TCP message"))]
                if body:
                    lines.append(body[0])
        return lines

    def describe(self) -> str:
        """Everything useful when a test fails."""
        return (
            f"SIPp {self.scenario.name} port {self.port} exit {self.exit_code}\n--- output\n{self.output[-3000:]}"
            f"\n--- errors\n{self.errors[-3000:]}\n--- messages\n{self.messages[-6000:]}"
        )

    # -- helpers --------------------------------------------------------------------------------------------------

    def _signal(self, name: str) -> None:
        if self._transport is not None and self.running:
            try:
                self._transport.signalProcess(getattr(signal, f"SIG{name}"))
            except Exception:  # the process ended meanwhile
                pass

    @inlineCallbacks
    def _poll(self, condition: Any, timeout: float, what: str) -> Any:
        deadline = self.reactor.seconds() + timeout
        while not condition():
            if self.reactor.seconds() >= deadline:
                raise SippError(f"SIPp did not {what} within {timeout} s")
            yield task.deferLater(self.reactor, _POLL, lambda: None)

    def _deadline(self, failure: Failure, what: str) -> Failure:
        from twisted.internet.defer import TimeoutError as DeferredTimeout

        if failure.check(DeferredTimeout):
            raise SippError(f"SIPp did not {what}\n{self.describe()}")
        return failure
