"""A sans-I/O RTMP publishing client session.

The session takes the server's bytes (:meth:`RtmpClientSession.receive_data`), produces the
bytes to send (:meth:`RtmpClientSession.data_to_send`) and reports what happened as events
(:meth:`RtmpClientSession.next_event`). It runs the handshake, then
``connect`` -> ``releaseStream`` -> ``FCPublish`` -> ``createStream`` -> ``publish(live)``;
once the server answers ``NetStream.Publish.Start``, :meth:`RtmpClientSession.send_tag` sends
FLV tags as audio, video and AMF0 data messages. It answers pings, acknowledges the server's
window and announces its own. Malformed server input never raises: it becomes a
:class:`ProtocolError` event and is counted in :attr:`RtmpClientSession.errors`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from wcsgw.rtmp import amf0
from wcsgw.rtmp.chunk import (
    LIMIT_TYPE_DYNAMIC,
    LIMIT_TYPE_HARD,
    LIMIT_TYPE_SOFT,
    MSG_ACKNOWLEDGEMENT,
    MSG_AMF0_COMMAND,
    MSG_AMF3_COMMAND,
    MSG_SET_PEER_BANDWIDTH,
    MSG_USER_CONTROL,
    MSG_WINDOW_ACKNOWLEDGEMENT_SIZE,
    USER_CONTROL_PING_REQUEST,
    USER_CONTROL_PING_RESPONSE,
    ChunkDecoder,
    ChunkEncoder,
    RtmpMessage,
    acknowledgement_message,
    user_control_message,
    window_acknowledgement_size_message,
)
from wcsgw.rtmp.flv import FlvTag, TagType
from wcsgw.rtmp.handshake import ClientHandshake
from wcsgw.rtmp.url import RtmpUrl, check_stream_name, parse

DEFAULT_FLASH_VER: Final = "FMLE/3.0 (compatible; wcsgw)"
DEFAULT_CHUNK_SIZE: Final = 4096
DEFAULT_WINDOW_ACK_SIZE: Final = 2_500_000

# Chunk stream ids we use (2 is reserved for protocol control messages).
CSID_COMMAND: Final = 3
CSID_AUDIO: Final = 4
CSID_STREAM: Final = 5  # publish and @setDataFrame on the created stream
CSID_VIDEO: Final = 6

STATUS_PUBLISH_START: Final = "NetStream.Publish.Start"
REFUSAL_CODES: Final = frozenset(
    {
        "NetStream.Publish.BadName",
        "NetStream.Publish.Failed",
        "NetStream.Publish.Denied",
        "NetStream.Publish.Rejected",
        "NetStream.Failed",
        "NetConnection.Connect.Rejected",
        "NetConnection.Connect.Failed",
    }
)


class SessionState(enum.Enum):
    HANDSHAKING = "handshaking"
    CONNECTING = "connecting"  # connect sent
    CREATING_STREAM = "creating-stream"  # releaseStream, FCPublish, createStream sent
    PUBLISH_REQUESTED = "publish-requested"  # publish sent
    PUBLISHING = "publishing"  # NetStream.Publish.Start received
    UNPUBLISHED = "unpublished"  # FCUnpublish and deleteStream sent
    REFUSED = "refused"
    FAILED = "failed"  # fatal protocol error
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Connected:
    """The server accepted ``connect``."""

    properties: dict[str, Any]
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PublishStarted:
    """The server answered ``NetStream.Publish.Start``: tags may be sent."""

    stream_id: int
    description: str


@dataclasses.dataclass(frozen=True)
class PublishRefused:
    """The server rejected ``connect``, ``createStream`` or ``publish``."""

    code: str
    description: str


@dataclasses.dataclass(frozen=True)
class StatusReceived:
    """Any other ``onStatus`` (or a ``close`` command) from the server."""

    level: str
    code: str
    description: str


@dataclasses.dataclass(frozen=True)
class ProtocolError:
    """Malformed input. When ``fatal`` the chunk stream is lost and the connection must close."""

    message: str
    fatal: bool


@dataclasses.dataclass(frozen=True)
class Closed:
    """The connection is gone."""

    reason: str


Event = Connected | PublishStarted | PublishRefused | StatusReceived | ProtocolError | Closed


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class RtmpClientSession:
    """One connection's worth of RTMP publishing: handshake, commands, control messages, media."""

    def __init__(
        self,
        url: str | RtmpUrl,
        stream_name: str,
        now: float,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window_ack_size: int = DEFAULT_WINDOW_ACK_SIZE,
        flash_ver: str = DEFAULT_FLASH_VER,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.url = url if isinstance(url, RtmpUrl) else parse(url)
        self.stream_name = check_stream_name(stream_name)
        self.state = SessionState.HANDSHAKING
        self.closed_in_state: SessionState | None = None  # the state when the connection closed
        self.stream_id: int | None = None
        self._chunk_size = chunk_size
        self._window_ack_size = window_ack_size
        self._flash_ver = flash_ver
        self._handshake = ClientHandshake(int(now * 1000), random_bytes)
        self._encoder = ChunkEncoder()
        self._decoder = ChunkDecoder()
        # what is queued for the server: pieces (bytes, memoryviews of tag bodies), joined once by data_to_send
        self._out: list[bytes | memoryview] = []
        self._out_bytes = 0
        self._events: collections.deque[Event] = collections.deque()
        self._next_transaction = 1
        self._transactions: dict[int, str] = {}
        self._peer_limit_type: int | None = None
        self._last_window_sent: int | None = None
        self._chunk_bytes_received = 0
        self._acknowledged_at = 0

        # Counters and what the server told us.
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.errors = 0
        self.acknowledgements_sent = 0
        self.peer_window_ack_size: int | None = None  # Window Ack Size from the server
        self.peer_bandwidth: int | None = None  # Set Peer Bandwidth, after limit-type rules
        self.peer_acknowledged: int | None = None  # last Acknowledgement sequence number

        self._queue(self._handshake.start())

    # ------------------------------------------------------------------ I/O surface

    def data_to_send(self) -> bytes:
        """Everything queued for the server since the last call."""
        out, _size = self.take_output()
        if not out:
            return b""
        return out[0] if len(out) == 1 and type(out[0]) is bytes else b"".join(out)  # type: ignore[return-value]

    def take_output(self) -> tuple[list[bytes | memoryview], int]:
        """``data_to_send`` as pieces to be written one after the other (media payloads are views of the tags'
        bodies, not copies), and their size in all."""
        out = self._out
        if not out:
            return out, 0
        size = self._out_bytes
        self._out = []
        self._out_bytes = 0
        self.bytes_sent += size
        return out, size

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet taken by :meth:`data_to_send`."""
        return self._out_bytes

    def _queue(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_bytes += len(data)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server. Never raises on malformed input."""
        if self.state in (SessionState.FAILED, SessionState.CLOSED) or not data:
            return
        self.bytes_received += len(data)
        try:
            if self.state is SessionState.HANDSHAKING:
                reply, data = self._handshake.receive_data(data)
                self._queue(reply)
                if not self._handshake.done:
                    return
                self._start_connect()
            if not data:
                return
            self._chunk_bytes_received += len(data)
            messages = self._decoder.feed(data)
        except ValueError as exc:
            self._fail(str(exc))
            return
        for message in messages:
            self.messages_received += 1
            try:
                self._handle_message(message)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                self.errors += 1
                self._events.append(ProtocolError(f"message type {message.type_id}: {exc}", fatal=False))
        self._maybe_acknowledge()

    def connection_lost(self, reason: str) -> None:
        """The transport closed; the session ends."""
        if self.state is SessionState.CLOSED:
            return
        self.closed_in_state = self.state
        self.state = SessionState.CLOSED
        self._events.append(Closed(reason))

    # ------------------------------------------------------------------ publishing

    @property
    def publishing(self) -> bool:
        return self.state is SessionState.PUBLISHING

    def send_tag(self, tag: FlvTag, timestamp_ms: int | None = None) -> None:
        """Send one FLV tag as an RTMP message (``timestamp_ms`` overrides the tag's)."""
        if self.state is not SessionState.PUBLISHING or self.stream_id is None:
            raise RuntimeError(f"cannot send media in state {self.state.value}")
        tag_type = tag.tag_type
        csid = CSID_VIDEO if tag_type == TagType.VIDEO else CSID_AUDIO if tag_type == TagType.AUDIO else CSID_STREAM
        ts = tag.timestamp_ms if timestamp_ms is None else timestamp_ms
        if not 0 <= ts <= 0xFFFFFFFF:
            raise ValueError(f"bad timestamp {ts}")
        # the other fields are valid by construction (chunk stream ids, FLV tag types, a 16 MB body at most)
        pieces, size = self._encoder.pieces(csid, tag_type, ts, self.stream_id, tag.body)
        self._out += pieces
        self._out_bytes += size

    def unpublish(self) -> None:
        """Send ``FCUnpublish`` and ``deleteStream`` for a stream being published."""
        if self.state not in (SessionState.PUBLISHING, SessionState.PUBLISH_REQUESTED):
            return
        self._command("FCUnpublish", "FCUnpublish", None, self.stream_name)
        if self.stream_id is not None:
            self._command("deleteStream", "deleteStream", None, float(self.stream_id))
        self.state = SessionState.UNPUBLISHED

    # ------------------------------------------------------------------ internals

    def _send(self, message: RtmpMessage) -> None:
        self._queue(self._encoder.encode(message))

    def _command(
        self, name: str, purpose: str, *args: Any, csid: int = CSID_COMMAND, stream_id: int = 0
    ) -> None:
        transaction = self._next_transaction
        self._next_transaction += 1
        self._transactions[transaction] = purpose
        payload = amf0.encode(name, float(transaction), *args)
        self._send(RtmpMessage(csid, MSG_AMF0_COMMAND, 0, stream_id, payload))

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.state = SessionState.FAILED
        self._events.append(ProtocolError(message, fatal=True))

    def _refuse(self, code: str, description: str) -> None:
        self.state = SessionState.REFUSED
        self._events.append(PublishRefused(code or "(no code)", description))

    def _start_connect(self) -> None:
        self._queue(self._encoder.set_chunk_size(self._chunk_size))
        self._send_window_ack_size(self._window_ack_size)
        command_object = {
            "app": self.url.app,
            "type": "nonprivate",
            "flashVer": self._flash_ver,
            "tcUrl": self.url.tc_url,
        }
        self._command("connect", "connect", command_object)
        self.state = SessionState.CONNECTING

    def _send_window_ack_size(self, size: int) -> None:
        self._send(window_acknowledgement_size_message(size))
        self._last_window_sent = size

    def _maybe_acknowledge(self) -> None:
        window = self.peer_window_ack_size
        if not window or self.state is SessionState.FAILED:
            return
        if self._chunk_bytes_received - self._acknowledged_at >= window:
            self._acknowledged_at = self._chunk_bytes_received
            self._send(acknowledgement_message(self._chunk_bytes_received))
            self.acknowledgements_sent += 1

    def _handle_message(self, message: RtmpMessage) -> None:
        type_id = message.type_id
        payload = message.payload
        if type_id == MSG_ACKNOWLEDGEMENT:
            self.peer_acknowledged = _u32(payload, "Acknowledgement")
        elif type_id == MSG_WINDOW_ACKNOWLEDGEMENT_SIZE:
            self.peer_window_ack_size = _u32(payload, "Window Acknowledgement Size")
        elif type_id == MSG_SET_PEER_BANDWIDTH:
            self._handle_peer_bandwidth(payload)
        elif type_id == MSG_USER_CONTROL:
            self._handle_user_control(payload)
        elif type_id == MSG_AMF0_COMMAND:
            self._handle_command(payload)
        elif type_id == MSG_AMF3_COMMAND:
            if not payload or payload[0] != 0:
                raise ValueError("AMF3 command does not start with the AMF0 switch byte 0x00")
            self._handle_command(payload[1:])
        # Set Chunk Size and Abort were applied by the decoder; media, data messages and
        # aggregates from the server mean nothing to a publisher.

    def _handle_peer_bandwidth(self, payload: bytes) -> None:
        if len(payload) != 5:
            raise ValueError(f"Set Peer Bandwidth payload is {len(payload)} bytes, expected 5")
        size, limit_type = struct.unpack(">IB", payload)
        if limit_type == LIMIT_TYPE_HARD:
            self.peer_bandwidth = size
        elif limit_type == LIMIT_TYPE_SOFT:
            self.peer_bandwidth = size if self.peer_bandwidth is None else min(self.peer_bandwidth, size)
        elif limit_type == LIMIT_TYPE_DYNAMIC:
            if self._peer_limit_type != LIMIT_TYPE_HARD:
                return  # dynamic is hard after a hard limit, ignored otherwise (section 5.4.5)
            self.peer_bandwidth = size
            limit_type = LIMIT_TYPE_HARD
        else:
            raise ValueError(f"Set Peer Bandwidth limit type {limit_type} is not 0, 1 or 2")
        self._peer_limit_type = limit_type
        if self.peer_bandwidth != self._last_window_sent:
            self._send_window_ack_size(self.peer_bandwidth)

    def _handle_user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise ValueError(f"User Control message of {len(payload)} bytes has no event type")
        (event_type,) = struct.unpack_from(">H", payload)
        if event_type == USER_CONTROL_PING_REQUEST:
            if len(payload) != 6:
                raise ValueError(f"PingRequest event data is {len(payload) - 2} bytes, expected 4")
            self._send(user_control_message(USER_CONTROL_PING_RESPONSE, payload[2:6]))

    def _handle_command(self, payload: bytes) -> None:
        values = amf0.decode(payload)
        if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], float):
            raise ValueError("AMF0 command is not a name followed by a transaction id")
        name, transaction = values[0], values[1]
        info: dict[str, Any] = next((v for v in values[2:] if isinstance(v, dict)), {})
        if name in ("_result", "_error"):
            if not transaction.is_integer():
                raise ValueError(f"{name} transaction id {transaction} is not an integer")
            purpose = self._transactions.pop(int(transaction), None)
            self._handle_response(name == "_result", purpose, values, info)
        elif name == "onStatus":
            self._handle_status(
                _text(info.get("level")), _text(info.get("code")), _text(info.get("description"))
            )
        elif name == "close":
            self._events.append(StatusReceived("error", "NetConnection.Connect.Closed", "server sent close"))
        # onBWDone, onFCPublish, _checkbw and the like need no answer from a publisher.

    def _handle_response(
        self, ok: bool, purpose: str | None, values: list[Any], info: dict[str, Any]
    ) -> None:
        code = _text(info.get("code"))
        description = _text(info.get("description"))
        if purpose == "connect" and self.state is SessionState.CONNECTING:
            if not ok:
                self._refuse(code or "NetConnection.Connect.Rejected", description)
                return
            properties = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
            info_object = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
            self._events.append(Connected(properties, info_object))
            self._command("releaseStream", "releaseStream", None, self.stream_name)
            self._command("FCPublish", "FCPublish", None, self.stream_name)
            self._command("createStream", "createStream", None)
            self.state = SessionState.CREATING_STREAM
        elif purpose == "createStream" and self.state is SessionState.CREATING_STREAM:
            if not ok:
                self._refuse(code or "createStream._error", description)
                return
            stream_id = values[3] if len(values) > 3 else None
            if (
                not isinstance(stream_id, float)
                or not stream_id.is_integer()
                or not 0 < stream_id <= 0xFFFFFFFF
            ):
                raise ValueError(f"createStream _result has no usable stream id: {stream_id!r}")
            self.stream_id = int(stream_id)
            self._command(
                "publish",
                "publish",
                None,
                self.stream_name,
                "live",
                csid=CSID_STREAM,
                stream_id=self.stream_id,
            )
            self.state = SessionState.PUBLISH_REQUESTED
        elif purpose == "publish" and not ok and self.state is SessionState.PUBLISH_REQUESTED:
            self._refuse(code or "publish._error", description)
        # Answers to releaseStream, FCPublish, FCUnpublish and deleteStream (some servers send
        # _error for them) and to unknown transactions change nothing.

    def _handle_status(self, level: str, code: str, description: str) -> None:
        if self.state is SessionState.PUBLISH_REQUESTED:
            if code == STATUS_PUBLISH_START:
                assert self.stream_id is not None
                self.state = SessionState.PUBLISHING
                self._events.append(PublishStarted(self.stream_id, description))
                return
            if code in REFUSAL_CODES or level == "error":
                self._refuse(code, description)
                return
        self._events.append(StatusReceived(level, code, description))


def _u32(payload: bytes, what: str) -> int:
    if len(payload) != 4:
        raise ValueError(f"{what} payload is {len(payload)} bytes, expected 4")
    return int(struct.unpack(">I", payload)[0])
