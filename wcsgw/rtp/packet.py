"""RTP packets (RFC 3550 section 5.1) and the RTP/RTCP demultiplexing test of RFC 5761 section 4.

Parsing is strict: anything that is not a well-formed RTP version 2 packet raises ``ValueError`` with a message
naming the field at fault. Building validates every field the same way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
RTP_MAX_CSRC = 15
RTP_SEQ_MOD = 1 << 16
RTP_TIMESTAMP_MOD = 1 << 32
RTP_TIMESTAMP_HALF = RTP_TIMESTAMP_MOD // 2  # a signed distance between timestamps is below this

# RFC 5761 section 4: with rtcp-mux, a second byte (marker bit included) in 192..223 is RTCP (PT 64..95 masked).
RTCP_MUX_FIRST_SECOND_BYTE = 192
RTCP_MUX_LAST_SECOND_BYTE = 223

_HEADER = struct.Struct("!BBHII")
_PLAIN_FIRST_BYTE = RTP_VERSION << 6
_EXTENSION_HEADER = struct.Struct("!HH")


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram received on a multiplexed RTP/RTCP port is RTCP (RFC 5761 section 4)."""
    return len(data) >= 2 and RTCP_MUX_FIRST_SECOND_BYTE <= data[1] <= RTCP_MUX_LAST_SECOND_BYTE


def sequence_add(sequence_number: int, delta: int) -> int:
    """A 16-bit RTP sequence number moved by ``delta``, wrapping around."""
    return (sequence_number + delta) % RTP_SEQ_MOD


def sequence_delta(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 16-bit sequence numbers, in -32768..32767."""
    d = (a - b) % RTP_SEQ_MOD
    return d - RTP_SEQ_MOD if d >= RTP_SEQ_MOD // 2 else d


def timestamp_delta(a: int, b: int) -> int:
    """Signed distance ``a - b`` between two 32-bit RTP timestamps."""
    d = (a - b) % RTP_TIMESTAMP_MOD
    return d - RTP_TIMESTAMP_MOD if d >= RTP_TIMESTAMP_MOD // 2 else d


@dataclass(frozen=True)
class HeaderExtension:
    """An RTP header extension (RFC 3550 section 5.3.1), kept raw: ``profile`` and its ``data`` (multiple of 4)."""

    profile: int
    data: bytes


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet. ``padding_size`` counts the padding octets, the last of which holds that count."""

    payload_type: int = 0
    marker: bool = False
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrc: list[int] = field(default_factory=list)
    extension: HeaderExtension | None = None
    payload: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raise ``ValueError`` if it is not a valid RTP version 2 packet."""
        if len(data) < RTP_HEADER_LENGTH:
            raise ValueError(f"RTP packet is {len(data)} bytes, shorter than the 12-byte header")
        first, second, sequence_number, timestamp, ssrc = _HEADER.unpack_from(data)
        if first == _PLAIN_FIRST_BYTE:  # the usual packet: version 2, no padding, extension or CSRC
            return cls(second & 0x7F, second > 0x7F, sequence_number, timestamp, ssrc, [], None, bytes(data[12:]), 0)
        version = first >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP version is {version}, expected 2")
        has_padding = bool(first & 0x20)
        has_extension = bool(first & 0x10)
        csrc_count = first & 0x0F
        pos = RTP_HEADER_LENGTH
        end = len(data)

        if end < pos + 4 * csrc_count:
            raise ValueError(f"RTP packet is truncated: CSRC count {csrc_count} needs {4 * csrc_count} bytes")
        csrc = list(struct.unpack_from(f"!{csrc_count}I", data, pos))
        pos += 4 * csrc_count

        extension = None
        if has_extension:
            if end < pos + 4:
                raise ValueError("RTP packet is truncated: header extension needs 4 bytes")
            profile, words = _EXTENSION_HEADER.unpack_from(data, pos)
            pos += 4
            if end < pos + 4 * words:
                raise ValueError(f"RTP packet is truncated: header extension length {words} words exceeds the packet")
            extension = HeaderExtension(profile=profile, data=bytes(data[pos : pos + 4 * words]))
            pos += 4 * words

        padding_size = 0
        if has_padding:
            if end <= pos:
                raise ValueError("RTP packet has the padding bit set but no padding")
            padding_size = data[end - 1]
            if padding_size == 0:
                raise ValueError("RTP padding count is 0")
            if padding_size > end - pos:
                raise ValueError(f"RTP padding count {padding_size} exceeds the {end - pos} bytes after the header")
            end -= padding_size

        return cls(
            payload_type=second & 0x7F,
            marker=bool(second & 0x80),
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc=csrc,
            extension=extension,
            payload=bytes(data[pos:end]),
            padding_size=padding_size,
        )

    def __bytes__(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"RTP payload type {self.payload_type} is outside 0..127")
        if not 0 <= self.sequence_number < RTP_SEQ_MOD:
            raise ValueError(f"RTP sequence number {self.sequence_number} is outside 0..65535")
        if not 0 <= self.timestamp < RTP_TIMESTAMP_MOD:
            raise ValueError(f"RTP timestamp {self.timestamp} is outside 0..2**32-1")
        if not 0 <= self.ssrc < RTP_TIMESTAMP_MOD:
            raise ValueError(f"RTP SSRC {self.ssrc} is outside 0..2**32-1")
        if len(self.csrc) > RTP_MAX_CSRC:
            raise ValueError(f"RTP packet has {len(self.csrc)} CSRCs, at most 15 fit")
        if not 0 <= self.padding_size <= 255:
            raise ValueError(f"RTP padding size {self.padding_size} is outside 0..255")
        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        second = self.payload_type | (0x80 if self.marker else 0)
        parts = [_HEADER.pack(first, second, self.sequence_number, self.timestamp, self.ssrc)]
        for csrc in self.csrc:
            if not 0 <= csrc < RTP_TIMESTAMP_MOD:
                raise ValueError(f"RTP CSRC {csrc} is outside 0..2**32-1")
            parts.append(struct.pack("!I", csrc))
        if self.extension is not None:
            ext = self.extension
            if len(ext.data) % 4:
                raise ValueError(f"RTP header extension data is {len(ext.data)} bytes, not a multiple of 4")
            if not 0 <= ext.profile <= 0xFFFF:
                raise ValueError(f"RTP header extension profile {ext.profile} is outside 0..65535")
            parts.append(_EXTENSION_HEADER.pack(ext.profile, len(ext.data) // 4))
            parts.append(ext.data)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1) + bytes([self.padding_size]))
        return b"".join(parts)


class TimestampUnwrapper:
    """Extends 32-bit RTP timestamps to a growing integer (nearest to the last one, so small steps back are fine)."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._extended = 0

    def reset(self) -> None:
        self._last = None

    def peek(self, timestamp: int) -> int:
        if self._last is None:
            return timestamp
        return self._extended + timestamp_delta(timestamp, self._last)

    def unwrap(self, timestamp: int) -> int:
        self._extended = self.peek(timestamp)
        self._last = timestamp
        return self._extended


def fill_ring(ring: list[int], first: int, count: int) -> None:
    """``ring[n % len(ring)] = n`` for the ``count`` numbers from ``first`` (at most twice around the ring: in
    slices, not one by one): the rings that remember recent sequence numbers."""
    if count <= 8:  # the usual run: a few packets, cheaper one by one than in slices
        size = len(ring)
        for number in range(first, first + count):
            ring[number % size] = number
        return
    size = len(ring)
    if count >= size:
        first, count = first + count - size, size
    start = first % size
    head = min(count, size - start)
    ring[start:start + head] = range(first, first + head)
    if head < count:
        ring[:count - head] = range(first + head, first + count)
