"""RTCP packets: SR, RR, SDES, BYE (RFC 3550 section 6), generic NACK (RFC 4585 section 6.2.1),
PLI (RFC 4585 section 6.3.1) and FIR (RFC 5104 section 4.3.1), and compound packets.

``RtcpCompound.parse`` is strict about framing (version, lengths, padding, per-type sizes) and raises ``ValueError``
with a precise message; packet types or feedback formats it does not know are skipped and counted in ``skipped``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Union

RTCP_VERSION = 2

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206

# RTPFB feedback message types (FMT)
RTCP_RTPFB_NACK = 1
# PSFB feedback message types (FMT)
RTCP_PSFB_PLI = 1
RTCP_PSFB_FIR = 4

# SDES item types (RFC 3550 section 6.5)
SDES_END = 0
SDES_CNAME = 1

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
RTCP_COMPENSATION = 2.71828 - 1.5  # RFC 3550 A.7: e - 3/2

_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_SR_INFO = struct.Struct("!IQIII")
_FIR_ENTRY = struct.Struct("!IB3x")
_MAX_COUNT = 31


def ntp_from_seconds(seconds: float) -> int:
    """A 64-bit NTP timestamp for a Unix time in seconds."""
    ntp = seconds + NTP_EPOCH_OFFSET
    whole = int(ntp)
    return ((whole & 0xFFFFFFFF) << 32) | int((ntp - whole) * (1 << 32)) & 0xFFFFFFFF


def ntp_to_seconds(ntp_timestamp: int) -> float:
    """The Unix time in seconds of a 64-bit NTP timestamp."""
    return (ntp_timestamp >> 32) - NTP_EPOCH_OFFSET + (ntp_timestamp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle(ntp_timestamp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as carried in LSR (RFC 3550 section 6.4.1)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError(f"RTCP body of {len(body)} bytes is not a multiple of 4")
    if not 0 <= count <= _MAX_COUNT:
        raise ValueError(f"RTCP count {count} is outside 0..31")
    return _HEADER.pack((RTCP_VERSION << 6) | count, packet_type, len(body) // 4) + body


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


@dataclass(frozen=True)
class ReportBlock:
    """A reception report block (RFC 3550 section 6.4.1); ``packets_lost`` is signed (24 bits)."""

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> ReportBlock:
        ssrc, fraction_lost, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        packets_lost = int.from_bytes(lost, "big", signed=True)
        return cls(ssrc, fraction_lost, packets_lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        if not -(1 << 23) <= self.packets_lost < (1 << 23):
            raise ValueError(f"RTCP cumulative lost {self.packets_lost} does not fit 24 signed bits")
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError(f"RTCP fraction lost {self.fraction_lost} is outside 0..255")
        lost = self.packets_lost.to_bytes(3, "big", signed=True)
        return _REPORT_BLOCK.pack(
            self.ssrc, self.fraction_lost, lost, self.highest_sequence, self.jitter, self.lsr, self.dlsr
        )


def _parse_blocks(body: bytes, pos: int, count: int) -> list[ReportBlock]:
    return [ReportBlock.parse(body, pos + 24 * i) for i in range(count)]


@dataclass
class RtcpSenderReport:
    """SR: sender info plus reception report blocks; profile-specific extensions are ignored."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpSenderReport:
        need = 24 + 24 * count
        if len(body) < need:
            raise ValueError(f"RTCP SR with {count} report blocks needs {need} bytes, got {len(body)}")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        return cls(ssrc, ntp, rtp_ts, packets, octets, _parse_blocks(body, 24, count))

    def __bytes__(self) -> bytes:
        body = _SR_INFO.pack(self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count)
        body += b"".join(bytes(r) for r in self.reports)
        return _header(RTCP_SR, len(self.reports), body)


@dataclass
class RtcpReceiverReport:
    """RR: the reporter's SSRC and its reception report blocks."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpReceiverReport:
        need = 4 + 24 * count
        if len(body) < need:
            raise ValueError(f"RTCP RR with {count} report blocks needs {need} bytes, got {len(body)}")
        (ssrc,) = struct.unpack_from("!I", body)
        return cls(ssrc, _parse_blocks(body, 4, count))

    def __bytes__(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _header(RTCP_RR, len(self.reports), body)


@dataclass
class SdesChunk:
    """One SDES chunk: an SSRC and its (item type, value) pairs."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> bytes | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value
        return None


@dataclass
class RtcpSourceDescription:
    """SDES (RFC 3550 section 6.5)."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpSourceDescription:
        chunks = []
        pos = 0
        for index in range(count):
            if len(body) < pos + 4:
                raise ValueError(f"RTCP SDES chunk {index} is truncated before its SSRC")
            (ssrc,) = struct.unpack_from("!I", body, pos)
            pos += 4
            items = []
            while True:
                if pos >= len(body):
                    raise ValueError(f"RTCP SDES chunk {index} has no end item")
                item_type = body[pos]
                if item_type == SDES_END:
                    pos += 1
                    pos += -pos % 4  # the null item is followed by padding to a 32-bit boundary
                    break
                if pos + 2 > len(body):
                    raise ValueError(f"RTCP SDES chunk {index} item is truncated before its length")
                length = body[pos + 1]
                if pos + 2 + length > len(body):
                    raise ValueError(f"RTCP SDES chunk {index} item of length {length} exceeds the packet")
                items.append((item_type, bytes(body[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            if pos > len(body):
                raise ValueError(f"RTCP SDES chunk {index} padding exceeds the packet")
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)

    def __bytes__(self) -> bytes:
        body = b""
        for chunk in self.chunks:
            data = struct.pack("!I", chunk.ssrc)
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError(f"RTCP SDES item type {item_type} with {len(value)} bytes cannot be encoded")
                data += bytes([item_type, len(value)]) + value
            data += b"\x00"
            body += _pad4(data)
        return _header(RTCP_SDES, len(self.chunks), body)


@dataclass
class RtcpBye:
    """BYE (RFC 3550 section 6.6): sources leaving, with an optional reason."""

    sources: list[int] = field(default_factory=list)
    reason: bytes | None = None

    @classmethod
    def parse_body(cls, count: int, body: bytes) -> RtcpBye:
        if len(body) < 4 * count:
            raise ValueError(f"RTCP BYE with {count} sources needs {4 * count} bytes, got {len(body)}")
        sources = list(struct.unpack_from(f"!{count}I", body))
        reason = None
        pos = 4 * count
        if pos < len(body):
            length = body[pos]
            if pos + 1 + length > len(body):
                raise ValueError(f"RTCP BYE reason of length {length} exceeds the packet")
            reason = bytes(body[pos + 1 : pos + 1 + length])
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError(f"RTCP BYE reason of {len(self.reason)} bytes is longer than 255")
            body += _pad4(bytes([len(self.reason)]) + self.reason)
        return _header(RTCP_BYE, len(self.sources), body)


@dataclass
class RtcpNack:
    """Generic NACK (RTPFB FMT 1): the lost sequence numbers, encoded as PID + BLP pairs."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def parse_fci(cls, sender_ssrc: int, media_ssrc: int, fci: bytes) -> RtcpNack:
        if not fci or len(fci) % 4:
            raise ValueError(f"RTCP NACK FCI length {len(fci)} is not a positive multiple of 4")
        lost = []
        for pos in range(0, len(fci), 4):
            pid, blp = struct.unpack_from("!HH", fci, pos)
            lost.append(pid)
            for bit in range(16):
                if blp & (1 << bit):
                    lost.append((pid + bit + 1) & 0xFFFF)
        return cls(sender_ssrc, media_ssrc, lost)

    def __bytes__(self) -> bytes:
        if not self.lost:
            raise ValueError("RTCP NACK needs at least one lost sequence number")
        fci = b""
        remaining = list(dict.fromkeys(self.lost))
        while remaining:
            pid = remaining.pop(0)
            blp = 0
            for seq in list(remaining):
                distance = (seq - pid) & 0xFFFF
                if 1 <= distance <= 16:
                    blp |= 1 << (distance - 1)
                    remaining.remove(seq)
            fci += struct.pack("!HH", pid, blp)
        return _header(RTCP_RTPFB, RTCP_RTPFB_NACK, struct.pack("!II", self.sender_ssrc, self.media_ssrc) + fci)


@dataclass
class RtcpPli:
    """Picture Loss Indication (PSFB FMT 1), no FCI."""

    sender_ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        return _header(RTCP_PSFB, RTCP_PSFB_PLI, struct.pack("!II", self.sender_ssrc, self.media_ssrc))


@dataclass
class RtcpFir:
    """Full Intra Request (PSFB FMT 4, RFC 5104): (SSRC, command sequence number) entries; media SSRC is 0."""

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse_fci(cls, sender_ssrc: int, fci: bytes) -> RtcpFir:
        if not fci or len(fci) % 8:
            raise ValueError(f"RTCP FIR FCI length {len(fci)} is not a positive multiple of 8")
        entries = [_FIR_ENTRY.unpack_from(fci, pos) for pos in range(0, len(fci), 8)]
        return cls(sender_ssrc, [(ssrc, seq) for ssrc, seq in entries])

    def __bytes__(self) -> bytes:
        if not self.entries:
            raise ValueError("RTCP FIR needs at least one entry")
        fci = b"".join(_FIR_ENTRY.pack(ssrc, seq & 0xFF) for ssrc, seq in self.entries)
        return _header(RTCP_PSFB, RTCP_PSFB_FIR, struct.pack("!II", self.sender_ssrc, 0) + fci)


RtcpPacket = Union[RtcpSenderReport, RtcpReceiverReport, RtcpSourceDescription, RtcpBye, RtcpNack, RtcpPli, RtcpFir]


def _parse_feedback(packet_type: int, fmt: int, body: bytes) -> RtcpPacket | None:
    name = "RTPFB" if packet_type == RTCP_RTPFB else "PSFB"
    if len(body) < 8:
        raise ValueError(f"RTCP {name} needs 8 bytes of SSRCs, got {len(body)}")
    sender_ssrc, media_ssrc = struct.unpack_from("!II", body)
    fci = body[8:]
    if packet_type == RTCP_RTPFB and fmt == RTCP_RTPFB_NACK:
        return RtcpNack.parse_fci(sender_ssrc, media_ssrc, fci)
    if packet_type == RTCP_PSFB and fmt == RTCP_PSFB_PLI:
        if fci:
            raise ValueError(f"RTCP PLI must have no FCI, got {len(fci)} bytes")
        return RtcpPli(sender_ssrc, media_ssrc)
    if packet_type == RTCP_PSFB and fmt == RTCP_PSFB_FIR:
        return RtcpFir.parse_fci(sender_ssrc, fci)
    return None


@dataclass
class RtcpCompound:
    """A compound RTCP packet: the packets understood, and how many were skipped as unknown."""

    packets: list[RtcpPacket] = field(default_factory=list)
    skipped: int = 0

    @classmethod
    def parse(cls, data: bytes) -> RtcpCompound:
        if not data:
            raise ValueError("RTCP packet is empty")
        result = cls()
        pos = 0
        while pos < len(data):
            if len(data) - pos < 4:
                raise ValueError(f"RTCP header at offset {pos} is truncated: {len(data) - pos} bytes")
            first, packet_type, words = _HEADER.unpack_from(data, pos)
            version = first >> 6
            if version != RTCP_VERSION:
                raise ValueError(f"RTCP version at offset {pos} is {version}, expected 2")
            length = 4 * (words + 1)
            if pos + length > len(data):
                raise ValueError(f"RTCP length at offset {pos} says {length} bytes but {len(data) - pos} remain")
            body = data[pos + 4 : pos + length]
            if first & 0x20:
                if not body:
                    raise ValueError(f"RTCP packet at offset {pos} has the padding bit set but no body")
                padding = body[-1]
                if padding == 0 or padding > len(body):
                    raise ValueError(f"RTCP padding count {padding} at offset {pos} is invalid")
                body = body[:-padding]
            count = first & 0x1F
            packet = _parse_one(packet_type, count, bytes(body))
            if packet is None:
                result.skipped += 1
            else:
                result.packets.append(packet)
            pos += length
        return result

    def __bytes__(self) -> bytes:
        return b"".join(bytes(p) for p in self.packets)


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket | None:
    if packet_type == RTCP_SR:
        return RtcpSenderReport.parse_body(count, body)
    if packet_type == RTCP_RR:
        return RtcpReceiverReport.parse_body(count, body)
    if packet_type == RTCP_SDES:
        return RtcpSourceDescription.parse_body(count, body)
    if packet_type == RTCP_BYE:
        return RtcpBye.parse_body(count, body)
    if packet_type in (RTCP_RTPFB, RTCP_PSFB):
        return _parse_feedback(packet_type, count, body)
    return None


def rtcp_report_interval(
    members: int,
    senders: int,
    rtcp_bandwidth: float,
    we_sent: bool,
    average_rtcp_size: float,
    initial: bool,
    random_value: float,
    minimum: float = 5.0,
) -> float:
    """RFC 3550 A.7 ``rtcp_interval``; ``random_value`` in [0, 1) replaces the random draw."""
    minimum = minimum / 2 if initial else minimum
    n = members
    if 0 < senders <= members * 0.25:
        if we_sent:
            rtcp_bandwidth *= 0.25
            n = senders
        else:
            rtcp_bandwidth *= 0.75
            n = members - senders
    interval = average_rtcp_size * n / rtcp_bandwidth if rtcp_bandwidth > 0 else minimum
    interval = max(interval, minimum)
    return interval * (random_value + 0.5) / RTCP_COMPENSATION
