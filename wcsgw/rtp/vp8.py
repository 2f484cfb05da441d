"""VP8 over RTP (RFC 7741): payload descriptor, frame assembly and a packetizer.

A frame starts with a packet whose S bit is set and partition index is 0, and ends at the marker bit or when the
RTP timestamp changes. A frame with a missing packet is dropped; with ``drop_until_keyframe`` (the default) the
frames after it are dropped too until the next keyframe, and ``keyframe_needed`` says so. A gap between two frames
whose 15- or 7-bit PictureIDs are consecutive lost nothing that matters and breaks nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .packet import RtpPacket

VP8_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


@dataclass(frozen=True)
class Vp8PayloadDescriptor:
    """The RFC 7741 section 4.2 payload descriptor. ``picture_id_long`` selects the 15-bit PictureID (M bit)."""

    start_of_partition: bool
    partition_index: int = 0
    non_reference: bool = False
    picture_id: int | None = None
    picture_id_long: bool = False
    tl0_pic_idx: int | None = None
    tid: int | None = None
    layer_sync: bool = False
    key_idx: int | None = None

    @classmethod
    def parse(cls, data: bytes) -> tuple[Vp8PayloadDescriptor, int]:
        """Parse a descriptor; return it and the offset of the VP8 payload that follows."""
        if not data:
            raise ValueError("VP8 payload descriptor is empty")
        first = data[0]
        extended = bool(first & 0x80)
        non_reference = bool(first & 0x20)
        start = bool(first & 0x10)
        partition_index = first & 0x0F
        if partition_index > 7:
            raise ValueError(f"VP8 partition index {partition_index} is above 7")
        pos = 1
        picture_id = tl0_pic_idx = tid = key_idx = None
        picture_id_long = layer_sync = False
        if extended:
            if len(data) < 2:
                raise ValueError("VP8 payload descriptor is truncated: X bit set but no extension byte")
            ext = data[1]
            pos = 2
            has_i, has_l, has_t, has_k = bool(ext & 0x80), bool(ext & 0x40), bool(ext & 0x20), bool(ext & 0x10)
            if has_i:
                if len(data) < pos + 1:
                    raise ValueError("VP8 payload descriptor is truncated before the PictureID")
                if data[pos] & 0x80:
                    if len(data) < pos + 2:
                        raise ValueError("VP8 payload descriptor is truncated inside the 15-bit PictureID")
                    picture_id = struct.unpack_from("!H", data, pos)[0] & 0x7FFF
                    picture_id_long = True
                    pos += 2
                else:
                    picture_id = data[pos] & 0x7F
                    pos += 1
            if has_l:  # RFC 7741 wants I with L; a lone L is tolerated
                if len(data) < pos + 1:
                    raise ValueError("VP8 payload descriptor is truncated before TL0PICIDX")
                tl0_pic_idx = data[pos]
                pos += 1
            if has_t or has_k:
                if len(data) < pos + 1:
                    raise ValueError("VP8 payload descriptor is truncated before TID/Y/KEYIDX")
                byte = data[pos]
                if has_t:
                    tid = byte >> 6
                    layer_sync = bool(byte & 0x20)
                if has_k:
                    key_idx = byte & 0x1F
                pos += 1
        descriptor = cls(
            start_of_partition=start,
            partition_index=partition_index,
            non_reference=non_reference,
            picture_id=picture_id,
            picture_id_long=picture_id_long,
            tl0_pic_idx=tl0_pic_idx,
            tid=tid,
            layer_sync=layer_sync,
            key_idx=key_idx,
        )
        return descriptor, pos

    def __bytes__(self) -> bytes:
        if not 0 <= self.partition_index <= 7:
            raise ValueError(f"VP8 partition index {self.partition_index} is outside 0..7")
        first = self.partition_index
        if self.non_reference:
            first |= 0x20
        if self.start_of_partition:
            first |= 0x10
        ext = 0
        tail = b""
        if self.picture_id is not None:
            ext |= 0x80
            if self.picture_id_long:
                if not 0 <= self.picture_id <= 0x7FFF:
                    raise ValueError(f"VP8 PictureID {self.picture_id} does not fit 15 bits")
                tail += struct.pack("!H", 0x8000 | self.picture_id)
            else:
                if not 0 <= self.picture_id <= 0x7F:
                    raise ValueError(f"VP8 PictureID {self.picture_id} does not fit 7 bits")
                tail += bytes([self.picture_id])
        if self.tl0_pic_idx is not None:
            ext |= 0x40
            tail += bytes([self.tl0_pic_idx & 0xFF])
        if self.tid is not None or self.key_idx is not None:
            byte = 0
            if self.tid is not None:
                ext |= 0x20
                byte |= (self.tid & 0x03) << 6 | (0x20 if self.layer_sync else 0)
            if self.key_idx is not None:
                ext |= 0x10
                byte |= self.key_idx & 0x1F
            tail += bytes([byte])
        if ext:
            return bytes([first | 0x80, ext]) + tail
        return bytes([first])


@dataclass
class Vp8Frame:
    """One VP8 frame; ``width``/``height`` come from a keyframe's header (None otherwise)."""

    timestamp: int
    data: bytes
    keyframe: bool
    picture_id: int | None = None
    width: int | None = None
    height: int | None = None
    arrival: float = field(default=0.0, compare=False)  # when its last packet arrived (set by the session)


def parse_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 section 9.1), or None if it is not a keyframe."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != VP8_KEYFRAME_START_CODE:
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


class Vp8Depacketizer:
    """RTP packets (in sequence order) in, whole ``Vp8Frame`` objects out."""

    def __init__(self, drop_until_keyframe: bool = True) -> None:
        self.drop_until_keyframe = drop_until_keyframe
        self.emitted = 0
        self.dropped_broken = 0
        self.dropped_waiting_keyframe = 0
        self.errors = 0
        self.last_error: str | None = None
        self._need_keyframe = drop_until_keyframe
        self._gap = False
        self._last_picture_id: int | None = None
        self._last_complete = False
        self._timestamp: int | None = None
        self._parts: list[bytes] = []
        self._broken = False
        self._keyframe = False
        self._picture_id: int | None = None

    @property
    def keyframe_needed(self) -> bool:
        return self._need_keyframe

    def reset(self) -> None:
        if self._parts:
            self.dropped_broken += 1
        self._clear()
        self._gap = False
        self._last_picture_id = None
        self._need_keyframe = self.drop_until_keyframe

    def lost(self, count: int) -> None:
        if count <= 0:
            return
        if self._timestamp is not None:
            self._broken = True
        self._gap = True

    def push(self, packet: RtpPacket) -> list[Vp8Frame]:
        """Add the next packet; return the frames it completes. Malformed descriptors break the frame in progress
        (counted in ``errors``, described in ``last_error``)."""
        return self.push_payload(packet.payload, packet.timestamp, packet.marker)

    def push_payload(self, payload: bytes, timestamp: int, marker: bool) -> list[Vp8Frame]:
        """``push`` of a packet given as its payload, timestamp and marker (the session's in-order fast path has
        no ``RtpPacket``)."""
        out: list[Vp8Frame] = []
        if self._timestamp is not None and timestamp != self._timestamp:
            self._finish(out)
        try:
            descriptor, offset = Vp8PayloadDescriptor.parse(payload)
            if offset >= len(payload):
                raise ValueError("VP8 payload is empty after the descriptor")
        except ValueError as exc:
            self.errors += 1
            self.last_error = str(exc)
            if self._timestamp is None:
                self._timestamp = timestamp
            self._broken = True
            self._gap = False
            if marker:
                self._finish(out)
            return out
        payload = payload[offset:]
        begins = descriptor.start_of_partition and descriptor.partition_index == 0
        if self._timestamp is None:
            self._timestamp = timestamp
            self._picture_id = descriptor.picture_id
            if not begins:
                self._broken = True
            elif self._gap and not self._consecutive(descriptor.picture_id):
                self._chain_broken()
        elif self._gap or begins:
            # a gap inside a frame, or a second frame start with the same timestamp
            self._broken = True
        self._gap = False
        if begins and not self._parts:
            self._keyframe = not payload[0] & 0x01
        self._parts.append(payload)
        if marker:
            self._finish(out)
        return out

    def _consecutive(self, picture_id: int | None) -> bool:
        if picture_id is None or self._last_picture_id is None or not self._last_complete:
            return False
        modulus = 0x8000 if picture_id > 0x7F or self._last_picture_id > 0x7F else 0x80
        return picture_id == (self._last_picture_id + 1) % modulus

    def _chain_broken(self) -> None:
        if self.drop_until_keyframe:
            self._need_keyframe = True

    def _clear(self) -> None:
        self._timestamp = None
        self._parts = []
        self._broken = False
        self._keyframe = False
        self._picture_id = None

    def _finish(self, out: list[Vp8Frame]) -> None:
        timestamp, parts, broken, keyframe, picture_id = (
            self._timestamp,
            self._parts,
            self._broken,
            self._keyframe,
            self._picture_id,
        )
        self._clear()
        if timestamp is None:
            return
        if picture_id is not None:
            self._last_picture_id = picture_id
        self._last_complete = not broken
        if broken or not parts:
            self.dropped_broken += 1
            self._chain_broken()
            return
        if not keyframe and self._need_keyframe:
            self.dropped_waiting_keyframe += 1
            return
        data = b"".join(parts)
        size = parse_keyframe_size(data) if keyframe else None
        if keyframe:
            self._need_keyframe = False
        self.emitted += 1
        out.append(
            Vp8Frame(
                timestamp=timestamp,
                data=data,
                keyframe=keyframe,
                picture_id=picture_id,
                width=size[0] if size else None,
                height=size[1] if size else None,
            )
        )


class Vp8Packetizer:
    """VP8 frames to RTP packets with a 15-bit PictureID, splitting above ``mtu`` payload bytes."""

    def __init__(
        self, payload_type: int = 97, ssrc: int = 0, sequence_number: int = 0, mtu: int = 1200, picture_id: int = 0
    ) -> None:
        if mtu < 8:
            raise ValueError(f"payload MTU {mtu} is too small")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.sequence_number = sequence_number
        self.mtu = mtu
        self.picture_id = picture_id & 0x7FFF

    def packetize(self, frame: bytes, timestamp: int) -> list[RtpPacket]:
        if not frame:
            raise ValueError("cannot packetize an empty VP8 frame")
        first = Vp8PayloadDescriptor(start_of_partition=True, picture_id=self.picture_id, picture_id_long=True)
        rest = Vp8PayloadDescriptor(start_of_partition=False, picture_id=self.picture_id, picture_id_long=True)
        chunk = self.mtu - len(bytes(first))
        pieces = [frame[i : i + chunk] for i in range(0, len(frame), chunk)]
        packets = []
        for index, piece in enumerate(pieces):
            descriptor = first if index == 0 else rest
            packets.append(
                RtpPacket(
                    payload_type=self.payload_type,
                    marker=index == len(pieces) - 1,
                    sequence_number=self.sequence_number,
                    timestamp=timestamp % (1 << 32),
                    ssrc=self.ssrc,
                    payload=bytes(descriptor) + piece,
                )
            )
            self.sequence_number = (self.sequence_number + 1) % (1 << 16)
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        return packets
