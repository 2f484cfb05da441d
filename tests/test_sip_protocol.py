"""Tests for wcsgw.sip.protocol: the Twisted UDP adapter, with a fake reactor and FakeDatagramTransport."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sipmessage import Message, Request
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.model import CallStatus, EndInfo
from wcsgw.sip.interfaces import CallStateError
from wcsgw.sip.message import create_response, serialize
from wcsgw.sip.protocol import CallHandle, SipUserAgent

from .sip_farend import OFFER, Recorder, answer_sdp, make_call

FAR = ("192.0.2.2", 5060)


class FakeUDPPort:
    """What ``listenUDP`` returns here: writes go to a FakeDatagramTransport."""

    def __init__(self, protocol: Any, port: int, interface: str, max_packet_size: int) -> None:
        self.protocol = protocol
        self.number = port or 40000
        self.interface = interface
        self.max_packet_size = max_packet_size
        self.transport = FakeDatagramTransport()
        self.stopped = False
        self.fail_writes = False

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail_writes:
            raise OSError("network unreachable")
        self.transport.write(data, addr)

    def getHost(self) -> IPv4Address:  # noqa: N802
        return IPv4Address("UDP", self.interface, self.number)

    def stopListening(self) -> None:  # noqa: N802
        self.stopped = True


class FakeReactor(Clock):
    """A Clock with listenUDP and a scripted ``resolve``."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakeUDPPort] = []
        self.names: dict[str, Any] = {}
        self.lookups: list[str] = []

    def listenUDP(  # noqa: N802
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192  # noqa: N803
    ) -> FakeUDPPort:
        udp = FakeUDPPort(protocol, port, interface, maxPacketSize)
        self.ports.append(udp)
        return udp

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        self.lookups.append(name)
        answer = self.names.get(name)
        if isinstance(answer, Deferred):
            return answer
        if answer is None:
            return fail(DNSLookupError(name))
        return succeed(answer)


def run_clock(reactor: Clock, until: float) -> None:
    """Advance to every pending call in turn (so each runs at its own time) up to ``until``."""
    while True:
        calls = [float(c.getTime()) for c in reactor.getDelayedCalls()]  # type: ignore[misc]
        if not calls or min(calls) > until:
            break
        reactor.advance(max(0.0, min(calls) - reactor.seconds()))
    if reactor.seconds() < until:
        reactor.advance(until - reactor.seconds())


class AdapterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.agent = SipUserAgent(self.reactor, bind_address="127.0.0.1", port=0, public_address="192.0.2.1")
        self.agent.start()
        self.udp = self.reactor.ports[0]
        self.listener = Recorder()
        self._read = 0

    def written(self) -> list[tuple[Message, tuple[str, int]]]:
        new = self.udp.transport.written[self._read :]
        self._read = len(self.udp.transport.written)
        return [(Message.parse(data), addr) for data, addr in new]

    def deliver(self, message: Message | bytes, source: tuple[str, int] = FAR) -> None:
        data = message if isinstance(message, bytes) else serialize(message)
        self.udp.protocol.datagramReceived(data, source)

    def place(self, **call: Any) -> tuple[CallHandle, Request]:
        handle = self.agent.place_call(make_call(**call), OFFER, self.listener)
        [(invite, _addr)] = self.written()
        assert isinstance(invite, Request)
        return handle, invite

    def establish(self) -> tuple[CallHandle, Request]:
        handle, invite = self.place()
        ok = create_response(invite, 200, to_tag="far")
        ok.headers.set("Contact", "<sip:bob@192.0.2.2:5060>")
        ok.headers.set("Content-Type", "application/sdp")
        ok.body = answer_sdp().encode()
        self.deliver(ok)
        self.written()
        return handle, invite


class AdapterTests(AdapterTestCase):
    def test_binds_one_socket(self) -> None:
        """start() binds one UDP socket on the interface, large enough for max_message_size + 1."""
        self.assertEqual(len(self.reactor.ports), 1)
        self.assertEqual((self.udp.interface, self.udp.max_packet_size), ("127.0.0.1", 65536))
        self.assertEqual(self.agent.port, 40000)

    def test_invite_goes_out_with_public_address(self) -> None:
        """The INVITE goes to domain:port; Via and Contact carry the public address and the bound port."""
        _handle, invite = self.place()
        self.assertEqual(self.udp.transport.written[0][1], FAR)
        self.assertEqual((invite.via[0].host, invite.via[0].port), ("192.0.2.1", 40000))
        self.assertEqual(str(invite.contact[0].uri), "sip:alice@192.0.2.1:40000")

    def test_one_delayed_call_drives_retransmissions(self) -> None:
        """A single DelayedCall drives Timer A; the retransmission is the same datagram."""
        self.place()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0.5)
        self.assertEqual(self.udp.transport.written[1], self.udp.transport.written[0])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.assertEqual(self.agent.counters["retransmissions"], 1)

    def test_responses_reach_the_listener(self) -> None:
        """Responses received on the socket drive the call: 180 RING, 200 ESTABLISHED and an ACK."""
        handle, invite = self.place()
        self.deliver(create_response(invite, 180, to_tag="far"))
        self.establish_from(invite)
        self.assertEqual(self.listener.statuses, [("RING", 180), ("ESTABLISHED", 200)])
        self.assertEqual(handle.status, CallStatus.ESTABLISHED)
        self.assertEqual(handle.remote_sdp, answer_sdp())

    def establish_from(self, invite: Request) -> None:
        ok = create_response(invite, 200, to_tag="far")
        ok.headers.set("Contact", "<sip:bob@192.0.2.2:5060>")
        ok.headers.set("Content-Type", "application/sdp")
        ok.body = answer_sdp().encode()
        self.deliver(ok)
        [(ack, _addr)] = self.written()
        self.assertEqual(ack.method, "ACK")  # type: ignore[attr-defined]

    def test_host_names_are_resolved_without_blocking_and_cached(self) -> None:
        """A host name domain is resolved with reactor.resolve once; sends wait for it, later ones use the cache."""
        pending: Deferred[str] = Deferred()
        self.reactor.names["pbx.example.org"] = pending
        self.agent.place_call(make_call(domain="pbx.example.org"), OFFER, self.listener)
        self.assertEqual(self.udp.transport.written, [])
        pending.callback("192.0.2.7")
        self.assertEqual(self.udp.transport.written[-1][1], ("192.0.2.7", 5060))
        self.reactor.advance(0.5)
        self.assertEqual(self.reactor.lookups, ["pbx.example.org"])
        self.assertEqual(len(self.udp.transport.written), 2)

    def test_unresolvable_host_fails_the_call(self) -> None:
        """A host name that does not resolve ends the call FAILED 503."""
        self.agent.place_call(make_call(domain="nowhere.invalid"), OFFER, self.listener)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 503, EndInfo.FAILED_BY_ERROR))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_write_error_fails_the_call(self) -> None:
        """A socket error on send is a transport error: the call ends FAILED 503."""
        self.udp.fail_writes = True
        self.agent.place_call(make_call(), OFFER, self.listener)
        self.assertEqual(self.listener.ended, (CallStatus.FAILED, 503, EndInfo.FAILED_BY_ERROR))

    def test_malformed_datagrams_are_counted_and_dropped(self) -> None:
        """Garbage, a bad start line and an oversized datagram are counted and dropped; keepalives are ignored."""
        self.deliver(b"\x00\xffgarbage")
        self.deliver(b"HELLO WORLD\r\n\r\n")
        self.deliver(b"SIP/2.0 999 Bad\r\nVia: SIP/2.0/UDP 192.0.2.1:40000;branch=z9hG4bKx\r\n\r\n")
        self.deliver(b"x" * 70000)
        self.deliver(b"\r\n\r\n")
        self.assertEqual(self.written(), [])
        counters = self.agent.counters
        self.assertEqual((counters["malformed"], counters["oversized"], counters["keepalives"]), (3, 1, 1))
        self.assertEqual(counters["errors"], 0)

    def test_answerable_bad_request_gets_400(self) -> None:
        """A request with an unparseable From, or a Content-Length beyond its body, gets 400 sent back per rport;
        one without From cannot be answered and is only dropped."""
        bad = (
            b"OPTIONS sip:gw@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKq;rport\r\n"
            b"From: <<sip:x@y\r\nTo: <sip:gw@192.0.2.1>\r\nCall-ID: q\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.deliver(bad, ("198.51.100.1", 6000))
        [(response, addr)] = self.written()
        self.assertEqual((response.code, addr), (400, ("198.51.100.1", 6000)))  # type: ignore[attr-defined]
        self.assertEqual(response.via[0].parameters["received"], "198.51.100.1")
        self.assertEqual(response.via[0].parameters["rport"], "6000")
        self.assertEqual(response.phrase, "Bad Request (invalid From header)")  # type: ignore[attr-defined]
        self.deliver(bad.replace(b"From: <<sip:x@y\r\n", b""))
        self.assertEqual(self.written(), [])
        short = bad.replace(b"<<sip:x@y", b"<sip:x@y>;tag=1").replace(b"Length: 0", b"Length: 10")
        self.deliver(short)
        [(response, _addr)] = self.written()
        expected = "Bad Request (Content-Length 10 exceeds the 0 byte body)"
        self.assertEqual(response.phrase, expected)  # type: ignore[attr-defined]

    def test_unmatched_response_is_dropped(self) -> None:
        """A response matching no transaction (and not a 2xx of a call) is dropped."""
        stray = (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1:40000;branch=z9hG4bKnone\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>;tag=2\r\nCall-ID: none\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
        )
        self.deliver(stray)
        self.assertEqual(self.agent.counters["dropped"], 1)
        self.assertEqual(self.written(), [])

    def test_out_of_dialog_options(self) -> None:
        """An out-of-dialog OPTIONS gets 200 with Allow, to the source address (rport)."""
        options = (
            b"OPTIONS sip:gw@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKo;rport\r\n"
            b"From: <sip:mon@x>;tag=9\r\nTo: <sip:gw@192.0.2.1>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n"
            b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        self.deliver(options, ("198.51.100.1", 6001))
        [(response, addr)] = self.written()
        self.assertEqual((response.code, addr), (200, ("198.51.100.1", 6001)))  # type: ignore[attr-defined]
        self.assertIn("INVITE", response.headers["Allow"])
        self.assertTrue(response.to_address.parameters.get("tag"))

    def test_send_info(self) -> None:
        """CallHandle.send_info fires with the final status; before the answer it fails with CallStateError."""
        handle, _invite = self.place()
        self.failureResultOf(handle.send_info("application/dtmf-relay", b"Signal=1"), CallStateError)
        self.establish_from(_invite)
        result = handle.send_info("application/dtmf-relay", b"Signal=1\r\nDuration=100\r\n")
        [(info, _addr)] = self.written()
        self.deliver(create_response(info, 200))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(result), 200)

    def test_hangup(self) -> None:
        """CallHandle.hangup sends BYE on an established call and reports FINISH."""
        handle, _invite = self.establish()
        handle.hangup()
        [(bye, _addr)] = self.written()
        self.assertEqual(bye.method, "BYE")  # type: ignore[attr-defined]
        self.assertTrue(handle.ended)
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 200, EndInfo.TERMINATED_BY_REQUEST))

    def test_stop_waits_for_the_bye_answer(self) -> None:
        """stop() hangs up with GATEWAY_SHUTDOWN, waits for the BYE's answer, then closes the socket."""
        handle, _invite = self.establish()
        stopped = self.agent.stop()
        [(bye, _addr)] = self.written()
        self.assertNoResult(stopped)
        self.deliver(create_response(bye, 200))  # type: ignore[arg-type]
        self.successResultOf(stopped)
        self.assertTrue(self.udp.stopped)
        self.assertEqual(self.listener.ended, (CallStatus.FINISH, 200, EndInfo.GATEWAY_SHUTDOWN))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertRaises(RuntimeError, self.agent.place_call, make_call(call_id="x"), OFFER, Recorder())

    def test_stop_gives_up_after_timeout(self) -> None:
        """Without answers stop() closes after stop_timeout, leaving no DelayedCall."""
        self.establish()
        stopped = self.agent.stop()
        self.reactor.advance(1.9)
        self.assertNoResult(stopped)
        self.reactor.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop_without_calls_is_immediate(self) -> None:
        """stop() with nothing live closes at once."""
        self.successResultOf(self.agent.stop())
        self.assertTrue(self.udp.stopped)
        self.successResultOf(self.agent.stop())

    def test_listener_errors_do_not_escape(self) -> None:
        """An exception raised by the listener is logged, never raised into the reactor."""

        class Broken(Recorder):
            def call_progress(self, *args: Any) -> None:
                raise RuntimeError("listener bug")

        self.listener = Broken()
        _handle, invite = self.place()
        self.deliver(create_response(invite, 180, to_tag="far"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


# -- fuzzing ---------------------------------------------------------------------------------------------------------

TRICKY = st.sampled_from(
    ["", "\x00", "99999999999999999999", "-1", "<sip:", ";;;", "SIP/2.0/UDP", "é", "a" * 300, "0", "INVITE", ","]
)


def templates(invite: Request) -> list[bytes]:
    """Valid messages relevant to the call, the raw material of the mutations."""
    sdp = answer_sdp().encode()
    out: list[bytes] = []
    for code in (100, 180, 183, 200, 401, 486):
        response = create_response(invite, code, to_tag="far" if code > 100 else None)
        response.headers.set("Contact", "<sip:bob@192.0.2.2:5060>")
        if code == 401:
            response.headers.set("WWW-Authenticate", 'Digest realm="r", nonce="n", qop="auth"')
        if code in (183, 200):
            response.headers.set("Content-Type", "application/sdp")
            response.body = sdp
        out.append(serialize(response))
    dialog = (
        f"From: {invite.headers['To']};tag=far\r\nTo: {invite.headers['From']}\r\nCall-ID: {invite.call_id}\r\n"
        "Contact: <sip:bob@192.0.2.2:5060>\r\nMax-Forwards: 70\r\n"
    )
    for number, method in enumerate(("BYE", "INVITE", "ACK", "UPDATE", "INFO", "OPTIONS", "CANCEL"), start=10):
        body = sdp if method in ("INVITE", "UPDATE") else b""
        head = (
            f"{method} sip:alice@192.0.2.1:40000 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bKf{number};rport\r\n{dialog}CSeq: {number} {method}\r\n"
            + ("Content-Type: application/sdp\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


@st.composite
def mutated(draw: st.DrawFn, template: bytes) -> bytes:
    data = template
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "drop_line", "dup_line", "value", "length", "insert"]))
        lines = data.split(b"\r\n")
        if kind == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data = data[:index] + bytes([data[index] ^ draw(st.integers(1, 255))]) + data[index + 1 :]
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "drop_line" and len(lines) > 1:
            del lines[draw(st.integers(0, len(lines) - 1))]
            data = b"\r\n".join(lines)
        elif kind == "dup_line" and lines:
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
            data = b"\r\n".join(lines)
        elif kind == "value" and len(lines) > 1:
            index = draw(st.integers(1, len(lines) - 1))
            name = lines[index].split(b":", 1)[0]
            lines[index] = name + b": " + draw(TRICKY).encode()
            data = b"\r\n".join(lines)
        elif kind == "length":
            data = data.replace(b"Content-Length:", b"Content-Length: %d\r\nX-Old:" % draw(st.integers(0, 10**6)), 1)
        elif kind == "insert":
            index = draw(st.integers(0, len(data)))
            data = data[:index] + draw(st.binary(max_size=20)) + data[index:]
    return data


class FuzzTests(AdapterTestCase):
    @settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.data())
    def test_random_and_mutated_datagrams(self, data: st.DataObject) -> None:
        """Random and mutated messages never raise out of datagramReceived nor inside the core, and after the call
        is hung up and every timer ran, no transaction, timer or call is left."""
        self.setUp()
        handle, invite = self.place()
        choices = templates(invite)
        for _ in range(data.draw(st.integers(1, 12))):
            if data.draw(st.booleans()):
                datagram = data.draw(st.binary(max_size=300))
            else:
                datagram = data.draw(mutated(data.draw(st.sampled_from(choices))))
            self.udp.protocol.datagramReceived(datagram, FAR)
            run_clock(self.reactor, self.reactor.seconds() + data.draw(st.sampled_from([0.0, 0.3, 2.0])))
        handle.hangup()
        run_clock(self.reactor, self.reactor.seconds() + 3600.0)
        self.assertEqual(self.agent.counters["errors"], 0)
        self.assertTrue(self.agent.core.idle, f"{self.agent.core.legs} {self.agent.core.transaction_count}")
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNotNone(self.listener.ended)
