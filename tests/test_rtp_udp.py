"""Tests for wcsgw.rtp.udp: media sockets behind one reactor reader, on real loopback sockets."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import AlreadyCalled, AlreadyCancelled, CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface.verify import verifyObject

from tests.e2e.gateway import wait_for
from wcsgw.rtp import udp
from wcsgw.rtp.udp import MediaSockets

LOCAL = "127.0.0.1"


class Recorder(DatagramProtocol):
    def __init__(self, fail_on: bytes | None = None) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.fail_on = fail_on
        self.stopped = False

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802
        if datagram == self.fail_on:
            raise RuntimeError("protocol failure on purpose")
        self.datagrams.append((datagram, addr))

    def stopProtocol(self) -> None:  # noqa: N802
        self.stopped = True


class MediaSocketsTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        if not udp.available():
            raise SkipTest("no epoll here")
        self.sockets = MediaSockets(reactor)
        self.addCleanup(self.sockets.close)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind((LOCAL, 0))
        self.peer.settimeout(10)
        self.addCleanup(self.peer.close)

    def bind(self, protocol: DatagramProtocol) -> Any:
        return self.sockets.bind(0, protocol, LOCAL)

    def test_the_set_is_a_read_descriptor(self) -> None:
        """Without an interval the epoll set is one reader of the reactor: it provides IReadDescriptor."""
        self.assertTrue(verifyObject(IReadDescriptor, self.sockets))

    @inlineCallbacks
    def test_datagrams_reach_their_own_protocol(self) -> Any:
        """Datagrams sent to two sockets reach the protocol bound to each, with the sender's (host, port); the
        reactor watches one reader for both."""
        first, second = Recorder(), Recorder()
        a, b = self.bind(first), self.bind(second)
        self.assertEqual([r for r in reactor.getReaders() if r is self.sockets], [self.sockets])
        for n in range(20):
            self.peer.sendto(b"a%d" % n, (LOCAL, a.getHost().port))
            self.peer.sendto(b"b%d" % n, (LOCAL, b.getHost().port))
        yield wait_for(lambda: len(first.datagrams) == 20 and len(second.datagrams) == 20, what="40 datagrams")
        self.assertEqual([d for d, _ in first.datagrams], [b"a%d" % n for n in range(20)])
        self.assertEqual([d for d, _ in second.datagrams], [b"b%d" % n for n in range(20)])
        self.assertEqual({addr for _, addr in first.datagrams}, {self.peer.getsockname()})
        self.assertEqual(self.sockets.datagrams, 40)
        self.assertLessEqual(self.sockets.drains, 40)

    def test_write_sends_from_the_socket(self) -> None:
        """A socket's write sends from its own port."""
        media = self.bind(Recorder())
        media.write(b"hello", self.peer.getsockname())
        data, addr = self.peer.recvfrom(100)
        self.assertEqual((data, addr), (b"hello", (LOCAL, media.getHost().port)))

    @inlineCallbacks
    def test_a_failing_protocol_does_not_stop_the_others(self) -> Any:
        """An exception from one protocol is logged and counted; later datagrams, to it and to other sockets,
        are still delivered."""
        bad, good = Recorder(fail_on=b"boom"), Recorder()
        a, b = self.bind(bad), self.bind(good)
        self.peer.sendto(b"boom", (LOCAL, a.getHost().port))
        self.peer.sendto(b"ok", (LOCAL, b.getHost().port))
        self.peer.sendto(b"after", (LOCAL, a.getHost().port))
        yield wait_for(lambda: good.datagrams and bad.datagrams, what="the datagrams after the failure")
        self.assertEqual(self.sockets.protocol_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(bad.datagrams[0][0], b"after")

    def test_stop_listening_frees_the_port_and_the_reader(self) -> None:
        """stopListening closes the socket (the port can be bound again), stops the protocol, and the last one
        removes the reader from the reactor."""
        recorder = Recorder()
        media = self.bind(recorder)
        port = media.getHost().port
        self.assertIn(self.sockets, reactor.getReaders())
        self.successResultOf(media.stopListening())
        self.assertTrue(recorder.stopped)
        self.assertNotIn(self.sockets, reactor.getReaders())
        self.assertEqual(len(self.sockets), 0)
        again = self.sockets.bind(port, Recorder(), LOCAL)
        self.assertEqual(again.getHost().port, port)

    def test_a_busy_port_raises_cannot_listen(self) -> None:
        """Binding a port in use raises CannotListenError, as listenUDP does, and leaves nothing registered."""
        media = self.bind(Recorder())
        with self.assertRaises(CannotListenError):
            self.sockets.bind(media.getHost().port, Recorder(), LOCAL)
        self.assertEqual(len(self.sockets), 1)


class Stamped(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[float] = []
        self.batches: list[int] = []

    def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
        self.batches.append(len(datagrams))
        for datagram, addr, arrival in datagrams:
            self.datagrams.append((datagram, addr))
            self.arrivals.append(arrival)


class SteppingCpuClock:
    """A thread CPU clock for the drains' load: each read adds ``step`` CPU seconds (a drain reads it twice, so
    its CPU is one step)."""

    def __init__(self) -> None:
        self.step = 0.0
        self.cpu = 0.0

    def __call__(self) -> float:
        self.cpu += self.step
        return self.cpu


class IntervalTests(TestCase):
    """MediaSockets with an interval: drains on a timer, arrival times from the kernel when asked."""

    timeout = 30

    def setUp(self) -> None:
        if not udp.available():
            raise SkipTest("no epoll here")
        self.sockets = MediaSockets(reactor, interval=0.05, kernel_timestamps=True)
        self.addCleanup(self.sockets.close)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind((LOCAL, 0))
        self.addCleanup(self.peer.close)

    @inlineCallbacks
    def test_datagrams_come_in_batches_with_their_kernel_arrival_time(self) -> Any:
        """Datagrams sent between two drains are delivered together, in one ``datagrams_arrived`` call per drain,
        each with the time the kernel received it (before the drain, after the send); no reactor reader is
        added."""
        recorder = Stamped()
        media = self.sockets.bind(0, recorder, LOCAL)
        self.assertNotIn(self.sockets, reactor.getReaders())
        # The kernel turns time stamping on for the first socket that asks a moment later (from a work queue): a
        # datagram that arrives before that is stamped when it is read instead (seen here: the first ones came
        # out 50 ms later than the rest, one drain).  One datagram first, then.
        self.peer.sendto(b"first", (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="the first datagram")
        del recorder.datagrams[:], recorder.arrivals[:], recorder.batches[:]
        sent = []
        for n in range(30):
            sent.append(time.time())
            self.peer.sendto(b"%d" % n, (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 30, what="30 datagrams")
        delivered = time.time()
        self.assertEqual([d for d, _ in recorder.datagrams], [b"%d" % n for n in range(30)])
        # 50 ms apart: the 30 datagrams take one drain or two (more only if the sending took that long)
        self.assertLessEqual(len(recorder.batches), 2 + int((sent[-1] - sent[0]) / 0.05))
        self.assertEqual(sum(recorder.batches), 30)
        for when, arrival in zip(sent, recorder.arrivals):
            self.assertGreaterEqual(arrival, when - 0.001)  # kernel microseconds against time.time()
            self.assertLessEqual(arrival, delivered)
        self.assertEqual(recorder.arrivals, sorted(recorder.arrivals))
        # the reactor thread's CPU of the drains, in its two parts
        self.assertGreater(self.sockets.read_cpu, 0.0)
        self.assertGreater(self.sockets.deliver_cpu, 0.0)

    def test_a_sockets_datagrams_are_delivered_before_the_next_socket_is_read(self) -> None:
        """A drain reads one socket until it is empty and delivers that before it reads the next: when the first
        delivery of a drain runs, the other socket's datagram is still in the kernel."""
        seen: list[tuple[str, bool]] = []
        medias: dict[str, Any] = {}

        class Peeking(Stamped):
            def __init__(self, name: str, other: str) -> None:
                super().__init__()
                self.name, self.other = name, other

            def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
                super().datagrams_arrived(datagrams)
                try:
                    medias[self.other].socket.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    queued = True
                except BlockingIOError:
                    queued = False
                seen.append((self.name, queued))

        medias["a"] = self.sockets.bind(0, Peeking("a", "b"), LOCAL)
        medias["b"] = self.sockets.bind(0, Peeking("b", "a"), LOCAL)
        for name, media in medias.items():
            self.peer.sendto(name.encode(), (LOCAL, media.getHost().port))
            readable, _, _ = select.select([media.socket], [], [], 10.0)
            self.assertTrue(readable, f"the datagram for {name} did not arrive within 10 s")
        self.sockets.drain()
        self.assertEqual(sorted(name for name, _ in seen), ["a", "b"])
        self.assertEqual([queued for _, queued in seen], [True, False])

    def test_a_drain_reads_at_most_max_per_socket_from_a_socket(self) -> None:
        """``max_per_socket`` datagrams at most from one socket a drain (the rest wait for the next drain), and
        ``max_batch`` in all."""
        sockets = MediaSockets(Clock(), interval=0.01, max_batch=3, max_per_socket=2)
        self.addCleanup(sockets.close)
        busy, other = Stamped(), Stamped()
        busy_media = sockets.bind(0, busy, LOCAL)
        other_media = sockets.bind(0, other, LOCAL)
        for n in range(5):
            self.peer.sendto(b"%d" % n, (LOCAL, busy_media.getHost().port))
        self.peer.sendto(b"x", (LOCAL, other_media.getHost().port))
        per_drain = []
        deadline = time.monotonic() + 10.0
        while len(busy.datagrams) + len(other.datagrams) < 6 and time.monotonic() < deadline:
            before = sockets.datagrams
            sockets.drain()
            per_drain.append(sockets.datagrams - before)
        self.assertEqual([d for d, _ in busy.datagrams], [b"%d" % n for n in range(5)])
        self.assertEqual([d for d, _ in other.datagrams], [b"x"])
        self.assertTrue(all(0 < batch <= 2 for batch in busy.batches), busy.batches)
        self.assertGreaterEqual(len(busy.batches), 3)
        self.assertEqual(sum(per_drain), 6)
        self.assertLessEqual(max(per_drain), 3)
        self.assertRaises(ValueError, MediaSockets, Clock(), interval=0.01, max_per_socket=0)

    @inlineCallbacks
    def test_every_attribute_is_a_slot(self) -> Any:
        """The set keeps its attributes in ``__slots__`` (more than 30, see MediaStreamSession's): after drains
        that delivered datagrams, its ``__dict__`` is still empty."""
        recorder = Stamped()
        media = self.sockets.bind(0, recorder, LOCAL)
        self.peer.sendto(b"one", (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="the datagram")
        self.assertEqual(vars(self.sockets), {})

    @inlineCallbacks
    def test_without_kernel_timestamps_a_datagram_arrives_when_its_drain_reads_it(self) -> Any:
        """Without ``kernel_timestamps`` no socket asks for SO_TIMESTAMP, and the datagrams a drain reads all
        arrive at the drain's time: after they were sent, before they are delivered, at most an interval late."""
        sockets = MediaSockets(reactor, interval=0.05)
        self.addCleanup(sockets.close)
        recorder = Stamped()
        media = sockets.bind(0, recorder, LOCAL)
        self.assertEqual(media.socket.getsockopt(socket.SOL_SOCKET, udp.SO_TIMESTAMP), 0)
        self.assertEqual(self.sockets.bind(0, Recorder(), LOCAL).socket.getsockopt(socket.SOL_SOCKET,
                                                                                  udp.SO_TIMESTAMP), 1)
        first_sent = time.time()
        for n in range(10):
            self.peer.sendto(b"%d" % n, (LOCAL, media.getHost().port))
        last_sent = time.time()
        yield wait_for(lambda: len(recorder.datagrams) == 10, what="10 datagrams")
        delivered = time.time()
        self.assertEqual([d for d, _ in recorder.datagrams], [b"%d" % n for n in range(10)])
        index = 0
        for size in recorder.batches:  # one arrival time per drain
            self.assertEqual(len(set(recorder.arrivals[index:index + size])), 1)
            index += size
        self.assertGreaterEqual(recorder.arrivals[0], first_sent)
        self.assertLessEqual(recorder.arrivals[-1], delivered)
        self.assertLessEqual(recorder.arrivals[0], last_sent + 0.05 + 1.0)  # an interval, and a slow machine

    @inlineCallbacks
    def test_a_socket_may_ask_for_kernel_timestamps_alone(self) -> Any:
        """``bind(kernel_timestamps=...)`` decides for that socket, whatever the ``MediaSockets``' own: a stamped
        socket's datagram arrives when the kernel received it, an unstamped one's when its drain read it; without
        an interval no socket is stamped."""
        sockets = MediaSockets(reactor, interval=0.05)
        self.addCleanup(sockets.close)
        stamped, plain = Stamped(), Stamped()
        media = sockets.bind(0, stamped, LOCAL, kernel_timestamps=True)
        other = sockets.bind(0, plain, LOCAL)
        self.assertEqual((media.stamped, other.stamped), (True, False))
        self.assertEqual([m.socket.getsockopt(socket.SOL_SOCKET, udp.SO_TIMESTAMP) for m in (media, other)], [1, 0])
        self.assertFalse(self.sockets.bind(0, Recorder(), LOCAL, kernel_timestamps=False).stamped)
        readable = MediaSockets(reactor)
        self.addCleanup(readable.close)
        self.assertFalse(readable.bind(0, Recorder(), LOCAL, kernel_timestamps=True).stamped)
        # (the first datagram after time stamping is turned on may be stamped when read: see above)
        self.peer.sendto(b"first", (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(stamped.datagrams) == 1, what="the first datagram")
        self.peer.sendto(b"a", (LOCAL, media.getHost().port))
        between = time.time()
        self.peer.sendto(b"b", (LOCAL, other.getHost().port))
        yield wait_for(lambda: len(stamped.datagrams) == 2 and len(plain.datagrams) == 1, what="both datagrams")
        self.assertLessEqual(stamped.arrivals[1], between + 0.001)  # kernel microseconds against time.time()
        self.assertGreaterEqual(plain.arrivals[0], between)

    @inlineCallbacks
    def test_a_socket_may_stamp_only_the_first_datagram_of_each_read(self) -> Any:
        """``bind(stamp_each=False)``: of what a read finds, the first datagram arrives at the kernel's time and
        the others as None (read with ``recv``), but for one that looks like RTCP, which gets its own time
        (``SIOCGSTAMP``); sockets stamp each datagram by default."""
        self.assertTrue(self.sockets.bind(0, Recorder(), LOCAL).stamp_each)
        recorder = Stamped()
        media = self.sockets.bind(0, recorder, LOCAL, hold=0.3, stamp_each=False)  # held: one read takes all
        self.assertEqual((media.stamped, media.stamp_each), (True, False))
        self.peer.sendto(b"first", (LOCAL, media.getHost().port))  # (time stamping comes on: see above)
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="the first datagram")
        del recorder.datagrams[:], recorder.arrivals[:], recorder.batches[:]
        rtcp = b"\x80\xc8\x00\x06" + bytes(24)  # a sender report (rtcp-mux)
        sent = []
        for data in (b"\x80\x00a", b"\x80\x00b", rtcp, b"\x80\x00c"):
            sent.append(time.time())
            self.peer.sendto(data, (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 4, what="4 datagrams")
        delivered = time.time()
        self.assertEqual(recorder.batches, [4])
        self.assertEqual([d for d, _ in recorder.datagrams], [b"\x80\x00a", b"\x80\x00b", rtcp, b"\x80\x00c"])
        first, second, report, last = recorder.arrivals
        self.assertIsNone(second)
        self.assertIsNone(last)
        for arrival, when in ((first, sent[0]), (report, sent[2])):
            assert arrival is not None
            self.assertGreaterEqual(arrival, when - 0.001)  # kernel microseconds against time.time()
            self.assertLessEqual(arrival, delivered)
        self.assertLessEqual(first, report)

    def test_the_timer_stops_with_the_last_socket(self) -> None:
        """The drain timer runs only while a socket is bound."""
        media = self.sockets.bind(0, Recorder(), LOCAL)
        self.assertIsNotNone(self.sockets._timer)
        self.assertTrue(self.sockets._timer.active())
        timer = self.sockets._timer
        self.successResultOf(media.stopListening())
        self.assertFalse(timer.active())
        self.assertIsNone(self.sockets._timer)

    def test_drains_start_an_interval_apart_however_long_they_take(self) -> None:
        """Drains start ``interval`` apart: the time one takes does not push the next one back (the datagrams
        wait an interval at most, not an interval plus the drain); one that takes longer than the interval is
        followed at once."""
        clock = Clock()
        sockets = MediaSockets(clock, interval=0.04)
        self.addCleanup(sockets.close)

        class Slow(Stamped):
            cost = 0.0

            def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
                super().datagrams_arrived(datagrams)
                clock.rightNow += self.cost  # the drain's work takes this long

        slow = Slow()
        media = sockets.bind(0, slow, LOCAL)
        seen = []  # after each drain with a datagram: (its end, drains so far, when the next one is due)
        for cost in (0.025, 0.0, 0.05):
            slow.cost = cost
            self._send(b"x", media)
            clock.advance(sockets._timer.getTime() - clock.seconds())
            seen.append((round(clock.seconds(), 6), sockets.drains, round(sockets._timer.getTime(), 6)))
        self.assertEqual(len(slow.datagrams), 3)
        # at 40 ms for 25 ms: the next at 80, not 105; at 80 for none: 120; at 120 for 50 ms: the next at once,
        # at 170 (Clock runs it within the same advance: it finds nothing), and the one after it at 210
        self.assertEqual(seen, [(0.065, 1, 0.08), (0.08, 2, 0.12), (0.17, 4, 0.21)])

    def test_after_drain_hooks_run_in_the_drains_turn_and_lateness_is_its_timers_lag(self) -> None:
        """``after_drain`` hooks run after each timed drain, in order, once its datagrams are delivered and before
        the next timer is armed; one that raises is logged and the others run.  ``lateness`` is how late the
        drain's timer ran.  ``on_reading`` hears the drains start with the first socket and stop with the last."""
        clock = Clock()
        reading: list[bool] = []
        sockets = MediaSockets(clock, interval=0.04, on_reading=reading.append)
        self.addCleanup(sockets.close)
        events: list[tuple[str, Any]] = []

        class Seen(Stamped):
            def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
                super().datagrams_arrived(datagrams)
                events.append(("delivered", len(datagrams)))

        def failing() -> None:
            events.append(("failing", None))
            raise RuntimeError("hook failed on purpose")

        sockets.after_drain += [lambda: events.append(("first", sockets._timer)), failing,
                                lambda: events.append(("last", round(sockets.lateness, 6)))]
        self.assertEqual(reading, [])
        media = sockets.bind(0, Seen(), LOCAL)
        self.assertEqual(reading, [True])
        self._send(b"x", media)
        clock.advance(0.05)  # the drain was due at 40 ms: 10 ms late
        self.assertEqual(events, [("delivered", 1), ("first", None), ("failing", None), ("last", 0.01)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(0.03)  # due at 80 ms, on time: the hooks run with nothing delivered
        self.assertEqual(events[4:], [("first", None), ("failing", None), ("last", 0.0)])
        self.flushLoggedErrors(RuntimeError)
        lateness: list[float] = []

        def slow_once() -> None:  # the drain at 120 ms takes 50 ms
            sockets.after_drain.remove(slow_once)
            sockets.after_drain.append(lambda: lateness.append(round(sockets.lateness, 6)))
            clock.rightNow += 0.05

        sockets.after_drain.insert(0, slow_once)
        clock.advance(0.04)  # 120 ms, till 170: the next drain follows at once, 10 ms after 160, its time
        self.assertEqual(lateness, [0.01])
        self.flushLoggedErrors(RuntimeError)
        second = sockets.bind(0, Stamped(), LOCAL)
        media.stopListening()
        self.assertEqual(reading, [True])
        second.stopListening()
        self.assertEqual(reading, [True, False])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_call_later_rides_on_the_drains(self) -> None:
        """``call_later`` makes no reactor timer of its own while the drains run on one: its call runs at the
        first drain at or after its time, after the deliveries and before the ``after_drain`` hooks; ``reset``
        moves it, ``cancel`` ends it, one that raises is logged and the others run.  Calls still pending when the
        drains stop run on a reactor timer at their time; without an interval it is the reactor's ``callLater``."""
        clock = Clock()
        sockets = MediaSockets(clock, interval=0.04)
        self.addCleanup(sockets.close)
        order: list[str] = []
        sockets.after_drain.append(lambda: order.append("hooks"))
        media = sockets.bind(0, Stamped(), LOCAL)
        call = sockets.call_later(0.05, order.append, "call")
        self.assertEqual(clock.getDelayedCalls(), [sockets._timer])
        self.assertEqual((call.getTime(), call.active()), (0.05, True))
        clock.advance(0.04)
        self.assertEqual(order, ["hooks"])
        clock.advance(0.04)  # 80 ms: the first drain after 50
        self.assertEqual((order, call.active()), (["hooks", "call", "hooks"], False))
        self.assertRaises(AlreadyCalled, call.cancel)
        moved = sockets.call_later(0.01, order.append, "moved")
        moved.reset(0.1)  # from 80 ms to 180
        cancelled = sockets.call_later(0.01, order.append, "cancelled")
        cancelled.cancel()
        self.assertRaises(AlreadyCancelled, cancelled.reset, 1.0)

        def failing() -> None:
            raise RuntimeError("a call failed on purpose")

        sockets.call_later(0.0, failing)
        sockets.call_later(0.0, order.append, "after the failing one")
        del order[:]
        for _ in range(3):  # 120, 160, 200 ms
            clock.advance(0.04)
        self.assertEqual(order, ["after the failing one", "hooks", "hooks", "moved", "hooks"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        late = sockets.call_later(0.5, order.append, "late")  # due at 700 ms
        late.reset(0.3)  # 500 ms
        media.stopListening()  # no drains now: a reactor timer runs it
        (timer,) = clock.getDelayedCalls()
        self.assertAlmostEqual(timer.getTime(), 0.5)
        clock.advance(0.3)
        self.assertEqual((order[-1], clock.getDelayedCalls()), ("late", []))
        untimed = MediaSockets(clock)
        self.addCleanup(untimed.close)
        plain = untimed.call_later(1.0, order.append, "plain")
        self.assertIn(plain, clock.getDelayedCalls())

    def test_a_call_that_asks_to_run_again_at_once_waits_for_the_next_drain(self) -> None:
        """A drain runs the calls due when it starts: one that asks to run again at once runs at the next drain
        (not again and again in this one), and one cancelled by a call before it in the same drain does not run."""
        clock = Clock()
        sockets = MediaSockets(clock, interval=0.04)
        self.addCleanup(sockets.close)
        sockets.bind(0, Stamped(), LOCAL)
        runs: list[object] = []

        def again() -> None:
            runs.append(round(clock.seconds(), 2))
            if len(runs) < 5:  # (bounded, so that a drain that looped would fail here, not hang)
                sockets.call_later(0.0, again)

        sockets.call_later(0.0, again)
        sockets.call_later(0.0, lambda: victim.cancel())
        victim = sockets.call_later(0.0, runs.append, "victim")
        clock.advance(0.04)
        self.assertEqual(runs, [0.04])
        clock.advance(0.04)
        self.assertEqual(runs, [0.04, 0.08])

    @inlineCallbacks
    def test_a_drain_holds_the_gate_when_it_is_free(self) -> Any:
        """With a gate (the lock the transcoding threads wait at) a drain holds it while it delivers, and lets it
        go after; a gate held elsewhere is not waited for: datagrams are delivered anyway."""
        gate = threading.Lock()
        sockets = MediaSockets(reactor, gate=gate)
        self.addCleanup(sockets.close)
        held: list[bool] = []

        class Watching(Stamped):
            def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
                held.append(gate.locked())
                super().datagrams_arrived(datagrams)

        recorder = Watching()
        media = sockets.bind(0, recorder, LOCAL)
        self.peer.sendto(b"one", (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="the first datagram")
        self.assertEqual(held, [True])
        self.assertFalse(gate.locked())
        with gate:  # held by someone else: the drain does not wait for it
            self.peer.sendto(b"two", (LOCAL, media.getHost().port))
            yield wait_for(lambda: len(recorder.datagrams) == 2, what="the second datagram")
        self.assertEqual([data for data, _ in recorder.datagrams], [b"one", b"two"])

    def _send(self, data: bytes, media: Any) -> None:
        """Send ``data`` to ``media`` and wait until its socket has it (loopback delivery may lag the send on a
        busy machine): the fake clock's drains must find what was sent before them."""
        self.peer.sendto(data, (LOCAL, media.getHost().port))
        readable, _, _ = select.select([media.socket], [], [], 10.0)
        self.assertTrue(readable, f"{data!r} did not arrive within 10 s")

    def _held_setup(self, hold: float) -> tuple[Clock, MediaSockets, Stamped, Any, Stamped, Any]:
        """A MediaSockets on a fake clock (10 ms drains) with a socket that holds and one that does not."""
        clock = Clock()
        sockets = MediaSockets(clock, interval=0.01)
        self.addCleanup(sockets.close)
        held, plain = Stamped(), Stamped()
        return clock, sockets, held, sockets.bind(0, held, LOCAL, hold=hold), plain, sockets.bind(0, plain, LOCAL)

    def _queued(self, media: Any) -> bool:
        """Whether ``media``'s socket has a datagram waiting in the kernel."""
        readable, _, _ = select.select([media.socket], [], [], 0)
        return bool(readable)

    def test_a_socket_with_a_hold_is_read_once_its_hold_is_up(self) -> None:
        """A socket bound with ``hold`` is read only once its hold and half an interval have passed since the
        drains last read it: its datagrams wait in the kernel meanwhile and come in one delivery, each with the
        time of the read that found it (no kernel timestamps here); the first one after a quiet spell goes at
        the next drain.  A socket without a hold is read at every drain."""
        clock, sockets, held, media, plain, other = self._held_setup(0.04)
        self.assertEqual((media.hold, other.hold), (0.04, 0.0))
        for n in range(5):  # a datagram every 20 ms to each, drains every 10 ms
            self._send(b"h%d" % n, media)
            self._send(b"p%d" % n, other)
            clock.advance(0.01)
            self.assertEqual(len(plain.batches), n + 1)
            if n == 1:  # h1 came at 20 ms, after the read of 10 ms: it waits for the read of 60 ms
                self.assertTrue(self._queued(media))
                self.assertEqual(held.batches, [1])
            clock.advance(0.01)
        # read at 10 ms (h0, the socket was quiet), at 60 (10 + 40 + 5 <= 60: h1, h2), and at 110 (h3, h4)
        self.assertEqual(held.batches, [1, 2])
        self.assertTrue(self._queued(media))
        clock.advance(0.01)  # 110 ms
        self.assertEqual(held.batches, [1, 2, 2])
        self.assertEqual([d for d, _ in held.datagrams], [b"h%d" % n for n in range(5)])
        self.assertEqual([round(a, 3) for a in held.arrivals], [0.01, 0.06, 0.06, 0.11, 0.11])
        self.assertEqual([d for d, _ in plain.datagrams], [b"p%d" % n for n in range(5)])
        self.assertEqual(sockets.datagrams, 10)

    def test_a_held_socket_is_read_when_its_protocol_wants_it(self) -> None:
        """A protocol that names a time in its socket's ``wanted_at`` as it takes a delivery has the socket read at
        the first drain at or after that time (past its hold), or ``MAX_HOLD`` after the last read if sooner; a
        read clears it, and with none named the hold rules again."""
        clock = Clock()
        sockets = MediaSockets(clock, interval=0.01)
        self.addCleanup(sockets.close)
        wants: list[float | None] = [0.095, 10.0, None, None]
        cleared: list[bool] = []

        class Wanting(Stamped):
            def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
                super().datagrams_arrived(datagrams)
                cleared.append(media.wanted_at is None)  # by the read, before the delivery
                media.wanted_at = wants.pop(0)

        held = Wanting()
        media = sockets.bind(0, held, LOCAL, hold=0.04)
        self._send(b"h0", media)
        clock.advance(0.01)  # quiet socket: read at once; wanted again at 95 ms
        self.assertEqual(held.batches, [1])
        self._send(b"h1", media)
        for _ in range(8):  # 20 to 90 ms: the hold (45 ms) is up, the wanted time is not
            clock.advance(0.01)
        self.assertEqual(held.batches, [1])
        self.assertTrue(self._queued(media))
        clock.advance(0.01)  # 100 ms
        self.assertEqual(held.batches, [1, 1])
        read_at = clock.seconds()
        self._send(b"h2", media)  # wanted at 10 s: read MAX_HOLD after the last read
        while len(held.batches) < 3:
            clock.advance(0.01)
        self.assertGreaterEqual(clock.seconds() - read_at, sockets.MAX_HOLD - 1e-9)
        self.assertLess(clock.seconds() - read_at, sockets.MAX_HOLD + 0.0101)
        read_at = clock.seconds()
        self._send(b"h3", media)  # none wanted: the hold again, read 50 ms on (45 ms, rounded up to a drain)
        while len(held.batches) < 4:
            clock.advance(0.01)
        self.assertAlmostEqual(clock.seconds() - read_at, 0.05)
        self.assertEqual([d for d, _ in held.datagrams], [b"h0", b"h1", b"h2", b"h3"])
        self.assertEqual(cleared, [True, True, True, True])

    def test_with_kernel_timestamps_a_held_socket_is_read_every_other_drain(self) -> None:
        """With 40 ms reads and a 40 ms hold a held socket is read at every other drain, and each datagram keeps
        the kernel's receive time: up to 80 ms before the read that finds it."""
        clock = Clock()
        clock.advance(time.time())  # the kernel's times and the fake reactor's on one scale
        sockets = MediaSockets(clock, interval=0.04, kernel_timestamps=True)
        self.addCleanup(sockets.close)
        held = Stamped()
        media = sockets.bind(0, held, LOCAL, hold=0.04)
        self._send(b"first", media)
        clock.advance(sockets._timer.getTime() - clock.seconds())  # the socket was quiet: read at once
        self.assertEqual([d for d, _ in held.datagrams], [b"first"])
        read_at = clock.seconds()
        sent = time.time()
        self._send(b"second", media)
        clock.advance(sockets._timer.getTime() - clock.seconds())  # 40 ms on: not yet
        self.assertEqual(held.batches, [1])
        self.assertTrue(self._queued(media))
        self._send(b"third", media)
        clock.advance(sockets._timer.getTime() - clock.seconds())  # 80 ms on: both, in one delivery
        self.assertAlmostEqual(clock.seconds() - read_at, 0.08, places=5)
        self.assertEqual(held.batches, [1, 2])
        self.assertEqual([d for d, _ in held.datagrams], [b"first", b"second", b"third"])
        self.assertLess(held.arrivals[1], read_at + 0.04)  # the kernel's time, long before the read
        self.assertGreaterEqual(held.arrivals[1], sent - 0.001)

    def test_a_socket_closed_while_its_datagrams_wait_delivers_nothing(self) -> None:
        """A held socket closed while its datagrams wait in the kernel (its call ended) delivers nothing more,
        also when an earlier delivery of the same drain closes it."""
        clock, sockets, held, media, plain, other = self._held_setup(0.02)
        self._send(b"x", media)
        clock.advance(0.01)
        self._send(b"y", media)
        clock.advance(0.01)
        self.assertEqual([d for d, _ in held.datagrams], [b"x"])
        media.stopListening()
        clock.advance(0.05)
        self.assertEqual([d for d, _ in held.datagrams], [b"x"])
        # two held sockets read in the same drain; the first one's delivery closes the second
        first, second = Stamped(), Stamped()
        closing: list[Any] = []
        first.datagrams_arrived = lambda datagrams: closing[0].stopListening()  # type: ignore[method-assign]
        a = sockets.bind(0, first, LOCAL, hold=0.02)
        b = sockets.bind(0, second, LOCAL, hold=0.02)
        closing.append(b)
        self._send(b"a", a)
        self._send(b"b", b)
        clock.advance(0.01)
        self.assertTrue(b.closed)
        self.assertEqual((second.datagrams, sockets.protocol_errors), ([], 0))

    def test_hold_needs_an_interval(self) -> None:
        """Without an interval (drains whenever a socket is readable, no timer) a socket does not hold; a
        negative hold is refused."""
        sockets = MediaSockets(reactor)
        self.addCleanup(sockets.close)
        self.assertEqual(sockets.bind(0, Recorder(), LOCAL, hold=0.04).hold, 0.0)
        with self.assertRaises(ValueError) as caught:
            self.sockets.bind(0, Recorder(), LOCAL, hold=-0.01)
        self.assertEqual(str(caught.exception), "hold must not be negative, not -0.01")

    def test_light_drains_go_further_apart_and_heavy_ones_come_back(self) -> None:
        """With a ``light_interval``, once a window (1 s) of drains took less than 18 % of the time (their CPU),
        drains go ``light_interval`` apart; once a window of those took more than 16 % (about 20 % at the
        shorter interval), ``interval`` again; the held socket's deadline follows the interval in force."""
        clock = Clock()
        cpu_clock = SteppingCpuClock()
        lights: list[bool] = []
        sockets = MediaSockets(clock, interval=0.01, light_interval=0.02, cpu_clock=cpu_clock,
                               on_light=lights.append)
        self.addCleanup(sockets.close)
        sockets.bind(0, Stamped(), LOCAL)
        drains = sockets.drains

        def run(seconds: float) -> None:  # from drain to drain
            end = clock.seconds() + seconds - 0.001
            while clock.seconds() < end:
                clock.advance(sockets._timer.getTime() - clock.seconds())

        cpu_clock.step = 0.002  # 2 ms of a drain's CPU in 10 ms: 20 %, not light
        run(2.0)
        self.assertEqual(sockets.current_interval, 0.01)
        self.assertEqual(sockets.drains - drains, 200)
        cpu_clock.step = 0.0016  # 1.6 ms in 10 ms: 16 %, light
        run(1.1)  # a whole window of it
        self.assertEqual(sockets.current_interval, 0.02)
        drains = sockets.drains
        run(1.0)
        self.assertEqual(sockets.drains - drains, 50)
        cpu_clock.step = 0.003  # 3 ms in 20 ms: 15 %, still light
        run(2.0)
        self.assertEqual(sockets.current_interval, 0.02)
        # a held socket is read once its hold and half the interval in force have passed: hold 48 ms, drains 20
        # ms apart, read again at t + 60 ms (t + 48 + 10 <= t + 60; the drain at t + 40 is too early)
        held = Stamped()
        media = sockets.bind(0, held, LOCAL, hold=0.048)
        self._send(b"h", media)
        clock.advance(sockets._timer.getTime() - clock.seconds())
        read_at = clock.seconds()
        self.assertEqual([d for d, _ in held.datagrams], [b"h"])
        self._send(b"i", media)
        for _ in range(2):
            clock.advance(sockets._timer.getTime() - clock.seconds())
            self.assertEqual(held.batches, [1])
        clock.advance(sockets._timer.getTime() - clock.seconds())
        self.assertEqual([d for d, _ in held.datagrams], [b"h", b"i"])
        self.assertAlmostEqual(clock.seconds() - read_at, 0.06)
        cpu_clock.step = 0.0034  # 3.4 ms in 20 ms: 17 %, heavy
        run(1.1)
        self.assertEqual(sockets.current_interval, 0.01)
        self.assertEqual((sockets.interval_changes, lights), (2, [True, False]))
        # light when the last socket goes: the next one starts at the short interval, and on_light hears it
        cpu_clock.step = 0.0
        run(1.1)
        self.assertEqual((sockets.current_interval, lights), (0.02, [True, False, True]))
        for port in list(sockets._sockets.values()):
            port.stopListening()
        self.assertIsNone(sockets._timer)
        sockets.bind(0, Stamped(), LOCAL)
        self.assertEqual((sockets.current_interval, lights), (0.01, [True, False, True, False]))
        self.assertAlmostEqual(sockets._timer.getTime() - clock.seconds(), 0.01)
        drains = sockets.drains
        run(1.0)
        self.assertEqual(sockets.drains - drains, 100)

    def test_quiet_drains_go_further_apart_still(self) -> None:
        """With a ``quiet_interval`` too, drains at ``light_interval`` whose window took less than 4.5 % of the
        time go ``quiet_interval`` apart; quiet ones come back to ``light_interval`` above 6 %, and straight to
        ``interval`` above 16 %; ``on_light`` hears only light or not; a new first socket starts at ``interval``."""
        clock = Clock()
        cpu_clock = SteppingCpuClock()
        lights: list[bool] = []
        sockets = MediaSockets(clock, interval=0.01, light_interval=0.02, quiet_interval=0.04, cpu_clock=cpu_clock,
                               on_light=lights.append)
        self.addCleanup(sockets.close)
        sockets.bind(0, Stamped(), LOCAL)

        def window() -> None:  # drain to drain until the load has been looked at: the next window starts clean
            since = sockets._load_since
            while sockets._load_since == since:
                clock.advance(sockets._timer.getTime() - clock.seconds())

        def level(cpu_per_drain: float, windows: int = 1) -> float:
            cpu_clock.step = cpu_per_drain
            for _ in range(windows):
                window()
            return sockets.current_interval

        self.assertEqual(level(0.0004), 0.02)  # 4 % at 10 ms: light
        self.assertEqual(level(0.0004), 0.04)  # 2 % at 20 ms: quiet
        drains, began = sockets.drains, clock.seconds()
        self.assertEqual(level(0.0022, 3), 0.04)  # 5.5 % at 40 ms: stays quiet
        self.assertAlmostEqual(clock.seconds() - began, 3.0, delta=0.05)
        self.assertEqual(sockets.drains - drains, 75)  # 40 ms apart
        self.assertEqual((sockets.interval_changes, lights), (2, [True]))
        self.assertEqual(level(0.0026), 0.02)  # 6.5 % at 40 ms: back to light
        self.assertEqual(level(0.001, 2), 0.02)  # 5 % at 20 ms: light, not quiet
        self.assertEqual(level(0.0008), 0.04)  # 4 % at 20 ms: quiet again
        self.assertEqual(level(0.0008, 2), 0.04)  # 2 % at 40 ms
        self.assertEqual((sockets.interval_changes, lights), (4, [True]))
        self.assertEqual(level(0.0068), 0.01)  # 17 % at 40 ms: a burst of calls, straight to the interval
        self.assertEqual((sockets.interval_changes, lights), (5, [True, False]))
        self.assertEqual(level(0.0068), 0.01)  # 68 % at 10 ms
        self.assertEqual(level(0.0), 0.02)
        self.assertEqual(level(0.0), 0.04)
        for port in list(sockets._sockets.values()):
            port.stopListening()
        sockets.bind(0, Stamped(), LOCAL)
        self.assertEqual((sockets.current_interval, sockets.interval_changes), (0.01, 8))
        self.assertEqual(lights, [True, False, True, False])
        # without a quiet interval, light drains stay light however little they take
        sockets = MediaSockets(clock, interval=0.01, light_interval=0.02, cpu_clock=cpu_clock)
        self.addCleanup(sockets.close)
        sockets.bind(0, Stamped(), LOCAL)
        self.assertEqual((level(0.0), level(0.0, 3), sockets.interval_changes), (0.02, 0.02, 1))

    def test_quiet_interval_must_be_longer(self) -> None:
        """A quiet interval is longer than the light interval, and needs one."""
        for light, quiet in ((0.02, 0.02), (0.0, 0.04)):
            with self.assertRaises(ValueError) as caught:
                MediaSockets(reactor, interval=0.01, light_interval=light, quiet_interval=quiet)
            self.assertEqual(str(caught.exception), f"quiet_interval must be longer than light_interval, not {quiet}")

    def test_a_failing_on_light_is_logged(self) -> None:
        """What ``on_light`` raises is logged; the interval changes all the same."""
        clock = Clock()

        def fail(light: bool) -> None:
            raise RuntimeError("on_light failed on purpose")

        sockets = MediaSockets(clock, interval=0.01, light_interval=0.02, cpu_clock=lambda: 0.0, on_light=fail)
        self.addCleanup(sockets.close)
        sockets.bind(0, Stamped(), LOCAL)
        while clock.seconds() < 1.05:
            clock.advance(sockets._timer.getTime() - clock.seconds())
        self.assertEqual(sockets.current_interval, 0.02)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_light_interval_must_be_longer(self) -> None:
        """A light interval is longer than the interval, and needs one."""
        for interval, light in ((0.01, 0.01), (0.0, 0.02)):
            with self.assertRaises(ValueError) as caught:
                MediaSockets(reactor, interval=interval, light_interval=light)
            self.assertEqual(str(caught.exception), f"light_interval must be longer than interval, not {light}")

    def test_negative_interval(self) -> None:
        """A negative interval is refused."""
        with self.assertRaises(ValueError) as caught:
            MediaSockets(reactor, interval=-1)
        self.assertEqual(str(caught.exception), "interval must not be negative, not -1")


class ConnectedPeerTests(TestCase):
    """A socket connected to its far end: only that source's datagrams, read without their address."""

    timeout = 30

    def setUp(self) -> None:
        if not udp.available():
            raise SkipTest("no epoll here")
        self.sockets = MediaSockets(reactor, interval=0.02)
        self.addCleanup(self.sockets.close)
        self.far, self.other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for sock in (self.far, self.other):
            sock.bind((LOCAL, 0))
            self.addCleanup(sock.close)

    @inlineCallbacks
    def test_only_the_peer_once_connected_and_every_source_after_disconnect(self) -> Any:
        """What a foreign source sent before the connect still arrives, with its own address; after it only the
        peer's datagrams arrive (with the peer's address), until ``disconnect_peer``."""
        recorder = Stamped()
        port = free_port()
        media = self.sockets.bind(port, recorder, LOCAL)  # a port given, as the gateway's are: it stays bound
        far, other = self.far.getsockname(), self.other.getsockname()
        self.other.sendto(b"early", (LOCAL, port))
        media.connect_peer(far)
        self.assertIsNone(media.peer)  # the early datagram is still queued: read with its address first
        self.far.sendto(b"far 1", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 2, what="the two datagrams")
        self.assertEqual(recorder.datagrams, [(b"early", other), (b"far 1", far)])
        yield wait_for(lambda: media.peer == far, what="the socket known empty of foreign datagrams")
        self.other.sendto(b"foreign", (LOCAL, port))
        self.far.sendto(b"far 2", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 3, what="the peer's datagram")
        self.assertEqual(recorder.datagrams[2], (b"far 2", far))
        media.disconnect_peer()
        self.assertIsNone(media.peer)
        self.other.sendto(b"foreign again", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 4, what="the foreign datagram")
        self.assertEqual(recorder.datagrams[3], (b"foreign again", other))
        self.assertEqual(media.socket.getsockname(), (LOCAL, port))
        self.assertNotIn(b"foreign", [data for data, _ in recorder.datagrams])
        # writing to the peer works connected or not
        media.connect_peer(far)
        media.write(b"reply", far)
        self.far.settimeout(10)
        self.assertEqual(self.far.recvfrom(100), (b"reply", (LOCAL, port)))

    @inlineCallbacks
    def test_a_wildcard_socket_connects_only_to_receive_on_the_offered_address(self) -> Any:
        """Bound to 0.0.0.0, a socket that would receive on another address than the one the far end sends to
        stays unconnected (``OSError``); with that address it connects."""
        recorder = Stamped()
        port = free_port()
        media = self.sockets.bind(port, recorder, "0.0.0.0")
        far, other = self.far.getsockname(), self.other.getsockname()
        with self.assertRaises(OSError):
            media.connect_peer(far, "192.0.2.7")
        self.assertEqual(media.socket.getsockname(), ("0.0.0.0", port))
        self.other.sendto(b"anyone", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="a datagram from anyone")
        self.assertEqual(recorder.datagrams, [(b"anyone", other)])
        media.connect_peer(far, LOCAL)
        self.other.sendto(b"foreign", (LOCAL, port))
        self.far.sendto(b"far", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 2, what="the peer's datagram")
        self.assertEqual(recorder.datagrams[1], (b"far", far))
        # moving to a far end it may not connect to leaves it unconnected, taking every source again
        with self.assertRaises(OSError):
            media.connect_peer(other, "192.0.2.7")
        self.assertIsNone(media.peer)
        self.assertEqual(media.socket.getsockname(), ("0.0.0.0", port))
        self.far.sendto(b"far again", (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == 3, what="a datagram from the old far end")
        self.assertEqual(recorder.datagrams[2], (b"far again", far))

    def test_a_connected_socket_is_trusted_once_it_is_emptied_whatever_the_others(self) -> None:
        """A socket connected while empty takes only its peer's datagrams at once; one connected with a foreign
        datagram queued once a read has emptied it, even in a drain that leaves another socket unemptied (more
        queued than ``max_per_socket``, or a held socket whose hold is not up)."""
        sockets = MediaSockets(Clock(), interval=0.01, max_per_socket=2)
        self.addCleanup(sockets.close)
        busy, recorder = Stamped(), Stamped()
        busy_media = sockets.bind(0, busy, LOCAL)
        media = sockets.bind(0, recorder, LOCAL)
        far, other = self.far.getsockname(), self.other.getsockname()
        empty = sockets.bind(0, Stamped(), LOCAL)
        empty.connect_peer(far)
        self.assertEqual(empty.peer, far)  # nothing was queued: nothing foreign can be
        for n in range(5):
            self.other.sendto(b"%d" % n, (LOCAL, busy_media.getHost().port))
        self.other.sendto(b"early", (LOCAL, media.getHost().port))
        media.connect_peer(far)
        self.assertIsNone(media.peer)
        deadline = time.monotonic() + 10.0
        while not recorder.datagrams and time.monotonic() < deadline:
            readable, _, _ = select.select([busy_media.socket, media.socket], [], [], 10.0)
            if len(readable) == 2:
                sockets.drain()
        self.assertEqual(recorder.datagrams, [(b"early", other)])
        self.assertEqual(len(busy.datagrams), 2)  # the other socket still holds datagrams after this drain
        self.assertEqual(media.peer, far)

    @inlineCallbacks
    def _connected(self) -> Any:
        """A socket connected to ``self.far`` and known empty of foreign datagrams: (socket, recorder)."""
        recorder = Stamped()
        media = self.sockets.bind(free_port(), recorder, LOCAL)
        media.connect_peer(self.far.getsockname())
        yield wait_for(lambda: media.peer is not None, what="the socket known empty of foreign datagrams")
        return media, recorder

    @inlineCallbacks
    def test_a_connected_socket_delivers_every_size_in_order(self) -> Any:
        """A connected socket delivers datagrams of every size a UDP datagram can have (empty and 65507 bytes
        among them), in order, with the peer's address."""
        media, recorder = yield self._connected()
        port = media.getHost().port
        sizes = [0, 1, 12, 1200, 1500, 65507] + [172 + n for n in range(64)]
        sent = [bytes([n % 256]) * size for n, size in enumerate(sizes)]
        for datagram in sent:
            self.far.sendto(datagram, (LOCAL, port))
        yield wait_for(lambda: len(recorder.datagrams) == len(sent), what=f"{len(sent)} datagrams")
        self.assertEqual([data for data, _ in recorder.datagrams], sent)
        self.assertEqual({addr for _, addr in recorder.datagrams}, {self.far.getsockname()})
        self.assertEqual(self.sockets.receive_errors, 0)

    @inlineCallbacks
    def test_a_refused_send_does_not_count_as_a_receive_error(self) -> Any:
        """A connected socket whose sends the far end's host refuses (ICMP port unreachable) reports
        ECONNREFUSED on its next read: ignored, and the datagrams sent after still arrive."""
        media, recorder = yield self._connected()
        far = self.far.getsockname()
        self.far.close()
        media.write(b"to nobody", far)
        yield wait_for(lambda: self.sockets.drains >= 3, what="a few drains")
        self.far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.far.bind(far)
        self.addCleanup(self.far.close)
        self.far.sendto(b"back again", (LOCAL, media.getHost().port))
        yield wait_for(lambda: len(recorder.datagrams) == 1, what="the datagram sent after")
        self.assertEqual(recorder.datagrams, [(b"back again", far)])
        self.assertEqual(self.sockets.receive_errors, 0)


def free_port() -> int:
    """A UDP port nothing uses now on 127.0.0.1 and 0.0.0.0."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("0.0.0.0", 0))
    port = probe.getsockname()[1]
    probe.close()
    return int(port)
