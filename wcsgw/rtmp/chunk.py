"""RTMP chunk streams (RTMP specification 1.0, sections 5.3 and 5.4). Pure, sans-I/O.

:class:`ChunkEncoder` splits messages into chunks with header compression (fmt 0-3) and
extended timestamps; :class:`ChunkDecoder` reassembles messages from interleaved chunk streams,
applying Set Chunk Size and Abort Message as they arrive.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from typing import Final

# Message type ids (sections 5.4 and 7.1).
MSG_SET_CHUNK_SIZE: Final = 1
MSG_ABORT: Final = 2
MSG_ACKNOWLEDGEMENT: Final = 3
MSG_USER_CONTROL: Final = 4
MSG_WINDOW_ACKNOWLEDGEMENT_SIZE: Final = 5
MSG_SET_PEER_BANDWIDTH: Final = 6
MSG_AUDIO: Final = 8
MSG_VIDEO: Final = 9
MSG_AMF3_DATA: Final = 15
MSG_AMF3_SHARED_OBJECT: Final = 16
MSG_AMF3_COMMAND: Final = 17
MSG_AMF0_DATA: Final = 18
MSG_AMF0_SHARED_OBJECT: Final = 19
MSG_AMF0_COMMAND: Final = 20
MSG_AGGREGATE: Final = 22

# User Control Message event types (section 7.1.7).
USER_CONTROL_STREAM_BEGIN: Final = 0
USER_CONTROL_STREAM_EOF: Final = 1
USER_CONTROL_STREAM_DRY: Final = 2
USER_CONTROL_SET_BUFFER_LENGTH: Final = 3
USER_CONTROL_STREAM_IS_RECORDED: Final = 4
USER_CONTROL_PING_REQUEST: Final = 6
USER_CONTROL_PING_RESPONSE: Final = 7

# Set Peer Bandwidth limit types (section 5.4.5).
LIMIT_TYPE_HARD: Final = 0
LIMIT_TYPE_SOFT: Final = 1
LIMIT_TYPE_DYNAMIC: Final = 2

DEFAULT_CHUNK_SIZE: Final = 128
MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
MAX_MESSAGE_LENGTH: Final = 0xFFFFFF
EXTENDED_TIMESTAMP: Final = 0xFFFFFF
PROTOCOL_CONTROL_CSID: Final = 2
MIN_CSID: Final = 2
MAX_CSID: Final = 65599
_MASK32: Final = 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class RtmpMessage:
    """One RTMP message and the chunk stream it travels on."""

    chunk_stream_id: int
    type_id: int
    timestamp: int
    stream_id: int
    payload: bytes

    def __post_init__(self) -> None:
        if not MIN_CSID <= self.chunk_stream_id <= MAX_CSID:
            raise ValueError(f"chunk stream id {self.chunk_stream_id} is outside 2..65599")
        if not 0 <= self.type_id <= 0xFF:
            raise ValueError(f"message type id {self.type_id} is outside 0..255")
        if not 0 <= self.timestamp <= _MASK32:
            raise ValueError(f"message timestamp {self.timestamp} is outside 0..4294967295")
        if not 0 <= self.stream_id <= _MASK32:
            raise ValueError(f"message stream id {self.stream_id} is outside 0..4294967295")
        if len(self.payload) > MAX_MESSAGE_LENGTH:
            raise ValueError(f"message of {len(self.payload)} bytes exceeds 16777215 bytes")


def _control(type_id: int, payload: bytes) -> RtmpMessage:
    return RtmpMessage(PROTOCOL_CONTROL_CSID, type_id, 0, 0, payload)


def set_chunk_size_message(size: int) -> RtmpMessage:
    _check_chunk_size(size)
    return _control(MSG_SET_CHUNK_SIZE, struct.pack(">I", size))


def abort_message(chunk_stream_id: int) -> RtmpMessage:
    return _control(MSG_ABORT, struct.pack(">I", chunk_stream_id))


def acknowledgement_message(sequence_number: int) -> RtmpMessage:
    return _control(MSG_ACKNOWLEDGEMENT, struct.pack(">I", sequence_number & _MASK32))


def window_acknowledgement_size_message(size: int) -> RtmpMessage:
    return _control(MSG_WINDOW_ACKNOWLEDGEMENT_SIZE, struct.pack(">I", size))


def set_peer_bandwidth_message(size: int, limit_type: int) -> RtmpMessage:
    return _control(MSG_SET_PEER_BANDWIDTH, struct.pack(">IB", size, limit_type))


def user_control_message(event_type: int, event_data: bytes) -> RtmpMessage:
    return _control(MSG_USER_CONTROL, struct.pack(">H", event_type) + event_data)


def _check_chunk_size(size: int) -> None:
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {size} is outside 1..2147483647")


# Message headers: a 3-byte timestamp (or delta) and 3-byte length go in as ((ts << 8) | length >> 16, length &
# 0xFFFF), then the type id; type 0 adds the stream id, little-endian.
_TIMESTAMP_LENGTH_TYPE = struct.Struct(">IHB")
_STREAM_ID = struct.Struct("<I")
_TIMESTAMP = struct.Struct(">I")


@functools.lru_cache(maxsize=256)
def _basic_header(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([(fmt << 6) | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([(fmt << 6) | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def _basic_headers(csid: int) -> tuple[bytes, bytes, bytes, bytes]:
    """The basic headers of chunk stream ``csid`` for chunk formats 0 to 3."""
    return (_basic_header(0, csid), _basic_header(1, csid), _basic_header(2, csid), _basic_header(3, csid))


class ChunkEncoder:
    """Splits outgoing messages into chunks of at most ``chunk_size`` payload bytes."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self._chunk_size = chunk_size
        # per chunk stream: (stream id, length, type id, timestamp, delta) of the last message sent, the delta None
        # after a type 0 header (the next message never reuses it with type 3), and the stream's basic headers
        self._last: dict[int, tuple[int, int, int, int, int | None]] = {}
        self._basic: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> bytes:
        """Encode a Set Chunk Size message (at the current size) and use ``size`` from then on."""
        encoded = self.encode(set_chunk_size_message(size))
        self._chunk_size = size
        return encoded

    def encode(self, message: RtmpMessage) -> bytes:
        pieces, _size = self.pieces(message.chunk_stream_id, message.type_id, message.timestamp,
                                     message.stream_id, message.payload)
        return b"".join(pieces)

    def chunks(self, message: RtmpMessage) -> list[bytes]:
        """The chunks of one message, in order (they may be interleaved with other streams' chunks)."""
        pieces, _size = self.pieces(message.chunk_stream_id, message.type_id, message.timestamp,
                                     message.stream_id, message.payload)
        return [b"".join(pieces[n:n + 2]) for n in range(0, len(pieces), 2)]

    def encode_media(self, chunk_stream_id: int, type_id: int, timestamp: int, stream_id: int,
                     payload: bytes) -> bytes:
        """``encode`` for a message given by its fields (audio and video: no message object per frame)."""
        pieces, _size = self.media_chunks(chunk_stream_id, type_id, timestamp, stream_id, payload)
        return b"".join(pieces)

    def media_chunks(self, chunk_stream_id: int, type_id: int, timestamp: int, stream_id: int,
                     payload: bytes) -> tuple[list[bytes | memoryview], int]:
        """The chunks of a message given by its fields, as pieces to be written one after the other (chunk
        headers, and the payload itself or memoryviews of its parts: nothing of the payload is copied), and
        their size in all.  The fields are checked as ``RtmpMessage`` checks them."""
        if not MIN_CSID <= chunk_stream_id <= MAX_CSID or not 0 <= type_id <= 0xFF:
            raise ValueError(f"bad chunk stream id {chunk_stream_id} or message type {type_id}")
        if not 0 <= timestamp <= _MASK32 or not 0 <= stream_id <= _MASK32:
            raise ValueError(f"bad timestamp {timestamp} or stream id {stream_id}")
        if len(payload) > MAX_MESSAGE_LENGTH:
            raise ValueError(f"message of {len(payload)} bytes exceeds 16777215 bytes")
        return self.pieces(chunk_stream_id, type_id, timestamp, stream_id, payload)

    def pieces(self, csid: int, type_id: int, ts: int, stream_id: int, payload: bytes
                ) -> tuple[list[bytes | memoryview], int]:
        """The chunk headers of a message, each followed by its part of the payload, and their size in all; the
        fields are not checked (``media_chunks`` checks them).

        This runs for every audio and video frame: the usual headers (types 1 to 3) take the shortest way."""
        length = len(payload)
        basic = self._basic.get(csid)
        if basic is None:
            basic = self._basic[csid] = _basic_headers(csid)
        prev = self._last.get(csid)
        extended = b""
        if prev is None or prev[0] != stream_id or ts < prev[3]:
            delta = None
            if ts >= EXTENDED_TIMESTAMP:
                extended = _TIMESTAMP.pack(ts)
            first = basic[0] + _TIMESTAMP_LENGTH_TYPE.pack(min(ts, EXTENDED_TIMESTAMP) << 8 | length >> 16,
                                                          length & 0xFFFF, type_id) + _STREAM_ID.pack(stream_id)
        else:
            delta = ts - prev[3]
            if delta >= EXTENDED_TIMESTAMP:
                extended = _TIMESTAMP.pack(delta)
            if prev[1] != length or prev[2] != type_id:
                first = basic[1] + _TIMESTAMP_LENGTH_TYPE.pack(min(delta, EXTENDED_TIMESTAMP) << 8 | length >> 16,
                                                              length & 0xFFFF, type_id)
            elif prev[4] == delta and not extended:
                first = basic[3]
            else:
                first = basic[2] + _TIMESTAMP.pack(min(delta, EXTENDED_TIMESTAMP))[1:]
        self._last[csid] = (stream_id, length, type_id, ts, delta)
        if extended:
            first += extended
        size = self._chunk_size
        if length <= size:
            return [first, payload], len(first) + length
        view = memoryview(payload)
        out: list[bytes | memoryview] = [first, view[:size]]
        continuation = basic[3] + extended
        for start in range(size, length, size):
            out.append(continuation)
            out.append(view[start:start + size])
        return out, len(first) + length + len(continuation) * ((length - 1) // size)


@dataclasses.dataclass
class _ReceivedHeader:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    partial: bytearray | None = None  # payload of the message being reassembled


class ChunkDecoder:
    """Reassembles messages from chunks. ``feed`` raises ``ValueError`` on malformed input.

    After an error the chunk stream cannot be resynchronised: every later ``feed`` raises too.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self._streams: dict[int, _ReceivedHeader] = {}
        self._buffer = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole chunk."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[RtmpMessage]:
        if self._error is not None:
            raise ValueError(f"chunk stream already failed: {self._error}")
        self._buffer += data
        messages: list[RtmpMessage] = []
        offset = 0
        try:
            while True:
                end, message = self._parse_chunk(offset)
                if end == offset:
                    break
                offset = end
                if message is not None:
                    self._apply_control(message)
                    messages.append(message)
        except ValueError as exc:
            self._error = str(exc)
            raise
        finally:
            del self._buffer[:offset]
        return messages

    def _apply_control(self, message: RtmpMessage) -> None:
        if message.stream_id != 0 or message.type_id not in (MSG_SET_CHUNK_SIZE, MSG_ABORT):
            return
        if len(message.payload) != 4:
            name = "Set Chunk Size" if message.type_id == MSG_SET_CHUNK_SIZE else "Abort Message"
            raise ValueError(f"{name} payload is {len(message.payload)} bytes, expected 4")
        (value,) = struct.unpack(">I", message.payload)
        if message.type_id == MSG_SET_CHUNK_SIZE:
            if value & 0x80000000:
                raise ValueError(f"Set Chunk Size 0x{value:08x} has the reserved top bit set")
            if value == 0:
                raise ValueError("Set Chunk Size of 0 bytes")
            self.chunk_size = value
        else:
            state = self._streams.get(value)
            if state is not None:
                state.partial = None

    def _parse_chunk(self, start: int) -> tuple[int, RtmpMessage | None]:
        """Parse one chunk at ``start``: (offset after it, or ``start`` if incomplete; message)."""
        buf = self._buffer
        have = len(buf)
        if have < start + 1:
            return start, None
        fmt = buf[start] >> 6
        csid = buf[start] & 0x3F
        pos = start + 1
        if csid == 0:
            if have < start + 2:
                return start, None
            csid = 64 + buf[start + 1]
            pos = start + 2
        elif csid == 1:
            if have < start + 3:
                return start, None
            csid = 64 + buf[start + 1] + (buf[start + 2] << 8)
            pos = start + 3
        state = self._streams.get(csid)
        if state is None:
            if fmt != 0:
                raise ValueError(
                    f"chunk stream {csid} starts with a fmt {fmt} header; the first must be fmt 0"
                )
            state = _ReceivedHeader()
        in_progress = state.partial is not None
        if in_progress and fmt != 3:
            assert state.partial is not None
            raise ValueError(
                f"chunk stream {csid}: fmt {fmt} header in the middle of a message"
                f" ({len(state.partial)} of {state.length} bytes received)"
            )
        header_size = (11, 7, 3, 0)[fmt]
        if have < pos + header_size:
            return start, None
        field = 0
        length, type_id, stream_id = state.length, state.type_id, state.stream_id
        if fmt <= 2:
            field = int.from_bytes(buf[pos : pos + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(buf[pos + 3 : pos + 6], "big")
            type_id = buf[pos + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[pos + 7 : pos + 11], "little")
        pos += header_size
        extended = state.extended if fmt == 3 else field == EXTENDED_TIMESTAMP
        if extended:
            if have < pos + 4:
                return start, None
            ext_value = int.from_bytes(buf[pos : pos + 4], "big")
            if fmt != 3:
                field = ext_value
            pos += 4
        received = len(state.partial) if state.partial is not None else 0
        take = min(self.chunk_size, length - received)
        if have < pos + take:
            return start, None

        # The chunk is whole: commit the header state.
        self._streams[csid] = state
        state.extended = extended
        if not in_progress:
            if fmt == 0:
                state.timestamp = field
                state.delta = field
            elif fmt in (1, 2):
                state.delta = field
                state.timestamp = (state.timestamp + field) & _MASK32
            else:
                state.timestamp = (state.timestamp + state.delta) & _MASK32
            state.length, state.type_id, state.stream_id = length, type_id, stream_id
            state.partial = bytearray()
        assert state.partial is not None
        state.partial += buf[pos : pos + take]
        pos += take
        if len(state.partial) < state.length:
            return pos, None
        message = RtmpMessage(csid, state.type_id, state.timestamp, state.stream_id, bytes(state.partial))
        state.partial = None
        return pos, message
