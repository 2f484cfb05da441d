"""Tests for wcsgw.rtmp.publisher with MemoryReactorClock, StringTransport and a scripted server."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.rtmp_fakes import FakeRtmpServer
from wcsgw.model import RtmpStreamStatus
from wcsgw.rtmp import amf0
from wcsgw.rtmp.flv import (
    FlvTag,
    TagType,
    aac_audio_tag,
    aac_sequence_header_tag,
    avc_sequence_header_tag,
    avc_video_tag,
    metadata_tag,
    pcmu_audio_tag,
)
from wcsgw.rtmp.protocol import RtmpClientProtocol
from wcsgw.rtmp.publisher import RtmpPublisher

WAIT = RtmpStreamStatus.RTMP_STREAM_WAIT
ACTIVE = RtmpStreamStatus.RTMP_STREAM_ACTIVE
LOST = RtmpStreamStatus.RTMP_CONNECTION_LOST
FAILED = RtmpStreamStatus.RTMP_CONNECTION_FAILED

SPS = bytes.fromhex("6742c00bda0a11f961")
PPS = bytes.fromhex("68ce0fc8")
METADATA = metadata_tag({"width": 160.0})
AVC_HEADER = avc_sequence_header_tag(0, [SPS], [PPS])
AAC_HEADER = aac_sequence_header_tag(0, b"\x12\x08")


def key(ts: int, size: int = 100) -> FlvTag:
    return avc_video_tag(ts, [b"\x65" + bytes(size)], keyframe=True)


def inter(ts: int, size: int = 50) -> FlvTag:
    return avc_video_tag(ts, [b"\x41" + bytes(size)], keyframe=False)


def audio(ts: int) -> FlvTag:
    return aac_audio_tag(ts, b"\x21\x10\x04")


class Harness:
    """A publisher on a MemoryReactorClock, and the fake server of its current connection."""

    def __init__(self, url: str = "rtmp://media.example:1935/live", **kwargs: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.statuses: list[tuple[RtmpStreamStatus, str]] = []
        self.keyframe_requests = 0
        kwargs.setdefault("reconnect_delays", (1, 2, 4))
        self.publisher = RtmpPublisher(
            self.reactor,
            url,
            "cam",
            on_status=lambda status, reason: self.statuses.append((status, reason)),
            on_keyframe_needed=self._keyframe_needed,
            random_bytes=lambda n: bytes(n),
            **kwargs,
        )
        self.protocol: RtmpClientProtocol | None = None
        self.transport: StringTransport | None = None
        self.server: FakeRtmpServer | None = None

    def _keyframe_needed(self) -> None:
        self.keyframe_requests += 1

    @property
    def status_names(self) -> list[RtmpStreamStatus]:
        return [status for status, _reason in self.statuses]

    def factory(self) -> Any:
        return self.reactor.tcpClients[-1][2]

    def connect(self, server: FakeRtmpServer | None = None) -> FakeRtmpServer:
        """Complete the pending TCP connection and run the exchange with a fresh server."""
        self.protocol = self.factory().buildProtocol(None)
        self.transport = StringTransport()
        self.server = server if server is not None else FakeRtmpServer()
        self.protocol.makeConnection(self.transport)
        self.exchange()
        return self.server

    def exchange(self) -> None:
        assert self.transport is not None and self.server is not None and self.protocol is not None
        for _ in range(20):
            data = self.transport.value()
            self.transport.clear()
            if not data:
                return
            reply = self.server.receive(data)
            if reply:
                self.protocol.dataReceived(reply)

    def fail_connect(self) -> None:
        self.factory().clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))

    def lose(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))

    def media(self) -> list[tuple[int, int, bytes]]:
        """(type, timestamp, body) of the media and data messages the server received."""
        self.exchange()
        assert self.server is not None
        return [(m.type_id, m.timestamp, m.payload) for m in self.server.media()]


class StatusTests(SynchronousTestCase):
    def test_every_attribute_is_a_slot(self) -> None:
        """The publisher keeps its attributes in ``__slots__`` (more than 30, see MediaStreamSession's): after
        publishing media its ``__dict__`` is still empty."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        harness.publisher.write(key(0))
        harness.publisher.write(audio(10))
        harness.publisher.write(inter(40))
        self.assertTrue(harness.media())
        self.assertEqual(vars(harness.publisher), {})

    def test_wait_then_active(self) -> None:
        """start() reports WAIT and connects; NetStream.Publish.Start reports ACTIVE."""
        harness = Harness()
        harness.publisher.start()
        self.assertEqual(harness.status_names, [WAIT])
        host, port, _factory, timeout, _bind = harness.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("media.example", 1935, 10.0))
        harness.connect()
        self.assertEqual(harness.status_names, [WAIT, ACTIVE])
        self.assertTrue(harness.publisher.active)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_rtmps_uses_tls(self) -> None:
        """An rtmps URL connects with connectSSL to port 443 with client TLS options."""
        harness = Harness("rtmps://secure.example/app")
        harness.publisher.start()
        self.assertEqual(harness.reactor.tcpClients, [])
        host, port, _factory, context, _timeout, _bind = harness.reactor.sslClients[0]
        self.assertEqual((host, port), ("secure.example", 443))
        self.assertIsNotNone(context)

    def test_start_twice(self) -> None:
        """start() may only be called once."""
        harness = Harness()
        harness.publisher.start()
        with self.assertRaises(RuntimeError):
            harness.publisher.start()

    def test_refused_publish_fails_without_retry(self) -> None:
        """A refused first publish (BadName) is FAILED at once, with the code, and no retry."""
        harness = Harness()
        harness.publisher.start()
        harness.connect(FakeRtmpServer(publish_code="NetStream.Publish.BadName"))
        self.assertEqual(harness.status_names, [WAIT, FAILED])
        self.assertIn("NetStream.Publish.BadName", harness.statuses[-1][1])
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertTrue(harness.transport and harness.transport.disconnecting)

    def test_rejected_connect_fails(self) -> None:
        """A rejected connect is FAILED too."""
        harness = Harness()
        harness.publisher.start()
        harness.connect(FakeRtmpServer(connect_error=True))
        self.assertEqual(harness.status_names, [WAIT, FAILED])
        self.assertIn("NetConnection.Connect.Rejected", harness.statuses[-1][1])

    def test_closed_in_answer_to_publish_is_refusal(self) -> None:
        """A server closing the connection in answer to the first publish (nginx on_publish deny) refuses."""
        harness = Harness()
        harness.publisher.start()
        harness.connect(FakeRtmpServer(answer_publish=False))
        harness.lose()
        self.assertEqual(harness.status_names, [WAIT, FAILED])
        self.assertIn("closed the connection in answer to publish", harness.statuses[-1][1])
        self.assertEqual(harness.reactor.getDelayedCalls(), [])


class ReconnectTests(SynchronousTestCase):
    def test_backoff_then_failed(self) -> None:
        """Failed attempts are retried after each delay in turn, then FAILED; WAIT meanwhile."""
        harness = Harness(reconnect_delays=(1, 2, 4))
        harness.publisher.start()
        for delay in (1, 2, 4):
            harness.fail_connect()
            self.assertEqual(len(harness.reactor.tcpClients), 1 + harness.publisher.stats.reconnects)
            harness.reactor.advance(delay - 0.01)
            self.assertEqual(len(harness.reactor.tcpClients), 1 + harness.publisher.stats.reconnects)
            harness.reactor.advance(0.01)
        self.assertEqual(len(harness.reactor.tcpClients), 4)
        self.assertEqual(harness.status_names, [WAIT])
        harness.fail_connect()
        self.assertEqual(harness.status_names, [WAIT, FAILED])
        self.assertIn("gave up after 3 retries", harness.statuses[-1][1])
        self.assertEqual(harness.publisher.stats.reconnects, 3)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_lost_then_active_again(self) -> None:
        """A dropped publishing connection is LOST, retried after the first delay, then ACTIVE."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        harness.lose()
        self.assertEqual(harness.status_names, [WAIT, ACTIVE, LOST])
        self.assertIn("reset by peer", harness.statuses[-1][1])
        harness.reactor.advance(1)
        self.assertEqual(len(harness.reactor.tcpClients), 2)
        harness.connect()
        self.assertEqual(harness.status_names, [WAIT, ACTIVE, LOST, ACTIVE])
        self.assertEqual((harness.publisher.stats.reconnects, harness.publisher.stats.publishes), (1, 2))

    def test_backoff_resets_after_success(self) -> None:
        """After a successful reconnect the next loss starts again at the first delay."""
        harness = Harness(reconnect_delays=(1, 5))
        harness.publisher.start()
        harness.connect()
        harness.lose()
        harness.reactor.advance(1)
        harness.fail_connect()
        harness.reactor.advance(5)
        harness.connect()
        harness.lose()
        harness.reactor.advance(1)
        self.assertEqual(len(harness.reactor.tcpClients), 4)

    def test_refusal_after_being_active_is_retried(self) -> None:
        """During reconnection a refusal (e.g. the server still holds our old session) is retried."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        harness.lose()
        harness.reactor.advance(1)
        harness.connect(FakeRtmpServer(publish_code="NetStream.Publish.BadName"))
        self.assertEqual(harness.status_names, [WAIT, ACTIVE, LOST])
        self.assertEqual(len(harness.reactor.getDelayedCalls()), 1)
        harness.reactor.advance(2)
        harness.connect()
        self.assertEqual(harness.status_names[-1], ACTIVE)

    def test_connect_timeout(self) -> None:
        """A server that never answers publish is abandoned after connect_timeout and retried."""
        harness = Harness(connect_timeout=5.0)
        harness.publisher.start()
        harness.connect(FakeRtmpServer(answer_publish=False))
        harness.reactor.advance(5)
        assert harness.transport is not None
        self.assertTrue(harness.transport.disconnecting)
        harness.lose()  # the abort's connectionLost is ignored: the attempt is already over
        self.assertEqual(harness.status_names, [WAIT])
        harness.reactor.advance(1)
        self.assertEqual(len(harness.reactor.tcpClients), 2)

    def test_no_delays_fails_at_once(self) -> None:
        """With no reconnect delays the first failure is final."""
        harness = Harness(reconnect_delays=())
        harness.publisher.start()
        harness.fail_connect()
        self.assertEqual(harness.status_names, [WAIT, FAILED])


class MediaTests(SynchronousTestCase):
    def active(self, **kwargs: Any) -> Harness:
        harness = Harness(**kwargs)
        harness.publisher.start()
        harness.connect()
        return harness

    def test_headers_replayed_first(self) -> None:
        """Metadata, AVC and AAC sequence headers given earlier are sent first, at timestamp 0."""
        harness = Harness()
        harness.publisher.start()
        for tag in (AAC_HEADER, AVC_HEADER, METADATA):
            harness.publisher.write(tag)
        harness.connect()
        self.assertEqual(
            harness.media(), [(18, 0, METADATA.body), (9, 0, AVC_HEADER.body), (8, 0, AAC_HEADER.body)]
        )

    def test_headers_replayed_on_reconnect(self) -> None:
        """Every new connection starts with the latest metadata and sequence headers again."""
        harness = self.active()
        newer_header = avc_sequence_header_tag(0, [SPS + b"\x01"], [PPS])
        for tag in (METADATA, AVC_HEADER, newer_header, AAC_HEADER, key(1000)):
            harness.publisher.write(tag)
        harness.lose()
        harness.reactor.advance(1)
        harness.connect()
        self.assertEqual([(t, ts) for t, ts, _body in harness.media()], [(18, 0), (9, 0), (8, 0)])
        self.assertEqual(harness.media()[1][2], newer_header.body)

    def test_keyframe_gating(self) -> None:
        """Video is dropped until a keyframe, which is asked for once; the keyframe is sent at 0."""
        harness = Harness()
        harness.publisher.start()
        harness.publisher.write(AVC_HEADER)
        harness.connect()
        self.assertEqual(harness.keyframe_requests, 1)
        for tag in (inter(960), inter(1000), key(1040), inter(1080)):
            harness.publisher.write(tag)
        media = [(t, ts) for t, ts, _ in harness.media()]
        self.assertEqual(media, [(9, 0), (9, 0), (9, 40)])
        self.assertEqual(harness.publisher.stats.dropped_video_frames, 2)
        self.assertEqual(harness.keyframe_requests, 1)

    def test_audio_waits_for_first_keyframe(self) -> None:
        """With video, audio is dropped until the first keyframe, then shares its time base."""
        harness = Harness()
        harness.publisher.start()
        harness.publisher.write(AVC_HEADER)
        harness.connect()
        for tag in (audio(990), inter(1000), audio(1013), key(1040), audio(1036), audio(1059), inter(1080)):
            harness.publisher.write(tag)
        media = [(t, ts) for t, ts, _ in harness.media()][1:]
        self.assertEqual(media, [(9, 0), (8, 0), (8, 19), (9, 40)])
        self.assertEqual(harness.publisher.stats.dropped_audio_frames, 2)

    def test_audio_only(self) -> None:
        """Without video, audio flows from the start and no keyframe is asked for."""
        harness = self.active()
        for ts in (500, 520, 540):
            harness.publisher.write(pcmu_audio_tag(ts, b"\xff" * 160))
        self.assertEqual([(t, ts) for t, ts, _ in harness.media()], [(8, 0), (8, 20), (8, 40)])
        self.assertEqual(harness.keyframe_requests, 0)

    def test_audio_not_gated_when_video_starts_late(self) -> None:
        """Audio already flowing is not interrupted when video appears later."""
        harness = self.active()
        harness.publisher.write(audio(0))
        harness.publisher.write(AVC_HEADER)
        harness.publisher.write(inter(10))
        harness.publisher.write(audio(23))
        self.assertEqual([(t, ts) for t, ts, _ in harness.media()], [(8, 0), (9, 0), (8, 23)])
        self.assertEqual(harness.keyframe_requests, 1)

    def test_timestamps_monotonic_per_track(self) -> None:
        """A tag older than the last one sent on its track goes out at the track's last timestamp."""
        harness = self.active()
        for tag in (key(100), inter(140), inter(120), audio(150), audio(130)):
            harness.publisher.write(tag)
        self.assertEqual(
            [(t, ts) for t, ts, _ in harness.media()], [(9, 0), (9, 40), (9, 40), (8, 50), (8, 50)]
        )

    def test_rebased_after_reconnect(self) -> None:
        """Each connection starts its timestamps at 0 from its first keyframe."""
        harness = self.active()
        harness.publisher.write(key(1000))
        harness.publisher.write(inter(1040))
        harness.lose()
        harness.reactor.advance(1)
        harness.connect()
        harness.publisher.write(inter(5000))
        harness.publisher.write(key(5040))
        harness.publisher.write(inter(5080))
        self.assertEqual([(t, ts) for t, ts, _ in harness.media()], [(9, 0), (9, 40)])
        self.assertEqual(harness.keyframe_requests, 1)  # at the second publish start only

    def test_dropped_while_not_connected(self) -> None:
        """Frames written while no connection publishes are dropped and counted."""
        harness = Harness()
        harness.publisher.start()
        harness.publisher.write(key(0))
        harness.publisher.write(audio(0))
        stats = harness.publisher.stats
        self.assertEqual((stats.dropped_video_frames, stats.dropped_audio_frames), (1, 1))

    def test_metadata_update_while_active(self) -> None:
        """New metadata or headers while publishing are sent at once."""
        harness = self.active()
        harness.publisher.write(key(0))
        harness.publisher.write(inter(40))
        harness.publisher.write(METADATA)
        self.assertEqual([(t, ts) for t, ts, _ in harness.media()], [(9, 0), (9, 40), (18, 0)])

    def test_stats(self) -> None:
        """bytes_sent matches the bytes written to transports; tags_sent counts headers and media."""
        harness = Harness()
        harness.publisher.start()
        harness.publisher.write(AVC_HEADER)
        protocol_bytes = 0
        harness.connect()
        harness.publisher.write(key(0))
        assert harness.protocol is not None
        protocol_bytes = harness.protocol.bytes_written
        self.assertEqual(harness.publisher.stats.bytes_sent, protocol_bytes)
        self.assertEqual(harness.publisher.stats.tags_sent, 2)


class BackPressureTests(SynchronousTestCase):
    def test_video_dropped_until_keyframe(self) -> None:
        """Above max_buffered_bytes held back, video is dropped (counted) until a keyframe fits."""
        harness = Harness(max_buffered_bytes=1000)
        harness.publisher.start()
        harness.connect()
        protocol = harness.protocol
        assert protocol is not None
        harness.publisher.write(key(0))
        protocol.pauseProducing()  # what a full transport does
        harness.publisher.write(inter(40, size=1500))  # held back: now over the limit
        self.assertGreater(protocol.buffered_bytes, 1000)
        requests = harness.keyframe_requests
        harness.publisher.write(inter(80))
        harness.publisher.write(key(120))  # still congested: dropped as well
        self.assertEqual(harness.publisher.stats.dropped_video_frames, 2)
        self.assertEqual(harness.keyframe_requests, requests + 1)
        protocol.resumeProducing()  # the transport drained
        self.assertEqual(protocol.buffered_bytes, 0)
        harness.publisher.write(inter(160))
        harness.publisher.write(key(200))
        self.assertEqual([ts for t, ts, _ in harness.media()], [0, 40, 200])
        self.assertEqual(harness.publisher.stats.dropped_video_frames, 3)

    def test_audio_dropped_above_twice_the_limit(self) -> None:
        """Audio keeps flowing past the video limit and is dropped only above twice it."""
        harness = Harness(max_buffered_bytes=1000)
        harness.publisher.start()
        harness.connect()
        assert harness.protocol is not None
        harness.protocol.pauseProducing()
        harness.publisher.write(pcmu_audio_tag(0, bytes(1200)))
        harness.publisher.write(pcmu_audio_tag(20, bytes(900)))
        self.assertEqual(harness.publisher.stats.dropped_audio_frames, 0)
        harness.publisher.write(pcmu_audio_tag(40, bytes(100)))
        self.assertEqual(harness.publisher.stats.dropped_audio_frames, 1)
        self.assertLess(harness.protocol.buffered_bytes, 2 * 1000 + 1300)

    def test_memory_bounded_whatever_the_server_does(self) -> None:
        """With the transport paused for good, held-back bytes stay bounded however much is written."""
        harness = Harness(max_buffered_bytes=10_000)
        harness.publisher.start()
        harness.connect()
        assert harness.protocol is not None
        harness.protocol.pauseProducing()
        for index in range(2000):
            ts = index * 20
            harness.publisher.write(key(ts, 3000) if index % 50 == 0 else inter(ts, 800))
            harness.publisher.write(audio(ts))
        self.assertLess(harness.protocol.buffered_bytes, 2 * 10_000 + 3100)
        self.assertGreater(harness.publisher.stats.dropped_video_frames, 1900)


class StopTests(SynchronousTestCase):
    def test_stop_while_active(self) -> None:
        """stop() sends FCUnpublish and deleteStream, closes, and fires once the connection is gone."""
        harness = Harness()
        harness.publisher.start()
        server = harness.connect()
        done = harness.publisher.stop()
        harness.exchange()
        self.assertEqual(server.command_names()[-2:], ["FCUnpublish", "deleteStream"])
        assert harness.transport is not None
        self.assertTrue(harness.transport.disconnecting)
        self.assertNoResult(done)
        harness.lose()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        self.assertEqual(harness.status_names, [WAIT, ACTIVE])

    def test_stop_cancels_retry_timer(self) -> None:
        """stop() while waiting to retry cancels the timer and fires at once."""
        harness = Harness()
        harness.publisher.start()
        harness.fail_connect()
        self.assertEqual(len(harness.reactor.getDelayedCalls()), 1)
        self.successResultOf(harness.publisher.stop())
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        harness.reactor.advance(100)
        self.assertEqual(len(harness.reactor.tcpClients), 1)

    def test_stop_while_connecting(self) -> None:
        """stop() during the TCP connect stops the connector and cancels the attempt timer."""
        harness = Harness()
        harness.publisher.start()
        self.successResultOf(harness.publisher.stop())
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        harness.fail_connect()  # the connector's late failure is ignored
        self.assertEqual(harness.status_names, [WAIT])

    def test_stop_timeout_aborts(self) -> None:
        """A connection that does not close within stop_timeout is aborted."""
        harness = Harness(stop_timeout=3.0)
        harness.publisher.start()
        harness.connect()
        done = harness.publisher.stop()
        second = harness.publisher.stop()
        harness.reactor.advance(3)
        self.assertNoResult(done)
        harness.lose()
        self.successResultOf(done)
        self.successResultOf(second)
        self.successResultOf(harness.publisher.stop())
        self.assertEqual(harness.reactor.getDelayedCalls(), [])

    def test_write_after_stop_ignored(self) -> None:
        """Tags written after stop() are ignored."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        harness.publisher.stop()
        harness.publisher.write(key(0))
        self.assertEqual(harness.publisher.stats.dropped_video_frames, 0)
        self.assertEqual(harness.publisher.stats.tags_sent, 0)


class ProtocolAdapterTests(SynchronousTestCase):
    def test_data_received_never_raises(self) -> None:
        """Garbage from the server closes the connection instead of raising; the publisher retries."""
        harness = Harness()
        harness.publisher.start()
        harness.connect(FakeRtmpServer(answer_publish=False))
        assert harness.protocol is not None and harness.transport is not None
        harness.protocol.dataReceived(b"\x47\x00\x00\x00\x00\x00\x01\x08a")
        self.assertTrue(harness.transport.disconnecting)
        self.assertEqual(harness.protocol.received_errors, 1)
        harness.lose()
        self.assertEqual(harness.status_names, [WAIT])
        self.assertEqual(len(harness.reactor.getDelayedCalls()), 1)

    def test_callback_errors_contained(self) -> None:
        """An on_status callback that raises does not break the publisher."""
        reactor = MemoryReactorClock()

        def broken(status: RtmpStreamStatus, reason: str) -> None:
            raise RuntimeError("boom")

        publisher = RtmpPublisher(reactor, "rtmp://h/live", "cam", on_status=broken)
        publisher.start()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_script_tag_body(self) -> None:
        """Script tags keep their AMF0 body on the way to the server."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        harness.publisher.write(FlvTag(TagType.SCRIPT, 0, amf0.encode("onCuePoint", {"n": 1.0})))
        self.assertEqual(amf0.decode(harness.media()[0][2]), ["onCuePoint", {"n": 1.0}])

    def test_server_status_while_active(self) -> None:
        """A later onStatus from the server (e.g. Unpublish.Success) is logged; the stream stays ACTIVE."""
        harness = Harness()
        harness.publisher.start()
        server = harness.connect()
        assert harness.protocol is not None
        harness.protocol.dataReceived(
            server.on_status("NetStream.Unpublish.Success", "status", "Stop publishing")
        )
        self.assertEqual(harness.status_names, [WAIT, ACTIVE])
        self.assertEqual(self.flushLoggedErrors(), [])
        assert harness.transport is not None
        self.assertFalse(harness.transport.disconnecting)

    def test_close_unregisters_producer(self) -> None:
        """Closing unregisters the protocol as producer (TLS transports wait for that before closing)."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        assert harness.transport is not None and harness.protocol is not None
        self.assertIs(harness.transport.producer, harness.protocol)
        harness.publisher.stop()
        self.assertIsNone(harness.transport.producer)

    def test_fatal_error_then_stop(self) -> None:
        """A fatal protocol error followed by stop() closes once without raising."""
        harness = Harness()
        harness.publisher.start()
        harness.connect()
        assert harness.protocol is not None
        harness.protocol.dataReceived(b"\x47\x00\x00\x00\x00\x00\x01\x08a")
        done = harness.publisher.stop()
        harness.lose()
        self.successResultOf(done)
        self.assertEqual(self.flushLoggedErrors(), [])
