"""
Run the real gateway (``twistd -n wcsgw``) as a child process for end-to-end tests, and small helpers they share:
free ports on 127.0.0.1, waiting on a condition with a deadline, and a recording CallApp receiver.

Usage in a trial ``TestCase``::

    gateway = yield start_gateway(self, ["--rest-port", str(free_tcp_port())])
    ...                          # the process is stopped (SIGTERM, then SIGKILL) in cleanup
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@inlineCallbacks
def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds (generous on purpose)."""
    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, interval, lambda: None)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()
        self.exit_code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.exit_code = reason.value.exitCode
        self.ended.callback(self.exit_code)


class ChildProcess:
    """A child process with its output collected; ``stop`` sends SIGTERM, then SIGKILL after ``grace`` seconds."""

    def __init__(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self._proto = _Collect()
        self._transport = reactor.spawnProcess(self._proto, self.argv[0], self.argv, env=env or dict(os.environ),
                                               path=str(cwd))

    @property
    def output(self) -> str:
        return self._proto.output.decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        return int(self._transport.pid)

    @property
    def running(self) -> bool:
        return self._proto.exit_code is None and not self._proto.ended.called

    @property
    def exit_code(self) -> int | None:
        return self._proto.exit_code

    def ended(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        if self._proto.ended.called:
            d.callback(self._proto.exit_code)
        else:
            self._proto.ended.addBoth(lambda result: (d.callback(result), result)[1])
        return d

    @inlineCallbacks
    def stop(self, grace: float = 15.0) -> Any:
        if not self.running:
            return self.exit_code
        self._transport.signalProcess("TERM")
        try:
            yield wait_for(lambda: not self.running, timeout=grace, what=f"{self.argv[0]} to exit")
        except AssertionError:
            self._transport.signalProcess("KILL")
            yield self.ended()
        return self.exit_code


def thread_scheduling(pid: int) -> dict[str, tuple[int, int]]:
    """(scheduling policy, real-time priority) of each thread of process ``pid``, by thread name (``comm``; the
    main thread's as "main"), from /proc (Linux)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        raw = (task / "stat").read_text()
        name = "main" if task.name == str(pid) else raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()  # from field 3 (state) on: field N is fields[N - 3]
        out[name] = (int(fields[38]), int(fields[37]))  # policy (41), rt_priority (40)
    return out


@inlineCallbacks
def start_gateway(test: TestCase, args: Sequence[str], *, cwd: Path | None = None) -> Any:
    """Start ``twistd -n wcsgw ARGS`` in ``cwd`` (a fresh temp dir by default); wait until REST answers."""
    workdir = cwd or Path(test.mktemp())
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = ChildProcess([TWISTD, "-n", "--pidfile=", "wcsgw", *args], cwd=workdir, env=env)
    test.addCleanup(child.stop)
    port = int(args[list(args).index("--rest-port") + 1])
    try:
        yield wait_for(lambda: port_open(port) or not child.running, timeout=60, what="the gateway's REST port")
    except AssertionError:
        raise AssertionError(f"gateway did not start:\n{child.output}") from None
    if not child.running:
        raise AssertionError(f"gateway exited with {child.exit_code}:\n{child.output}")
    child.workdir = workdir  # type: ignore[attr-defined]
    return child


class _EventResource(Resource):
    isLeaf = True

    def __init__(self, receiver: CallAppReceiver) -> None:
        super().__init__()
        self._receiver = receiver

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self._receiver.events.append((request.path.decode(), json.loads(body)))
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


class CallAppReceiver:
    """A real HTTP server on 127.0.0.1 that records the CallApp events POSTed to it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_tcp_port()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._listening: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/CallApp"

    def start(self, test: TestCase) -> None:
        self._listening = reactor.listenTCP(self.port, Site(_EventResource(self)), interface="127.0.0.1")
        test.addCleanup(self.stop)

    def stop(self) -> Any:
        if self._listening is not None:
            listening, self._listening = self._listening, None
            return listening.stopListening()
        return None

    def statuses(self, call_id: str) -> list[tuple[str, str | None]]:
        return [(e["status"], e.get("rtmpStreamStatus")) for _, e in self.events if e.get("callId") == call_id]



class InProcessGateway:
    """The gateway's service tree running in the test's own reactor, bound to 127.0.0.1 only.

    Real sockets, real SIP and RTP, real HTTP: only the process boundary is saved, so that a test can also look
    inside (``service.backend``, ``service.agent``).  ``start`` returns a Deferred that fires once REST listens.
    """

    def __init__(self, test: TestCase, receiver: CallAppReceiver, **overrides: Any) -> None:
        from wcsgw import config
        from wcsgw.tap import GatewayService

        self.rest_port = free_tcp_port()
        values: dict[str, Any] = {
            "rest_port": self.rest_port, "sip_port": 0, "ip_local": "127.0.0.1", "ip": "127.0.0.1",
            "state_dir": test.mktemp(), "callapp_url": receiver.url, "callapp_retry_delays": (0.2, 0.5),
            "media_port_from": 46000, "media_port_to": 46999,
        }
        values.update(overrides)
        self.settings = config.build_settings(values)
        self.service = GatewayService(reactor, self.settings)
        self.base = f"http://127.0.0.1:{self.rest_port}/rest-api"
        self._pool: Any = None
        self._test = test

    @inlineCallbacks
    def start(self) -> Any:
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._pool))
        self.service.startService()
        self._test.addCleanup(self.stop)
        yield wait_for(lambda: port_open(self.rest_port), what="the in-process gateway's REST port")

    @inlineCallbacks
    def stop(self) -> Any:
        if self.service.running:
            yield self.service.stopService()
        if self._pool is not None:
            yield self._pool.closeCachedConnections()

    @inlineCallbacks
    def post(self, method: str, body: dict[str, Any]) -> Any:
        import treq

        response = yield self._http.post(f"{self.base}/{method}", data=json.dumps(body).encode())
        content = yield treq.content(response)
        return response.code, (json.loads(content) if content else None)

    @inlineCallbacks
    def find(self, call_id: str) -> Any:
        code, found = yield self.post("call/find", {"callId": call_id})
        return found[0] if code == 200 else None
