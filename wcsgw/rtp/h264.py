"""H.264 over RTP (RFC 6184): depacketizer to access units, and a packetizer (packetization-mode 0 and 1).

The depacketizer takes packets in sequence order (from the jitter buffer) plus loss notices (``lost``), and emits
whole access units only: an access unit ends at the marker bit or when the RTP timestamp changes; one with a
missing fragment, a gap inside it or a malformed payload is dropped. By default (``drop_until_keyframe``) any loss
breaks the decoding chain, so later units are dropped until the next IDR, and ``keyframe_needed`` says so.

SPS and PPS are learned from the stream and from ``sprop-parameter-sets``; the last ones seen are prepended to
keyframes that arrive without them.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .packet import RtpPacket

NAL_TYPE_SLICE = 1
NAL_TYPE_DPA = 2
NAL_TYPE_DPB = 3
NAL_TYPE_DPC = 4
NAL_TYPE_IDR = 5
NAL_TYPE_SEI = 6
NAL_TYPE_SPS = 7
NAL_TYPE_PPS = 8
NAL_TYPE_AUD = 9
NAL_TYPE_STAP_A = 24
NAL_TYPE_STAP_B = 25
NAL_TYPE_MTAP16 = 26
NAL_TYPE_MTAP24 = 27
NAL_TYPE_FU_A = 28
NAL_TYPE_FU_B = 29

_UNSUPPORTED_TYPES = {
    0: "reserved type 0",
    NAL_TYPE_STAP_B: "STAP-B",
    NAL_TYPE_MTAP16: "MTAP16",
    NAL_TYPE_MTAP24: "MTAP24",
    NAL_TYPE_FU_B: "FU-B",
    30: "reserved type 30",
    31: "reserved type 31",
}
_VCL_TYPES = frozenset({NAL_TYPE_SLICE, NAL_TYPE_DPA, NAL_TYPE_IDR})
START_CODE = b"\x00\x00\x00\x01"
_BYTES = [bytes((value,)) for value in range(256)]  # each byte value as a bytes of one (a NAL unit's header)


def nal_type(nal: bytes) -> int:
    return nal[0] & 0x1F


@dataclass
class AccessUnit:
    """One H.264 access unit in decoding order. ``timestamp`` is the RTP timestamp (90 kHz; the session extends it
    past 32 bits); ``sps``/``pps`` are the parameter sets in force; keyframes start with them."""

    timestamp: int
    nal_units: list[bytes]
    keyframe: bool
    sps: bytes | None
    pps: bytes | None
    arrival: float = field(default=0.0, compare=False)  # when its last packet arrived (set by the session)

    def to_annexb(self) -> bytes:
        """The access unit as an Annex B byte stream (4-byte start codes)."""
        return b"".join(START_CODE + nal for nal in self.nal_units)


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes; trailing zero bytes dropped)."""
    nals = []
    pos = data.find(b"\x00\x00\x01")
    while pos != -1:
        start = pos + 3
        pos = data.find(b"\x00\x00\x01", start)
        end = len(data) if pos == -1 else pos
        nal = data[start:end].rstrip(b"\x00")
        if nal:
            nals.append(bytes(nal))
    return nals


def parse_sprop_parameter_sets(value: str) -> list[bytes]:
    """Decode the fmtp ``sprop-parameter-sets`` value: comma-separated base64 NAL units."""
    nals = []
    for index, item in enumerate(value.split(",")):
        item = item.strip()
        if not item:
            raise ValueError(f"sprop-parameter-sets entry {index} is empty")
        try:
            nal = base64.b64decode(item + "=" * (-len(item) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"sprop-parameter-sets entry {index} is not valid base64: {item!r}") from exc
        if not nal:
            raise ValueError(f"sprop-parameter-sets entry {index} decodes to nothing")
        nals.append(nal)
    return nals


def unpack_stap_a(payload: bytes) -> list[bytes]:
    """The NAL units of a STAP-A payload (RFC 6184 section 5.7.1)."""
    nals = []
    pos = 1
    if len(payload) <= pos:
        raise ValueError("STAP-A has no aggregation units")
    while pos < len(payload):
        if pos + 2 > len(payload):
            raise ValueError(f"STAP-A size field at offset {pos} is truncated")
        (size,) = struct.unpack_from("!H", payload, pos)
        pos += 2
        if size == 0:
            raise ValueError(f"STAP-A aggregation unit at offset {pos - 2} has size 0")
        if pos + size > len(payload):
            raise ValueError(f"STAP-A aggregation unit of size {size} at offset {pos - 2} exceeds the payload")
        nals.append(bytes(payload[pos : pos + size]))
        pos += size
    return nals


def _starts_picture(payload: bytes) -> bool:
    """Whether an RTP payload can be the first one of an access unit: it starts a NAL unit, and that is either a
    non-VCL unit or the first slice of a picture (first_mb_in_slice = 0, i.e. the first bit after the header)."""
    kind = payload[0] & 0x1F
    if kind == NAL_TYPE_FU_A:
        if len(payload) < 3 or not payload[1] & 0x80:
            return False
        inner_type = payload[1] & 0x1F
        return inner_type not in _VCL_TYPES or bool(payload[2] & 0x80)
    if kind == NAL_TYPE_STAP_A:
        if len(payload) < 4:
            return False
        first = payload[3:]
    else:
        first = payload
    if nal_type(first) not in _VCL_TYPES:
        return True
    return len(first) > 1 and bool(first[1] & 0x80)


class H264Depacketizer:
    """RTP payloads in, whole ``AccessUnit`` objects out."""

    def __init__(self, sprop_parameter_sets: str | None = None, drop_until_keyframe: bool = True) -> None:
        self.drop_until_keyframe = drop_until_keyframe
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        if sprop_parameter_sets:
            for nal in parse_sprop_parameter_sets(sprop_parameter_sets):
                self._learn(nal)
        # counters
        self.emitted = 0
        self.dropped_broken = 0
        self.dropped_waiting_keyframe = 0
        self.dropped_no_parameter_sets = 0
        self.errors = 0
        self.last_error: str | None = None
        self._need_keyframe = drop_until_keyframe
        self._gap = False
        self._timestamp: int | None = None
        self._nals: list[bytes] = []
        # The NAL unit being put together from FU-A fragments: its header byte (a bytes of one), then each
        # fragment's payload after the two FU bytes, joined once its end fragment came (growing a bytearray
        # instead reallocated and copied it at most fragments: at 100 calls of the bench 0.75 % of the process
        # in malloc alone).  A caller that knows a packet is the next one in sequence, with no loss since the
        # last push, the same timestamp as the packet before it and no marker, and that it is an FU-A fragment
        # of this NAL unit that neither starts nor ends it, may append its fragment here instead of calling
        # ``push_payload``: that is all ``push_payload`` would do with it (the session's in-order fast path
        # does, for most video packets).
        self.fragment: list[bytes] | None = None
        self._broken = False

    @property
    def keyframe_needed(self) -> bool:
        """True from the start and after any loss until an IDR is emitted (with ``drop_until_keyframe``)."""
        return self._need_keyframe

    def reset(self) -> None:
        """Forget the unit in progress (the stream restarted); keep known SPS/PPS."""
        if self._nals or self.fragment is not None:
            self.dropped_broken += 1
        self._clear_unit()
        self._gap = False
        self._need_keyframe = self.drop_until_keyframe

    def lost(self, count: int) -> None:
        """``count`` packets are missing just before the next one pushed."""
        if count <= 0:
            return
        if self._timestamp is not None:
            self._broken = True
        self._gap = True
        if self.drop_until_keyframe:
            self._need_keyframe = True

    def push(self, packet: RtpPacket) -> list[AccessUnit]:
        """Add the next packet in sequence order; return the access units it completes. A malformed payload breaks
        the unit in progress; it is counted in ``errors`` and described in ``last_error``."""
        return self.push_payload(packet.payload, packet.timestamp, packet.marker)

    def push_payload(self, payload: bytes, timestamp: int, marker: bool) -> list[AccessUnit]:
        """``push`` of a packet given as its payload, timestamp and marker (the session's in-order fast path has
        no ``RtpPacket``)."""
        out: list[AccessUnit] = []
        if self._timestamp is not None and timestamp != self._timestamp:
            self._finish(out)
        if self._timestamp is None:
            self._timestamp = timestamp
            if self._gap:
                self._broken = not payload or not _starts_picture(payload)
        elif self._gap:
            self._broken = True
        self._gap = False
        fu_a = len(payload) > 2 and payload[0] & 0x1F == NAL_TYPE_FU_A
        fu = self.fragment
        if fu_a and fu is not None and not payload[1] & 0xC0 and fu[0][0] & 0x1F == payload[1] & 0x1F:
            fu.append(payload[2:])  # the usual packet: the middle of a fragmented NAL unit
        else:
            try:
                if fu_a:  # what _depacketize would do with it
                    self._fragment(payload)
                else:
                    self._depacketize(payload)
            except ValueError as exc:
                self._broken = True
                self.errors += 1
                self.last_error = str(exc)
        if marker:
            self._finish(out)
        return out

    def flush(self) -> list[AccessUnit]:
        """End the unit in progress as if its marker had arrived (end of stream)."""
        out: list[AccessUnit] = []
        if self._timestamp is not None:
            self._finish(out)
        return out

    def _clear_unit(self) -> None:
        self._timestamp = None
        self._nals = []
        self.fragment = None
        self._broken = False

    def _depacketize(self, payload: bytes) -> None:
        if not payload:
            raise ValueError("H.264 RTP payload is empty")
        kind = payload[0] & 0x1F
        if kind == NAL_TYPE_FU_A:
            self._fragment(payload)
            return
        if self.fragment is not None:
            self.fragment = None
            raise ValueError("H.264 fragmented NAL unit ended without its end fragment")
        if kind == NAL_TYPE_STAP_A:
            self._nals.extend(unpack_stap_a(payload))
        elif kind in _UNSUPPORTED_TYPES:
            raise ValueError(f"H.264 NAL unit type {kind} ({_UNSUPPORTED_TYPES[kind]}) is not supported")
        else:
            self._nals.append(bytes(payload))

    def _fragment(self, payload: bytes) -> None:
        if len(payload) < 3:
            raise ValueError(f"FU-A payload of {len(payload)} bytes is shorter than 3")
        header = payload[1]
        if header & 0x80:  # start
            if self.fragment is not None:
                self.fragment = None
                raise ValueError("FU-A start fragment arrived before the previous NAL unit ended")
            fragment = self.fragment = [_BYTES[(payload[0] & 0xE0) | (header & 0x1F)]]
        else:
            fragment = self.fragment
            if fragment is None:
                raise ValueError("FU-A fragment without its start fragment")
            if fragment[0][0] & 0x1F != header & 0x1F:
                self.fragment = None
                raise ValueError("FU-A fragment NAL type differs from its start fragment")
        fragment.append(payload[2:])
        # RFC 6184 forbids start and end in one FU-A; we accept it as a whole NAL unit (lenient receiver)
        if header & 0x40:  # end
            self._nals.append(b"".join(fragment))
            self.fragment = None

    def _learn(self, nal: bytes) -> None:
        kind = nal_type(nal)
        if kind == NAL_TYPE_SPS:
            self.sps = nal
        elif kind == NAL_TYPE_PPS:
            self.pps = nal

    def _finish(self, out: list[AccessUnit]) -> None:
        nals, broken, timestamp = self._nals, self._broken, self._timestamp
        if self.fragment is not None:
            broken = True
        self._clear_unit()
        if timestamp is None or (not nals and not broken):
            return
        if broken or not nals:
            self.dropped_broken += 1
            if self.drop_until_keyframe:
                self._need_keyframe = True
            return
        # one pass over the units (this runs for every frame): the parameter sets are learnt, IDR looked for
        keyframe = has_sps = has_pps = False
        for nal in nals:
            kind = nal[0] & 0x1F  # (no unit is empty: _depacketize makes none)
            if kind == NAL_TYPE_IDR:
                keyframe = True
            elif kind == NAL_TYPE_SPS:
                self.sps = nal
                has_sps = True
            elif kind == NAL_TYPE_PPS:
                self.pps = nal
                has_pps = True
        if keyframe:
            if self.sps is None or self.pps is None:
                self.dropped_no_parameter_sets += 1
                if self.drop_until_keyframe:
                    self._need_keyframe = True
                return
            prefix = []
            if not has_sps:
                prefix.append(self.sps)
            if not has_pps:
                prefix.append(self.pps)
            nals = prefix + nals
            self._need_keyframe = False
        elif self._need_keyframe:
            self.dropped_waiting_keyframe += 1
            return
        self.emitted += 1
        out.append(AccessUnit(timestamp, nals, keyframe, self.sps, self.pps))


class H264Packetizer:
    """Access units (lists of NAL units) to RTP packets: single NAL units, STAP-A for small consecutive units and
    FU-A above ``mtu`` bytes of payload (mode 1); mode 0 sends single NAL units only."""

    def __init__(
        self,
        payload_type: int = 96,
        ssrc: int = 0,
        sequence_number: int = 0,
        mtu: int = 1200,
        packetization_mode: int = 1,
        aggregate: bool = True,
    ) -> None:
        if packetization_mode not in (0, 1):
            raise ValueError(f"packetization-mode {packetization_mode} is not supported (0 or 1)")
        if mtu < 3:
            raise ValueError(f"payload MTU {mtu} is too small")
        self.payload_type = payload_type
        self.ssrc = ssrc
        self.sequence_number = sequence_number
        self.mtu = mtu
        self.packetization_mode = packetization_mode
        self.aggregate = aggregate and packetization_mode == 1

    def payloads(self, nal_units: Sequence[bytes]) -> list[bytes]:
        """The RTP payloads carrying ``nal_units``, in order."""
        out: list[bytes] = []
        group: list[bytes] = []

        def close_group() -> None:
            if len(group) == 1:
                out.append(group[0])
            elif group:
                header = max(n[0] & 0x60 for n in group) | (0x80 if any(n[0] & 0x80 for n in group) else 0)
                out.append(bytes([header | NAL_TYPE_STAP_A]) + b"".join(struct.pack("!H", len(n)) + n for n in group))
            group.clear()

        for nal in nal_units:
            if not nal:
                raise ValueError("cannot packetize an empty NAL unit")
            if len(nal) > self.mtu:
                close_group()
                if self.packetization_mode == 0:
                    raise ValueError(f"NAL unit of {len(nal)} bytes exceeds the MTU {self.mtu} in mode 0")
                out.extend(self._fragments(nal))
                continue
            if self.aggregate:
                size = 1 + sum(2 + len(n) for n in group) + 2 + len(nal)
                if group and size > self.mtu:
                    close_group()
                group.append(nal)
            else:
                out.append(bytes(nal))
        close_group()
        return out

    def _fragments(self, nal: bytes) -> list[bytes]:
        indicator = (nal[0] & 0xE0) | NAL_TYPE_FU_A
        kind = nal[0] & 0x1F
        body = nal[1:]
        chunk = self.mtu - 2
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        out = []
        for index, piece in enumerate(pieces):
            header = kind
            if index == 0:
                header |= 0x80
            if index == len(pieces) - 1:
                header |= 0x40
            out.append(bytes([indicator, header]) + piece)
        return out

    def packetize(self, nal_units: Sequence[bytes], timestamp: int) -> list[RtpPacket]:
        """RTP packets for one access unit; the marker bit is set on the last one."""
        payloads = self.payloads(nal_units)
        packets = []
        for index, payload in enumerate(payloads):
            packets.append(
                RtpPacket(
                    payload_type=self.payload_type,
                    marker=index == len(payloads) - 1,
                    sequence_number=self.sequence_number,
                    timestamp=timestamp % (1 << 32),
                    ssrc=self.ssrc,
                    payload=payload,
                )
            )
            self.sequence_number = (self.sequence_number + 1) % (1 << 16)
        return packets
