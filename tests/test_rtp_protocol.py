"""Tests for wcsgw.rtp.protocol: the Twisted adapter over fake UDP ports and a Clock."""

from __future__ import annotations

import random
import socket
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.ports import PortAllocator, PortsExhausted
from wcsgw.rtp.protocol import MediaStreamProtocol
from wcsgw.rtp.rtcp import RtcpBye, RtcpCompound
from wcsgw.rtp import udp
from wcsgw.rtp.session import AudioFrame, MediaParams, MediaStreamSession, SessionConfig
from wcsgw.rtp.udp import DrainCall, MediaSockets

REMOTE = ("203.0.113.5", 4000)


class FakePort(FakeDatagramTransport):
    """A listening UDP port that records writes and whether it was closed."""

    def __init__(self, port: int, interface: str) -> None:
        super().__init__()
        self.port = port
        self.interface = interface
        self.closed = False
        self.fail_writes = False

    def write(self, packet: bytes, addr: Any = None) -> None:
        if self.fail_writes:
            raise OSError(101, "Network is unreachable")
        super().write(packet, addr)

    def stopListening(self) -> None:
        self.closed = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)


class FakeUdpReactor(Clock):
    """A Clock that can also 'listen' on UDP ports; ports in ``busy`` fail to bind."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[int, FakePort] = {}
        self.busy: set[int] = set()

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakePort:
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        fake = FakePort(port, interface)
        protocol.makeConnection(fake)
        self.ports[port] = fake
        return fake


def params(**changes: Any) -> MediaParams:
    base = dict(
        kind="audio",
        codec="PCMU",
        payload_type=0,
        clock_rate=8000,
        remote_rtp_addr=REMOTE[0],
        remote_rtp_port=REMOTE[1],
    )
    base.update(changes)
    return MediaParams(**base)  # type: ignore[arg-type]


def rtp(seq: int) -> bytes:
    return bytes(RtpPacket(0, False, seq, seq * 160, 0x5555, payload=b"\xff" * 160))


class AdapterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeUdpReactor()
        self.reactor.advance(1000.0)
        self.events: list[object] = []
        config = SessionConfig(rtp_in_buffer=False, keepalive=True, keepalive_interval=1.0)
        self.session = MediaStreamSession(params(), config, self.reactor.seconds(), rng=random.Random(3))
        self.media = MediaStreamProtocol(self.reactor, self.session, self.events.append)
        self.media.listen(20000, 20001, interface="127.0.0.1")
        self.reactor.advance(0)  # the first keep-alive is due at once
        self.rtp_port, self.rtcp_port = self.reactor.ports[20000], self.reactor.ports[20001]

    def test_listen(self) -> None:
        """Both sockets are bound on the interface; the first keep-alive leaves from the RTP socket."""
        self.assertEqual((self.media.rtp_port, self.media.rtcp_port), (20000, 20001))
        self.assertEqual(self.rtp_port.interface, "127.0.0.1")
        self.assertEqual([addr for _, addr in self.rtp_port.written], [REMOTE])

    def test_datagram_to_event(self) -> None:
        """A datagram on the RTP socket reaches the session with the reactor's time; its frame reaches the
        callback."""
        self.media.rtp_protocol.datagramReceived(rtp(1), REMOTE)
        self.assertEqual(self.events, [AudioFrame(160, b"\xff" * 160, 0)])
        self.assertEqual(self.session.stats[0x5555].last_arrival, 1000.0)

    def test_a_batch_with_kernel_arrival_times(self) -> None:
        """Datagrams handed over together (MediaSockets' drain) reach the session with their own arrival times,
        their frames come out in order, and the timer stays one."""
        self.media.rtp_protocol.datagrams_arrived([(rtp(1), REMOTE, 999.5), (rtp(2), REMOTE, 999.52)])
        self.assertEqual(self.events, [AudioFrame(160, b"\xff" * 160, 0), AudioFrame(320, b"\xff" * 160, 0)])
        self.assertEqual([e.arrival for e in self.events], [999.5, 999.52])  # type: ignore[attr-defined]
        self.assertEqual(self.session.stats[0x5555].last_arrival, 999.52)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_one_timer(self) -> None:
        """Exactly one DelayedCall is armed, at the session's next deadline, and it drives the session."""
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.assertEqual(self.reactor.getDelayedCalls()[0].getTime(), self.session.get_timer())
        for i in range(5):
            self.media.rtp_protocol.datagramReceived(rtp(i), REMOTE)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.rtp_port.written), 2)  # the second keep-alive
        self.reactor.advance(10.0)
        self.assertTrue(self.rtcp_port.written)  # receiver reports on the RTCP socket
        self.assertEqual({addr for _, addr in self.rtcp_port.written}, {(REMOTE[0], REMOTE[1] + 1)})
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_never_raises(self) -> None:
        """Errors in the session or in the event callback are logged and counted, not raised."""

        def broken(*args: object) -> None:
            raise RuntimeError("boom")

        self.session.receive_rtp = broken  # type: ignore[method-assign]
        self.media.rtp_protocol.datagramReceived(rtp(1), REMOTE)
        self.assertEqual(self.media.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.media.on_event = broken
        self.media.rtcp_protocol.datagramReceived(b"\x80\xc9\x00\x01\x00\x00\x55\x55", (REMOTE[0], 4001))
        self.session.request_keyframe(0)  # nothing for audio
        self.media.rtcp_protocol.datagramReceived(b"garbage", (REMOTE[0], 4001))
        self.assertEqual(self.session.counters.rtcp_malformed, 1)

    def test_callback_errors_counted(self) -> None:
        """An exception in the event callback is counted and the next events still flow."""
        calls = []

        def flaky(event: object) -> None:
            calls.append(event)
            if len(calls) == 1:
                raise ValueError("first one fails")

        self.media.on_event = flaky
        self.media.rtp_protocol.datagramReceived(rtp(1), REMOTE)
        self.media.rtp_protocol.datagramReceived(rtp(2), REMOTE)
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.media.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_on_events_takes_a_deliverys_events_together(self) -> None:
        """With ``on_events`` the frames of one delivery come in one call, in order, and ``on_event`` gets none;
        what ``on_events`` raises is counted and logged, and the next delivery still comes."""
        deliveries: list[list[object]] = []

        def flaky(events: list[object]) -> None:
            deliveries.append(list(events))
            if len(deliveries) == 1:
                raise ValueError("the first delivery fails")

        self.media.on_events = flaky
        self.media.rtp_protocol.datagrams_arrived([(rtp(1), REMOTE, 999.5), (rtp(2), REMOTE, 999.52)])
        self.media.rtp_protocol.datagrams_arrived([(rtp(3), REMOTE, 999.54)])
        self.assertEqual(deliveries, [[AudioFrame(160, b"\xff" * 160, 0), AudioFrame(320, b"\xff" * 160, 0)],
                                      [AudioFrame(480, b"\xff" * 160, 0)]])
        self.assertEqual(self.events, [])
        self.assertEqual(self.media.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_send_errors(self) -> None:
        """A failing sendto is counted, not raised."""
        self.rtp_port.fail_writes = True
        self.reactor.advance(1.0)
        self.assertEqual(self.media.send_errors, 1)

    def test_stop(self) -> None:
        """stop says BYE, closes both sockets and cancels the timer; later datagrams are ignored."""
        d = self.media.stop()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.rtp_port.closed and self.rtcp_port.closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        bye = RtcpCompound.parse(self.rtcp_port.written[-1][0]).packets[-1]
        self.assertEqual(bye, RtcpBye([self.session.ssrc]))
        self.media.rtp_protocol.datagramReceived(rtp(1), REMOTE)
        self.assertEqual(self.events, [])
        self.successResultOf(self.media.stop())

    def test_commands(self) -> None:
        """send_dtmf, set_hold and update_params go through to the session and re-arm the timer."""
        session = MediaStreamSession(params(telephone_event_pt=101), SessionConfig(), 1000.0)
        media = MediaStreamProtocol(self.reactor, session, self.events.append)
        media.listen(20010, None)
        media.send_dtmf("5")
        self.assertEqual(session.counters.dtmf_packets_sent, 1)
        self.reactor.advance(0.02)
        self.assertEqual(session.counters.dtmf_packets_sent, 2)
        media.set_hold(True)
        self.assertTrue(session.on_hold)
        media.update_params(params(telephone_event_pt=101, remote_rtp_port=4100))
        self.assertEqual(session.params.remote_rtp_port, 4100)
        media.request_keyframe()
        self.assertIsNone(media.rtcp_port)
        self.assertEqual(len([c for c in self.reactor.getDelayedCalls() if c.func == media._on_timer]), 1)


class BindTests(SynchronousTestCase):
    def test_rtcp_bind_failure_releases_rtp(self) -> None:
        """If the RTCP port cannot be bound, the RTP port is closed again and the error raised."""
        reactor = FakeUdpReactor()
        reactor.busy.add(20001)
        media = MediaStreamProtocol(reactor, MediaStreamSession(params(), SessionConfig(), 0.0), lambda e: None)
        self.assertRaises(CannotListenError, media.listen, 20000, 20001)
        self.assertTrue(reactor.ports[20000].closed)

    def test_allocated_skips_busy(self) -> None:
        """listen_allocated skips a pair that fails to bind and uses the next; with none left, PortsExhausted."""
        reactor = FakeUdpReactor()
        reactor.busy.add(20000)
        allocator = PortAllocator(20000, 20003, reactor)
        media = MediaStreamProtocol(reactor, MediaStreamSession(params(), SessionConfig(), 0.0), lambda e: None)
        self.assertEqual(media.listen_allocated(allocator, "127.0.0.1"), (20002, 20003))
        other = MediaStreamProtocol(reactor, MediaStreamSession(params(), SessionConfig(), 0.0), lambda e: None)
        self.assertRaises(PortsExhausted, other.listen_allocated, allocator)


class LateAttachTests(SynchronousTestCase):
    def test_sockets_before_session(self) -> None:
        """Sockets bound before the session exists drop datagrams (counted) until a session is attached."""
        reactor = FakeUdpReactor()
        events: list[object] = []
        proto = MediaStreamProtocol(reactor, None, events.append)
        proto.listen(40000, 40001, interface="127.0.0.1")
        proto.datagram_received("rtp", b"\x80\x00\x00\x01" + b"\x00" * 8, ("127.0.0.1", 5000))
        proto.request_keyframe()
        proto.set_hold(True)
        self.assertEqual((proto.early_datagrams, events, reactor.getDelayedCalls()), (1, [], []))
        with self.assertRaises(ValueError):
            proto.send_dtmf("1")
        self.successResultOf(proto.stop())


class LazyTimerTests(SynchronousTestCase):
    def test_a_later_deadline_keeps_the_armed_timer(self) -> None:
        """A packet that moves the session's deadline later leaves the armed timer alone: it fires early, finds
        nothing due, and is armed again for the new deadline, so inactivity is reported on time, not early."""
        reactor = FakeUdpReactor()
        reactor.advance(1000.0)
        events: list[object] = []
        config = SessionConfig(rtp_in_buffer=False, keepalive=False, rtp_activity_timeout=2.0,
                               rtcp_min_interval=60.0)
        session = MediaStreamSession(params(), config, reactor.seconds(), rng=random.Random(3))
        media = MediaStreamProtocol(reactor, session, events.append)
        media.listen(20000, 20001, interface="127.0.0.1")
        (armed,) = reactor.getDelayedCalls()
        self.assertEqual(armed.getTime(), 1002.0)
        reactor.advance(1.0)
        media.rtp_protocol.datagramReceived(rtp(1), REMOTE)  # inactivity now due at 1003
        self.assertEqual(reactor.getDelayedCalls(), [armed])
        reactor.advance(1.0)  # 1002: the early fire
        self.assertEqual([type(e).__name__ for e in events], ["AudioFrame"])
        (rearmed,) = reactor.getDelayedCalls()
        self.assertEqual(rearmed.getTime(), 1003.0)
        reactor.advance(1.0)
        self.assertEqual([type(e).__name__ for e in events], ["AudioFrame", "RtpInactivity"])

    def test_in_order_batches_leave_the_timer_alone(self) -> None:
        """Batches that only continue the stream move no deadline earlier: the timer is not looked at again (no
        get_timer call); a batch with a reordered packet, which the jitter buffer holds, re-arms it for the
        buffer's deadline."""
        reactor = FakeUdpReactor()
        config = SessionConfig(rtp_in_buffer=True, jitter_buffer_ms=50.0, keepalive=False, rtcp_min_interval=60.0)
        session = MediaStreamSession(params(), config, reactor.seconds(), rng=random.Random(3))
        media = MediaStreamProtocol(reactor, session, lambda event: None)
        media.listen(20000, 20001, interface="127.0.0.1")
        looked = []
        original = session.get_timer
        session.get_timer = lambda: looked.append(1) or original()  # type: ignore[method-assign]
        # the first packets latch the source and wait in the buffer until its depth has passed: the slow path
        media.rtp_protocol.datagrams_arrived([(rtp(1), REMOTE, 0.0), (rtp(2), REMOTE, 0.0)])
        reactor.advance(0.05)
        self.assertEqual(session.counters.frames, 2)
        looked.clear()
        for seq in range(3, 30, 3):
            media.rtp_protocol.datagrams_arrived([(rtp(n), REMOTE, reactor.seconds())
                                                  for n in (seq, seq + 1, seq + 2)])
        self.assertEqual(session.counters.frames, 29)
        self.assertEqual(looked, [])
        media.rtp_protocol.datagrams_arrived([(rtp(31), REMOTE, reactor.seconds())])  # 30 is missing: 31 waits
        self.assertEqual(len(looked), 1)
        (rearmed,) = reactor.getDelayedCalls()
        self.assertAlmostEqual(rearmed.getTime(), reactor.seconds() + 0.05)

    def test_inactivity_reported_again_after_media_resumes(self) -> None:
        """After an inactivity report the timer waits only for RTCP; media that resumes (in order, the fast path)
        makes the inactivity deadline count again, so a second silence is reported on time too."""
        reactor = FakeUdpReactor()
        events: list[object] = []
        config = SessionConfig(rtp_in_buffer=False, keepalive=False, rtp_activity_timeout=2.0, rtcp_min_interval=60.0)
        session = MediaStreamSession(params(), config, reactor.seconds(), rng=random.Random(3))
        media = MediaStreamProtocol(reactor, session, events.append)
        media.listen(20000, 20001, interface="127.0.0.1")
        seq = 1
        for _ in range(2):
            for _ in range(5):
                media.rtp_protocol.datagrams_arrived([(rtp(seq), REMOTE, reactor.seconds()),
                                                      (rtp(seq + 1), REMOTE, reactor.seconds())])
                seq += 2
                reactor.advance(0.04)
            silent_from = reactor.seconds() - 0.04
            while not any(type(e).__name__ == "RtpInactivity" for e in events):
                reactor.advance(0.1)
                self.assertLess(reactor.seconds(), silent_from + 5.0, "inactivity not reported in time")
            self.assertLessEqual(abs(reactor.seconds() - (silent_from + 2.0)), 0.11)
            events.clear()


class DrainTimerTests(SynchronousTestCase):
    def test_the_session_timer_rides_on_the_drains_unless_a_deadline_must_be_kept(self) -> None:
        """Through ``MediaSockets`` the session's timer is one of the drains' (``call_later``: no reactor timer
        of its own) while its deadlines may lag (keep-alive RTP, RTCP); DTMF, paced every 20 ms, gets a reactor
        timer until the digit is out, then the timer rides on the drains again."""
        if not udp.available():
            raise SkipTest("no epoll here")
        clock = Clock()
        clock.advance(1000.0)
        sockets = MediaSockets(clock, interval=0.04)
        self.addCleanup(sockets.close)
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the far end, on loopback: keep-alives land here
        self.addCleanup(far.close)
        far.bind(("127.0.0.1", 0))
        far.setblocking(False)
        config = SessionConfig(rtp_in_buffer=False, keepalive=True, keepalive_interval=1.0, rtcp_min_interval=60.0)
        session = MediaStreamSession(params(remote_rtp_addr="127.0.0.1", remote_rtp_port=far.getsockname()[1],
                                            telephone_event_pt=101), config, clock.seconds(), rng=random.Random(3))
        media = MediaStreamProtocol(clock, session, lambda event: None, sockets=sockets)
        media.listen(0, 0, interface="127.0.0.1")

        def run(seconds: float) -> None:  # from one delayed call to the next
            end = clock.seconds() + seconds
            while clock.seconds() < end:
                due = min(call.getTime() for call in clock.getDelayedCalls())
                clock.advance(max(0.0, min(due, end) - clock.seconds()))

        def received() -> int:
            count = 0
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                try:
                    far.recv(2048)
                    count += 1
                except BlockingIOError:
                    if count >= wanted:
                        break
                    time.sleep(0.01)
            return count

        self.assertIsInstance(media._timer, DrainCall)
        self.assertEqual(clock.getDelayedCalls(), [sockets._timer])  # the drains' timer, nothing else
        run(2.2)  # keep-alives at the first drain (1000.04), then at the drains a second after the one before
        self.assertEqual(session.counters.keepalive_sent, 3)
        wanted = 3
        self.assertEqual(received(), 3)
        self.assertEqual(clock.getDelayedCalls(), [sockets._timer])
        media.send_dtmf("5")
        self.assertNotIsInstance(media._timer, DrainCall)
        self.assertEqual(len(clock.getDelayedCalls()), 2)
        sent_at: list[float] = []
        transport = media.rtp_protocol.transport
        write = transport.write

        def timed_write(datagram: bytes, addr: Any) -> None:
            sent_at.append(round(clock.seconds(), 3))
            write(datagram, addr)

        transport.write = timed_write
        run(0.5)
        self.assertGreaterEqual(len(sent_at), 8)  # 160 ms of digit every 20 ms, and its end packets
        self.assertEqual(sorted({round(b - a, 3) for a, b in zip(sent_at, sent_at[1:9])}), [0.02])
        self.assertIsInstance(media._timer, DrainCall)
        self.assertEqual(clock.getDelayedCalls(), [sockets._timer])
        self.successResultOf(media.stop())

class ConnectingPort(FakePort):
    """A FakePort with MediaSocket's connect_peer/disconnect_peer, recorded."""

    def __init__(self, port: int, interface: str) -> None:
        super().__init__(port, interface)
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = False

    def connect_peer(self, addr: Any, local_address: str | None = None) -> None:
        self.calls.append(("connect", addr, local_address))
        if self.refuse:
            raise OSError("it would receive on another address")

    def disconnect_peer(self) -> None:
        self.calls.append(("disconnect",))


class ConnectingReactor(FakeUdpReactor):
    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "",
                  maxPacketSize: int = 8192) -> FakePort:
        fake = ConnectingPort(port, interface)
        protocol.makeConnection(fake)
        self.ports[port] = fake
        return fake


class FollowLatchTests(SynchronousTestCase):
    """The RTP socket is connected to the far end the session latched, and disconnected when it re-latches."""

    def setUp(self) -> None:
        self.reactor = ConnectingReactor()
        self.reactor.advance(1000.0)
        config = SessionConfig(rtp_in_buffer=False)
        self.session = MediaStreamSession(params(), config, self.reactor.seconds(), rng=random.Random(3))
        self.media = MediaStreamProtocol(self.reactor, self.session, lambda event: None)
        self.media.local_address = "198.51.100.1"
        self.media.listen(20000, 20001, interface="0.0.0.0")
        self.port: ConnectingPort = self.reactor.ports[20000]  # type: ignore[assignment]

    def test_connect_on_latch_and_disconnect_on_new_remote(self) -> None:
        self.assertEqual(self.port.calls, [])  # nothing latched yet
        self.media.rtp_protocol.datagrams_arrived([(rtp(1), REMOTE, None)])
        self.assertEqual(self.port.calls, [("connect", REMOTE, "198.51.100.1")])
        self.media.rtp_protocol.datagrams_arrived([(rtp(2), REMOTE, None), (rtp(3), REMOTE, None)])
        self.assertEqual(len(self.port.calls), 1)  # in-order packets: nothing to look at
        self.media.update_params(params(remote_rtp_addr="203.0.113.9"))
        self.assertEqual(self.port.calls[-1], ("disconnect",))
        self.media.rtp_protocol.datagrams_arrived([(rtp(4), ("203.0.113.9", 4000), None)])
        self.assertEqual(self.port.calls[-1], ("connect", ("203.0.113.9", 4000), "198.51.100.1"))

    def test_a_refused_connect_is_not_tried_again_for_that_address(self) -> None:
        self.port.refuse = True
        self.media.rtp_protocol.datagrams_arrived([(rtp(1), REMOTE, None)])
        self.media.rtp_protocol.datagrams_arrived([(rtp(5), REMOTE, None)])  # a gap: the slow path again
        self.assertEqual(self.port.calls, [("connect", REMOTE, "198.51.100.1")])
        self.assertEqual(self.media.errors, 0)
