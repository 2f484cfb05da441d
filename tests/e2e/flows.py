"""
A base for end-to-end tests that drive an in-process gateway through its REST API against SIPp far ends, with a
real CallApp receiver: starting each part, placing a call, and reading the statuses back from events and call/find.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.e2e.gateway import CallAppReceiver, InProcessGateway, wait_for
from tests.e2e.sipp import Sipp, require_sipp

Steps = Generator[Any, Any, None]


class FlowTestCase(TestCase):
    """``gateway()``, ``sipp()``, ``startup()`` and the status readers; subclasses set the class attributes."""

    timeout = 90
    #: Settings of every gateway of the class (a media port range apart from other classes').
    gateway_settings: ClassVar[dict[str, Any]] = {}
    #: Fields of every call/startup body besides callId, sipDomain and sipPort.
    call_fields: ClassVar[dict[str, Any]] = {"callee": "bob", "sipLogin": "alice"}

    def setUp(self) -> None:
        require_sipp()
        self.receiver = CallAppReceiver()
        self.receiver.start(self)

    @inlineCallbacks
    def gateway(self, **overrides: Any) -> Any:
        gateway = InProcessGateway(self, self.receiver, **{**self.gateway_settings, **overrides})
        yield gateway.start()
        self.gw = gateway
        return gateway

    @inlineCallbacks
    def sipp(self, scenario: str, **kwargs: Any) -> Any:
        sipp = Sipp(reactor, scenario, workdir=self.mktemp(), **kwargs)
        self.addCleanup(sipp.stop)
        yield sipp.start()
        self.far = sipp
        return sipp

    def body(self, call_id: str, **fields: Any) -> dict[str, Any]:
        return {"callId": call_id, "sipDomain": "127.0.0.1", "sipPort": self.far.port, **self.call_fields, **fields}

    @inlineCallbacks
    def startup(self, call_id: str, **fields: Any) -> Any:
        code, answer = yield self.gw.post("call/startup", self.body(call_id, **fields))
        self.assertEqual((code, answer), (200, {}))

    def statuses(self, call_id: str) -> list[str]:
        return [status for status, _ in self.receiver.statuses(call_id)]

    def events(self, call_id: str) -> list[dict[str, Any]]:
        return [event for _, event in self.receiver.events if event["callId"] == call_id]

    @inlineCallbacks
    def until(self, call_id: str, status: str, timeout: float = 30) -> Steps:
        yield wait_for(lambda: status in self.statuses(call_id), timeout=timeout, what=f"{call_id} {status}")

    @inlineCallbacks
    def far_end_passed(self, timeout: float = 20) -> Steps:
        code = yield self.far.wait_exit(timeout=timeout)
        self.assertEqual(code, 0, self.far.describe())

    @inlineCallbacks
    def check_final(self, call_id: str, expected: list[str], sip_status: int, info: str) -> Steps:
        """The CallApp events went through exactly ``expected``; call/find shows the same final state; the far
        end's scenario passed."""
        yield self.until(call_id, expected[-1])
        self.assertEqual(self.statuses(call_id), expected)
        final = self.events(call_id)[-1]
        self.assertEqual((final["sipStatus"], final["info"]), (sip_status, info))
        found = yield self.gw.find(call_id)
        self.assertEqual((found["status"], found["sipStatus"], found["info"]), (expected[-1], sip_status, info))
        yield self.far_end_passed()


def lose_first(port: Any, test: TestCase, sent_prefix: bytes, received_prefix: bytes) -> list[bytes]:
    """Make a SIP UDP port lose the first datagram it sends starting with ``sent_prefix`` and the first it
    receives starting with ``received_prefix``; returns the list of what was lost."""
    lost: list[bytes] = []
    write, receive = port.write, port.protocol.datagramReceived

    def lossy_write(data: bytes, addr: Any) -> Any:
        if data.startswith(sent_prefix) and not any(d.startswith(sent_prefix) for d in lost):
            lost.append(data)
            return None
        return write(data, addr)

    def lossy_receive(data: bytes, addr: Any) -> None:
        if data.startswith(received_prefix) and not any(d.startswith(received_prefix) for d in lost):
            lost.append(data)
            return
        receive(data, addr)

    test.patch(port, "write", lossy_write)
    test.patch(port.protocol, "datagramReceived", lossy_receive)
    return lost
