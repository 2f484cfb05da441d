"""Tests for wcsgw.rtmp.session, against a scripted server built from our own codec."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from tests.rtmp_fakes import FakeRtmpServer, drain_events, pump
from wcsgw.rtmp import amf0
from wcsgw.rtmp.chunk import (
    LIMIT_TYPE_DYNAMIC,
    LIMIT_TYPE_HARD,
    LIMIT_TYPE_SOFT,
    MSG_ACKNOWLEDGEMENT,
    MSG_AMF3_COMMAND,
    MSG_SET_CHUNK_SIZE,
    MSG_USER_CONTROL,
    MSG_WINDOW_ACKNOWLEDGEMENT_SIZE,
    USER_CONTROL_PING_REQUEST,
    USER_CONTROL_STREAM_BEGIN,
    RtmpMessage,
    acknowledgement_message,
    set_peer_bandwidth_message,
    user_control_message,
    window_acknowledgement_size_message,
)
from wcsgw.rtmp.flv import FlvTag, TagType, avc_video_tag, metadata_tag
from wcsgw.rtmp.session import (
    Closed,
    Connected,
    ProtocolError,
    PublishRefused,
    PublishStarted,
    RtmpClientSession,
    SessionState,
    StatusReceived,
)


def make_session(
    url: str = "rtmp://example.com/live", name: str = "cam", **kwargs: object
) -> RtmpClientSession:
    return RtmpClientSession(url, name, 1000.0, random_bytes=lambda n: bytes(n), **kwargs)  # type: ignore[arg-type]


class SetupTests(SynchronousTestCase):
    def test_handshake_first(self) -> None:
        """A new session has C0 + C1 ready to send, with the time from ``now`` in C1."""
        session = make_session()
        data = session.data_to_send()
        self.assertEqual(len(data), 1537)
        self.assertEqual(data[:9], b"\x03" + struct.pack(">I", 1_000_000) + bytes(4))
        self.assertEqual(session.state, SessionState.HANDSHAKING)

    def test_command_sequence(self) -> None:
        """connect, releaseStream, FCPublish, createStream and publish(live) go out in order."""
        session = make_session("rtmp://example.com:1935/live/_definst_?token=t", "cam?key=k")
        server = FakeRtmpServer(stream_id=7.0)
        pump(session, server)
        self.assertEqual(
            server.command_names(), ["connect", "releaseStream", "FCPublish", "createStream", "publish"]
        )
        connect = server.commands[0]
        self.assertEqual(connect[1], 1.0)
        self.assertEqual(connect[2]["app"], "live/_definst_?token=t")
        self.assertEqual(connect[2]["tcUrl"], "rtmp://example.com:1935/live/_definst_?token=t")
        self.assertEqual(connect[2]["type"], "nonprivate")
        self.assertEqual(server.commands[1][2:], [None, "cam?key=k"])
        self.assertEqual(server.commands[2][2:], [None, "cam?key=k"])
        self.assertEqual(server.commands[4][2:], [None, "cam?key=k", "live"])
        publish = [m for m in server.messages if m.type_id == 20][-1]
        self.assertEqual(publish.stream_id, 7)
        self.assertEqual(session.state, SessionState.PUBLISHING)
        self.assertEqual(session.stream_id, 7)

    def test_events(self) -> None:
        """Connected, then PublishStarted with the created stream id, are reported."""
        session = make_session()
        pump(session, FakeRtmpServer())
        events = drain_events(session)
        self.assertEqual([type(e) for e in events], [Connected, PublishStarted])
        self.assertEqual(events[0].info["code"], "NetConnection.Connect.Success")
        self.assertEqual(events[1], PublishStarted(1, "cam answered NetStream.Publish.Start"))

    def test_control_messages_before_connect(self) -> None:
        """Set Chunk Size 4096 and our Window Acknowledgement Size precede connect."""
        session = make_session(window_ack_size=1_234_567)
        server = FakeRtmpServer()
        pump(session, server)
        first = server.messages[:3]
        self.assertEqual(
            [m.type_id for m in first], [MSG_SET_CHUNK_SIZE, MSG_WINDOW_ACKNOWLEDGEMENT_SIZE, 20]
        )
        self.assertEqual(first[0].payload, struct.pack(">I", 4096))
        self.assertEqual(first[1].payload, struct.pack(">I", 1_234_567))
        self.assertEqual(server.decoder.chunk_size, 4096)

    def test_handshake_in_pieces(self) -> None:
        """Server bytes split at odd places (inside S1, S2 and the chunk stream) still work."""
        session = make_session()
        server = FakeRtmpServer()
        for _ in range(10):
            data = session.data_to_send()
            if not data:
                break
            reply = server.receive(data)
            for start in range(0, len(reply), 100):
                session.receive_data(reply[start : start + 100])
        self.assertEqual(session.state, SessionState.PUBLISHING)

    def test_server_chunk_size(self) -> None:
        """A server that raises its chunk size is read correctly."""
        session = make_session()
        pump(session, FakeRtmpServer(chunk_size=60000))
        self.assertEqual(session.state, SessionState.PUBLISHING)

    def test_stream_name_checked(self) -> None:
        """An invalid stream name is refused at construction."""
        with self.assertRaises(ValueError):
            make_session(name="")


class RefusalTests(SynchronousTestCase):
    def test_bad_name(self) -> None:
        """NetStream.Publish.BadName is a PublishRefused with the server's code and description."""
        session = make_session()
        pump(session, FakeRtmpServer(publish_code="NetStream.Publish.BadName"))
        events = drain_events(session)
        self.assertEqual(
            events[-1], PublishRefused("NetStream.Publish.BadName", "cam answered NetStream.Publish.BadName")
        )
        self.assertEqual(session.state, SessionState.REFUSED)

    def test_publish_failed_and_other_errors(self) -> None:
        """Publish.Failed, and any error-level status in answer to publish, refuse."""
        for code in ("NetStream.Publish.Failed", "NetStream.Publish.Denied", "Custom.Error"):
            session = make_session()
            pump(session, FakeRtmpServer(publish_code=code))
            self.assertIsInstance(drain_events(session)[-1], PublishRefused, code)

    def test_connect_rejected(self) -> None:
        """A connect _error is refused with NetConnection.Connect.Rejected; nothing more is sent."""
        session = make_session()
        server = FakeRtmpServer(connect_error=True)
        pump(session, server)
        self.assertEqual(drain_events(session), [PublishRefused("NetConnection.Connect.Rejected", "go away")])
        self.assertEqual(server.command_names(), ["connect"])

    def test_create_stream_error(self) -> None:
        """A createStream _error refuses."""
        session = make_session()
        server = FakeRtmpServer(auto=False)
        pump(session, server)
        session.receive_data(server.command("_result", 1.0, {}, {"code": "NetConnection.Connect.Success"}))
        pump(session, server)
        session.receive_data(
            server.command("_error", 4.0, None, {"code": "NetStream.Failed", "description": "no"})
        )
        self.assertEqual(drain_events(session)[-1], PublishRefused("NetStream.Failed", "no"))

    def test_publish_error_result(self) -> None:
        """A _error answering publish's transaction refuses."""
        session = make_session()
        server = FakeRtmpServer(answer_publish=False)
        pump(session, server)
        session.receive_data(server.command("_error", 5.0, None, {"code": "NetStream.Publish.Rejected"}))
        self.assertEqual(drain_events(session)[-1], PublishRefused("NetStream.Publish.Rejected", ""))

    def test_errors_for_release_stream_ignored(self) -> None:
        """Some servers answer releaseStream and FCPublish with _error: that changes nothing."""
        session = make_session()
        server = FakeRtmpServer(answer_publish=False)
        pump(session, server)
        session.receive_data(server.command("_error", 2.0, None, {"code": "NetConnection.Call.Failed"}))
        session.receive_data(server.command("_error", 3.0, None, {"code": "NetConnection.Call.Failed"}))
        self.assertEqual(session.state, SessionState.PUBLISH_REQUESTED)
        session.receive_data(server.on_status("NetStream.Publish.Start"))
        self.assertEqual(session.state, SessionState.PUBLISHING)


class ControlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.session = make_session()
        self.server = FakeRtmpServer()
        pump(self.session, self.server)
        drain_events(self.session)
        self.before = len(self.server.messages)

    def sent_after(self) -> list[RtmpMessage]:
        self.server.receive(self.session.data_to_send())
        return self.server.messages[self.before :]

    def test_ping(self) -> None:
        """A PingRequest is answered by a PingResponse with the same timestamp."""
        self.session.receive_data(
            self.server.send(user_control_message(USER_CONTROL_PING_REQUEST, b"\x00\x01\x02\x03"))
        )
        sent = self.sent_after()
        self.assertEqual(
            [(m.type_id, m.payload) for m in sent], [(MSG_USER_CONTROL, b"\x00\x07\x00\x01\x02\x03")]
        )

    def test_other_user_control_ignored(self) -> None:
        """Stream Begin and other events need no answer."""
        self.session.receive_data(
            self.server.send(user_control_message(USER_CONTROL_STREAM_BEGIN, b"\x00\x00\x00\x01"))
        )
        self.assertEqual(self.sent_after(), [])

    def test_acknowledgement(self) -> None:
        """After the server's window of bytes an Acknowledgement with the byte count is sent."""
        self.session.receive_data(self.server.send(window_acknowledgement_size_message(1000)))
        received = self.session._chunk_bytes_received
        padding = self.server.send(RtmpMessage(3, 18, 0, 0, bytes(995 - (received % 1000))))
        self.session.receive_data(padding)
        acks = [m for m in self.sent_after() if m.type_id == MSG_ACKNOWLEDGEMENT]
        self.assertEqual(len(acks), 1)
        self.assertEqual(struct.unpack(">I", acks[0].payload)[0], self.session._chunk_bytes_received)
        self.assertEqual(self.session.acknowledgements_sent, 1)
        self.session.receive_data(self.server.send(RtmpMessage(3, 18, 0, 0, bytes(10))))
        self.assertEqual([m for m in self.sent_after() if m.type_id == MSG_ACKNOWLEDGEMENT], acks)

    def test_peer_acknowledgement_recorded(self) -> None:
        """The server's Acknowledgement sequence number is kept."""
        self.session.receive_data(self.server.send(acknowledgement_message(4242)))
        self.assertEqual(self.session.peer_acknowledged, 4242)

    def test_set_peer_bandwidth_hard(self) -> None:
        """A hard limit different from our last Window Ack Size is answered with that size."""
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(3_000_000, LIMIT_TYPE_HARD)))
        sent = self.sent_after()
        self.assertEqual(
            [(m.type_id, m.payload) for m in sent],
            [(MSG_WINDOW_ACKNOWLEDGEMENT_SIZE, struct.pack(">I", 3_000_000))],
        )
        self.assertEqual(self.session.peer_bandwidth, 3_000_000)

    def test_set_peer_bandwidth_soft_and_dynamic(self) -> None:
        """Soft keeps the smaller limit; dynamic counts as hard only after a hard limit."""
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(2_000_000, LIMIT_TYPE_HARD)))
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(3_000_000, LIMIT_TYPE_SOFT)))
        self.assertEqual(self.session.peer_bandwidth, 2_000_000)
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(1_000_000, LIMIT_TYPE_SOFT)))
        self.assertEqual(self.session.peer_bandwidth, 1_000_000)
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(4_000_000, LIMIT_TYPE_DYNAMIC)))
        self.assertEqual(self.session.peer_bandwidth, 1_000_000)  # previous limit was soft: ignored
        windows = [m.payload for m in self.sent_after() if m.type_id == MSG_WINDOW_ACKNOWLEDGEMENT_SIZE]
        self.assertEqual(windows, [struct.pack(">I", 2_000_000), struct.pack(">I", 1_000_000)])

    def test_same_window_not_repeated(self) -> None:
        """A peer bandwidth equal to the window we last sent needs no answer."""
        self.session.receive_data(self.server.send(set_peer_bandwidth_message(2_500_000, LIMIT_TYPE_HARD)))
        self.assertEqual(self.sent_after(), [])

    def test_amf3_command(self) -> None:
        """An AMF3 command message (0x00 then AMF0) is handled like an AMF0 one."""
        payload = b"\x00" + amf0.encode("onStatus", 0.0, None, {"level": "status", "code": "X.Y"})
        self.session.receive_data(self.server.send(RtmpMessage(5, MSG_AMF3_COMMAND, 0, 1, payload)))
        self.assertEqual(drain_events(self.session), [StatusReceived("status", "X.Y", "")])

    def test_status_while_publishing(self) -> None:
        """Later onStatus messages are passed on as StatusReceived."""
        self.session.receive_data(self.server.on_status("NetStream.Publish.Idle", "status", "idle"))
        self.assertEqual(
            drain_events(self.session), [StatusReceived("status", "NetStream.Publish.Idle", "idle")]
        )

    def test_close_command(self) -> None:
        """A close command from the server is reported as an error status."""
        self.session.receive_data(self.server.command("close", 0.0, None))
        self.assertEqual(drain_events(self.session)[0].code, "NetConnection.Connect.Closed")


class MediaTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.session = make_session()
        self.server = FakeRtmpServer(stream_id=3.0)
        pump(self.session, self.server)

    def test_send_tags(self) -> None:
        """Tags become audio (8), video (9) and data (18) messages on the created stream."""
        video = avc_video_tag(40, [b"\x65" + bytes(6000)], keyframe=True)
        self.session.send_tag(metadata_tag({"width": 1.0}))
        self.session.send_tag(video)
        self.session.send_tag(FlvTag(TagType.AUDIO, 23, b"\xaf\x01\x21"), timestamp_ms=5)
        self.server.receive(self.session.data_to_send())
        media = self.server.media()
        self.assertEqual(
            [(m.type_id, m.timestamp, m.stream_id) for m in media], [(18, 0, 3), (9, 40, 3), (8, 5, 3)]
        )
        self.assertEqual(media[1].payload, video.body)
        self.assertEqual(amf0.decode(media[0].payload)[0], "@setDataFrame")

    def test_send_before_publishing(self) -> None:
        """Sending a tag before NetStream.Publish.Start is a programming error."""
        session = make_session()
        with self.assertRaises(RuntimeError):
            session.send_tag(FlvTag(TagType.AUDIO, 0, b"\x82"))

    def test_unpublish(self) -> None:
        """unpublish() sends FCUnpublish(name) and deleteStream(stream id)."""
        self.session.unpublish()
        self.server.receive(self.session.data_to_send())
        self.assertEqual(self.server.commands[-2][0::3], ["FCUnpublish", "cam"])
        self.assertEqual(self.server.commands[-1][0], "deleteStream")
        self.assertEqual(self.server.commands[-1][3], 3.0)
        self.assertEqual(self.session.state, SessionState.UNPUBLISHED)
        self.session.unpublish()
        self.assertEqual(self.session.data_to_send(), b"")

    def test_counters(self) -> None:
        """bytes_sent and bytes_received count what went through the session."""
        self.assertGreater(self.session.bytes_received, 1536 * 2)
        self.assertGreater(self.session.bytes_sent, 1537 + 1536)
        self.assertEqual(self.session.pending_bytes, 0)

    def test_pending_bytes_is_what_data_to_send_gives(self) -> None:
        """``pending_bytes`` counts what is queued (tags small and larger than a chunk, commands), exactly what
        ``data_to_send`` then returns, in order."""
        self.session.data_to_send()
        for n in range(5):
            self.session.send_tag(FlvTag(TagType.VIDEO, n * 40, bytes([n]) * (1000 + n * 3000)))
            self.session.send_tag(FlvTag(TagType.AUDIO, n * 40, b"\xaf\x01" + bytes(200)))
        self.session.unpublish()
        queued = self.session.pending_bytes
        data = self.session.data_to_send()
        self.assertEqual(len(data), queued)
        self.assertEqual(self.session.pending_bytes, 0)
        before = len(self.server.media())
        self.server.receive(data)
        self.assertEqual([m.payload for m in self.server.media()[before:]],
                         [body for n in range(5) for body in (bytes([n]) * (1000 + n * 3000), b"\xaf\x01" + bytes(200))])
        self.assertEqual(self.server.commands[-1][0], "deleteStream")

    def test_take_output_gives_the_pieces_without_copying_media(self) -> None:
        """``take_output``: the pieces, joined, are the bytes ``data_to_send`` would give, their size is
        ``pending_bytes`` and goes into ``bytes_sent``; a media payload is the tag's body or a view of it."""
        self.session.data_to_send()
        body = bytes(range(256)) * 40  # three chunks of 4096
        small = b"\xaf\x01" + bytes(100)
        self.session.send_tag(FlvTag(TagType.VIDEO, 40, body))
        self.session.send_tag(FlvTag(TagType.AUDIO, 40, small))
        queued, sent = self.session.pending_bytes, self.session.bytes_sent
        pieces, size = self.session.take_output()
        self.assertEqual((size, self.session.pending_bytes, self.session.bytes_sent), (queued, 0, sent + queued))
        self.assertEqual(sum(len(piece) for piece in pieces), size)
        self.assertTrue(any(piece is small for piece in pieces))
        views = [piece for piece in pieces if isinstance(piece, memoryview)]
        self.assertEqual(len(views), 3)
        self.assertTrue(all(view.obj is body for view in views))
        before = len(self.server.media())
        self.server.receive(b"".join(pieces))
        self.assertEqual([m.payload for m in self.server.media()[before:]], [body, small])
        self.assertEqual(self.session.take_output(), ([], 0))


class MalformedInputTests(SynchronousTestCase):
    def test_bad_handshake_version(self) -> None:
        """A wrong S0 version is a fatal ProtocolError, not an exception."""
        session = make_session()
        session.data_to_send()
        session.receive_data(b"\x06" + bytes(3072))
        self.assertEqual(
            drain_events(session),
            [ProtocolError("server handshake version (S0) is 6, expected 3", fatal=True)],
        )
        self.assertEqual((session.state, session.errors), (SessionState.FAILED, 1))

    def test_bad_chunk_is_fatal_and_later_input_ignored(self) -> None:
        """A malformed chunk stream fails the session; later bytes are ignored."""
        session = make_session()
        server = FakeRtmpServer()
        pump(session, server)
        drain_events(session)
        session.receive_data(b"\x47\x00\x00\x00\x00\x00\x01\x08a")
        events = drain_events(session)
        self.assertEqual(len(events), 1)
        self.assertTrue(events[0].fatal)
        self.assertEqual(
            events[0].message, "chunk stream 7 starts with a fmt 1 header; the first must be fmt 0"
        )
        session.receive_data(server.on_status("X"))
        self.assertEqual(drain_events(session), [])

    def test_bad_amf_is_counted_not_fatal(self) -> None:
        """A command whose AMF0 is broken is a non-fatal error; the session goes on."""
        session = make_session()
        server = FakeRtmpServer(answer_publish=False)
        pump(session, server)
        drain_events(session)
        session.receive_data(server.send(RtmpMessage(3, 20, 0, 0, b"\x02\x00\x09onSt")))
        session.receive_data(server.send(RtmpMessage(3, MSG_USER_CONTROL, 0, 0, b"\x00")))
        session.receive_data(server.send(RtmpMessage(3, MSG_USER_CONTROL, 0, 0, b"\x00\x06\x01")))
        session.receive_data(server.send(RtmpMessage(3, MSG_WINDOW_ACKNOWLEDGEMENT_SIZE, 0, 0, b"\x01")))
        session.receive_data(server.command("_result", 99.5, None))
        session.receive_data(server.send(RtmpMessage(3, 20, 0, 0, amf0.encode(5.0))))
        events = drain_events(session)
        self.assertEqual([e.fatal for e in events], [False] * 6)
        self.assertEqual(
            events[0].message, "message type 20: AMF0 truncated: string at offset 3 needs 9 bytes, 4 left"
        )
        self.assertEqual(session.errors, 6)
        session.receive_data(server.on_status("NetStream.Publish.Start"))
        self.assertEqual(session.state, SessionState.PUBLISHING)

    def test_bad_stream_id(self) -> None:
        """A createStream result without a usable stream id is reported."""
        session = make_session()
        server = FakeRtmpServer(stream_id=-1.0)
        pump(session, server)
        self.assertIsInstance(drain_events(session)[-1], ProtocolError)
        self.assertEqual(session.state, SessionState.CREATING_STREAM)

    def test_garbage_never_raises(self) -> None:
        """Random bytes at any stage never raise out of receive_data."""
        import random

        generator = random.Random(5)
        for stage in range(3):
            for _ in range(30):
                session = make_session()
                if stage:
                    pump(session, FakeRtmpServer(answer_publish=stage == 2))
                session.receive_data(
                    bytes(generator.randrange(256) for _ in range(generator.randrange(1, 4000)))
                )
                drain_events(session)


class CloseTests(SynchronousTestCase):
    def test_connection_lost(self) -> None:
        """connection_lost() reports Closed once and remembers the state it closed in."""
        session = make_session()
        pump(session, FakeRtmpServer(answer_publish=False))
        drain_events(session)
        session.connection_lost("gone")
        session.connection_lost("again")
        self.assertEqual(drain_events(session), [Closed("gone")])
        self.assertEqual(
            (session.state, session.closed_in_state), (SessionState.CLOSED, SessionState.PUBLISH_REQUESTED)
        )
        received = session.bytes_received
        session.receive_data(b"late")
        self.assertEqual((session.bytes_received, drain_events(session)), (received, []))
