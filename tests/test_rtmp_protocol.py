"""Tests for wcsgw.rtmp.protocol's writes over a real loopback TCP connection."""

from __future__ import annotations

import socket
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e.gateway import wait_for
from wcsgw.rtmp.protocol import RtmpClientProtocol, WriteBatch, write_batch
from wcsgw.rtmp.session import RtmpClientSession
from wcsgw.rtmp.url import parse


class Collector(Protocol):
    def __init__(self, received: bytearray) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received += data


class Listener:
    def __init__(self) -> None:
        self.written = 0
        self.lost: Deferred[None] = Deferred()

    def rtmp_connected(self, protocol: Any) -> None:
        pass

    def rtmp_event(self, protocol: Any, event: Any) -> None:
        pass

    def rtmp_connection_lost(self, protocol: Any, reason: str) -> None:
        if not self.lost.called:
            self.lost.callback(None)

    def rtmp_connection_failed(self, reason: str) -> None:
        pass

    def rtmp_bytes_written(self, count: int) -> None:
        self.written += count


class DirectWriteTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def connected(self, collector: type[Collector]) -> Any:
        """A protocol connected to a loopback peer that collects what it receives: (received, protocol,
        listener)."""
        received = bytearray()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: collector(received)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        listener = Listener()
        url = parse("rtmp://127.0.0.1/live")
        protocol = RtmpClientProtocol(lambda: RtmpClientSession(url, "s", 0.0, random_bytes=bytes), listener)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), protocol)
        return received, protocol, listener

    @inlineCallbacks
    def test_writes_arrive_whole_and_in_order(self) -> Any:
        """Writes sent at once and writes left to the transport (the socket was full) reach the peer complete and
        in the order they were made: the handshake, 16 MiB that the socket cannot take at once, then small
        writes that must queue behind its remainder."""
        received, protocol, listener = yield self.connected(Collector)
        sock = protocol.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)  # no Nagle: tags go at once
        handshake = 1 + 1536  # C0 + C1, written at connection
        big = bytes(range(256)) * (16 * 4096)
        protocol._write([big])
        self.assertIs(protocol._queued[-1], big, "a write waits for the end of the reactor turn")
        self.assertFalse(protocol.transport.dataBuffer or protocol.transport._tempDataBuffer)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(protocol._queued, [])
        self.assertTrue(protocol.transport.dataBuffer or protocol.transport._tempDataBuffer,
                        "16 MiB should not fit the socket at once")
        for n in range(100):
            protocol._write([b"%05d" % n])
        expected = handshake + len(big) + 500
        yield wait_for(lambda: len(received) >= expected, what="every byte at the peer", timeout=30)
        self.assertEqual(len(received), expected)
        self.assertEqual(bytes(received[handshake:handshake + len(big)]), big)
        self.assertEqual(bytes(received[handshake + len(big):]), b"".join(b"%05d" % n for n in range(100)))
        protocol.transport.loseConnection()
        yield listener.lost

    @inlineCallbacks
    def test_the_writes_of_a_turn_go_in_one_send(self) -> Any:
        """Writes made in one reactor turn are joined into one send at its end, after the earlier ones and in
        order; writes of a later turn go in a later send."""
        received, protocol, listener = yield self.connected(Collector)
        handshake = 1 + 1536
        yield wait_for(lambda: len(received) >= handshake, what="the handshake at the peer", timeout=30)
        turns = write_batch(reactor)
        sends = turns.batches
        protocol._write([b"one,", memoryview(b"xtwo,")[1:]])  # pieces: bytes and views of media payloads
        protocol._write([b"three,"])
        self.assertEqual(len(received), handshake)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(turns.batches, sends + 1)
        protocol._write([b"four"])
        yield wait_for(lambda: len(received) >= handshake + 18, what="every byte at the peer", timeout=30)
        self.assertEqual(turns.batches, sends + 2)
        self.assertGreater(turns.cpu, 0.0)
        self.assertEqual(bytes(received[handshake:]), b"one,two,three,four")
        protocol.transport.loseConnection()
        yield listener.lost

    @inlineCallbacks
    def test_the_sends_hold_the_gate_when_it_is_free(self) -> Any:
        """With a gate (the lock the transcoding threads wait at) the turn's sends hold it, and let it go after;
        a gate held elsewhere is not waited for: the sends go anyway."""
        received, protocol, listener = yield self.connected(Collector)
        handshake = 1 + 1536
        yield wait_for(lambda: len(received) >= handshake, what="the handshake at the peer", timeout=30)
        turns = write_batch(reactor)
        gate = threading.Lock()
        turns.gate = gate
        self.addCleanup(setattr, turns, "gate", None)
        held: list[bool] = []
        send_queued = protocol._send_queued

        def spy() -> None:
            held.append(gate.locked())
            send_queued()

        protocol._send_queued = spy
        protocol._write([b"gated,"])
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(held, [True])
        self.assertFalse(gate.locked())
        with gate:  # held by someone else: the send does not wait for it
            protocol._write([b"anyway"])
            yield wait_for(lambda: len(received) >= handshake + 12, what="every byte at the peer", timeout=30)
        self.assertEqual(bytes(received[handshake:]), b"gated,anyway")
        protocol.transport.loseConnection()
        yield listener.lost

    @inlineCallbacks
    def test_held_audio_goes_with_the_next_write(self) -> Any:
        """A held write (audio of a video connection) is not sent at the end of its turn: it waits for the
        connection's next write, and both go in one send, in order."""
        received, protocol, listener = yield self.connected(Collector)
        handshake = 1 + 1536
        yield wait_for(lambda: len(received) >= handshake, what="the handshake at the peer", timeout=30)
        turns = write_batch(reactor)
        sends, held, alone = turns.sends, turns.held, turns.held_alone
        protocol._write([b"audio,"], hold=True)
        protocol._write([b"more audio,"], hold=True)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual((turns.sends, len(received)), (sends, handshake))  # nothing went
        protocol._write([b"video"])
        yield wait_for(lambda: len(received) >= handshake + 22, what="every byte at the peer", timeout=30)
        self.assertEqual(bytes(received[handshake:]), b"audio,more audio,video")
        self.assertEqual((turns.sends, turns.held, turns.held_alone), (sends + 1, held + 1, alone))
        self.assertIsNone(turns._hold_call)  # nothing else waits: no timer is left
        protocol.transport.loseConnection()
        yield listener.lost

    @inlineCallbacks
    def test_a_connection_lost_while_held_leaves_nothing_waiting(self) -> Any:
        """A connection that ends with held writes takes them out of the batch: no timer is left behind."""
        received, protocol, listener = yield self.connected(Collector)
        yield wait_for(lambda: len(received) >= 1 + 1536, what="the handshake at the peer", timeout=30)
        turns = write_batch(reactor)
        protocol._write([b"audio"], hold=True)
        self.assertIs(protocol._held, turns)
        self.assertIsNotNone(turns._hold_call)
        protocol.abort()
        yield listener.lost
        self.assertEqual((protocol._held, protocol._queued, turns._hold_call), (None, [], None))

    @inlineCallbacks
    def test_held_audio_goes_alone_after_hold_max(self) -> Any:
        """A held write that no other write follows goes by itself once ``hold_max`` is up; a write queued
        behind a write of the turn that does not hold goes with it."""
        received, protocol, listener = yield self.connected(Collector)
        handshake = 1 + 1536
        yield wait_for(lambda: len(received) >= handshake, what="the handshake at the peer", timeout=30)
        turns = write_batch(reactor)
        alone = turns.held_alone
        protocol._write([b"audio"], hold=True)
        yield wait_for(lambda: len(received) >= handshake + 5, what="the held write at the peer", timeout=30)
        self.assertEqual(turns.held_alone, alone + 1)
        held = turns.held
        protocol._write([b",video"])
        protocol._write([b",audio"], hold=True)
        yield wait_for(lambda: len(received) >= handshake + 17, what="every byte at the peer", timeout=30)
        self.assertEqual(bytes(received[handshake:]), b"audio,video,audio")
        self.assertEqual((turns.held, turns.held_alone), (held, alone + 1))
        protocol.transport.loseConnection()
        yield listener.lost

    def test_audio_is_held_on_video_connections_only(self) -> None:
        """``send_tag``: a video tag is written at once and marks the connection as carrying video; from then on
        an audio tag may wait (``hold``); before, and for script data, nothing waits."""
        from wcsgw.rtmp.flv import FlvTag, TagType

        protocol = RtmpClientProtocol(lambda: RtmpClientSession(parse("rtmp://127.0.0.1/live"), "s", 0.0),
                                      Listener())
        sent: list[tuple[int, bool]] = []

        class Session:
            def send_tag(self, tag: FlvTag, timestamp_ms: Any) -> None:
                sent.append((int(tag.tag_type), False))

        protocol.session = Session()  # type: ignore[assignment]
        protocol.flush = lambda force=False, hold=False: sent.__setitem__(-1, (sent[-1][0], hold))  # type: ignore
        audio = FlvTag(TagType.AUDIO, 0, b"\xaf\x01")
        video = FlvTag(TagType.VIDEO, 0, b"\x27\x01\x00\x00\x00")
        script = FlvTag(TagType.SCRIPT, 0, b"\x02\x00\x00")
        for tag in (audio, video, audio, script, video):
            protocol.send_tag(tag)
        self.assertEqual(sent, [(8, False), (9, False), (8, True), (18, False), (9, False)])

    @inlineCallbacks
    def test_close_sends_what_is_queued_first(self) -> Any:
        """``close`` in the turn of a write: the peer still gets the write, then the unpublish, then the end."""
        ended: Deferred[None] = Deferred()

        class Ending(Collector):
            def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
                ended.callback(None)

        received, protocol, listener = yield self.connected(Ending)
        protocol._write([b"last words"])
        protocol.close()
        yield ended
        self.assertEqual(bytes(received[1 + 1536:]), b"last words")
        yield listener.lost


class _Queued:
    """What ``WriteBatch`` needs of a protocol: its queued writes, sent by ``_send_queued``."""

    transport = None
    _held = None

    def __init__(self, sent: list[str], name: str) -> None:
        self.sent, self.name = sent, name

    def _send_queued(self) -> None:
        self.sent.append(self.name)


class WriteBatchTests(SynchronousTestCase):
    def test_send_now_sends_the_turns_writes_in_place_of_its_call(self) -> None:
        """``send_now`` (the media drains call it at their end) sends what waits for the turn's ``callLater(0)``
        at once, in order, and cancels that call; with nothing waiting it does nothing."""
        clock = Clock()
        batch = WriteBatch(clock)
        sent: list[str] = []
        batch.send_now()
        self.assertEqual((sent, batch.batches), ([], 0))
        batch.add(_Queued(sent, "a"))  # type: ignore[arg-type]
        batch.add(_Queued(sent, "b"))  # type: ignore[arg-type]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        batch.send_now()
        self.assertEqual((sent, batch.batches, batch.sends, clock.getDelayedCalls()), (["a", "b"], 1, 2, []))
        batch.send_now()
        clock.advance(0)
        self.assertEqual((sent, batch.batches), (["a", "b"], 1))

