"""Latency and setup time seen on the wire, the same way for both systems, from a tcpdump capture on ``lo``.

Only the *sampled* calls of a trial are captured, to keep tcpdump cheap: their far end is a SIPp of their own
(its video leaves from its own UDP port) and they publish to nginx's second RTMP port. The capture holds:

* the INVITEs to that far end: the request URI's user part is the call's RTMP stream name, the SDP's ``m=video``
  port the system's RTP port for it;
* the RTP video the far end sends to those ports;
* the RTMP connections to nginx's sample port, from the TCP handshake on (the chunk stream is decoded from its
  first byte; a connection whose start was not captured is skipped).

A video frame is followed by content: the first bytes of each H.264 slice NAL unit (the whole FU-A start fragment
with its NAL header rebuilt, or a single NAL unit packet) are looked up in the NAL units of the RTMP video messages
of the same call (frames whose slices all start alike are left out).
Both systems pass H.264 through unchanged, so the bytes are the same. **Latency** of a frame is from the capture
time of its last RTP packet (the frame cannot be written before it arrives) to the capture time of the TCP segment
that ends the RTMP message carrying it. **Setup** is from the call's start (the harness's ``call/startup`` request
for the gateway; the INVITE on the wire for the baseline, whose ffmpeg already listens) to the first RTMP video
message that is a keyframe. tcpdump's timestamps and the harness's ``time.time()`` are the same clock.
"""

from __future__ import annotations

import re
import shutil
import signal
import struct
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Child, Processes, wait_until

KEY_BYTES = 65
HANDSHAKE_BYTES = 1 + 1536 + 1536  # C0, C1, C2
NAL_SLICE, NAL_IDR = 1, 5
NAL_STAP_A, NAL_FU_A = 24, 28


class Capture:
    """tcpdump on ``lo`` writing the sampled calls' SIP, RTP video and RTMP to a pcap."""

    def __init__(self, procs: Processes, path: Path, *, rtmp_port: int, video_source_port: int, sip_port: int) -> None:
        tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
        self.path = path
        self.procs = procs
        bpf = f"(tcp port {rtmp_port}) or (udp src port {video_source_port}) or (udp dst port {sip_port})"
        argv = [tcpdump, "-i", "lo", "-n", "-s", "0", "-B", "32768", "-U", "-w", str(path), bpf]
        self.child: Child = procs.start("tcpdump", argv, cwd=path.parent, log=path.with_suffix(".log"),
                                        stop_signal=signal.SIGINT)
        wait_until(lambda: "listening on" in self.child.log_text(), 10, "tcpdump listening", alive=self.child)
        self.dropped: int | None = None

    def stop(self) -> None:
        self.procs.stop(self.child, grace=5.0)
        found = re.search(r"(\d+) packets? dropped by kernel", self.child.log_text())
        self.dropped = int(found.group(1)) if found else None


# ------------------------------------------------------------------------------------------------------- pcap

@dataclass
class _Segment:
    time: float
    seq: int
    syn: bool
    data: bytes


@dataclass
class _Packets:
    udp: list[tuple[float, int, int, bytes]] = field(default_factory=list)  # time, sport, dport, payload
    tcp: dict[int, list[_Segment]] = field(default_factory=lambda: defaultdict(list))  # client port -> segments


def read_pcap(path: Path, rtmp_port: int) -> _Packets:
    data = path.read_bytes()
    packets = _Packets()
    if len(data) < 24:
        return packets
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic == 0xA1B2C3D4:
        endian, scale = "<", 1e-6
    elif magic == 0xD4C3B2A1:
        endian, scale = ">", 1e-6
    elif magic == 0xA1B23C4D:
        endian, scale = "<", 1e-9
    else:
        raise ValueError(f"{path}: not a pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link = {1: 14, 113: 16, 276: 20}.get(linktype)
    if link is None:
        raise ValueError(f"{path}: link type {linktype} not supported")
    pos = 24
    record = endian + "IIII"
    while pos + 16 <= len(data):
        sec, frac, caplen, _length = struct.unpack_from(record, data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        when = sec + frac * scale
        ip = frame[link:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto = ip[9]
        body = ip[ihl:total]
        if proto == 17 and len(body) >= 8:
            sport, dport = struct.unpack_from("!HH", body, 0)
            packets.udp.append((when, sport, dport, body[8:]))
        elif proto == 6 and len(body) >= 20:
            sport, dport, seq = struct.unpack_from("!HHI", body, 0)
            offset = (body[12] >> 4) * 4
            flags = body[13]
            if dport == rtmp_port:
                packets.tcp[sport].append(_Segment(when, seq, bool(flags & 0x02), body[offset:]))
    return packets


def _stream(segments: list[_Segment]) -> tuple[bytes, list[int], list[float]] | None:
    """The client's byte stream from its SYN on, with the end offset and time of each segment; ``None`` without
    a SYN. Retransmitted bytes are skipped; the stream stops at a hole (a packet tcpdump lost)."""
    syn = next((s for s in segments if s.syn), None)
    if syn is None:
        return None
    isn = (syn.seq + 1) & 0xFFFFFFFF
    pieces: list[tuple[int, float, bytes]] = []
    for segment in segments:
        if segment.data:
            pieces.append((((segment.seq - isn) & 0xFFFFFFFF), segment.time, segment.data))
    pieces.sort(key=lambda piece: (piece[0], piece[1]))
    out = bytearray()
    ends: list[int] = []
    times: list[float] = []
    for offset, when, chunk in pieces:
        if offset > len(out):
            break  # a hole
        new = chunk[len(out) - offset:]
        if not new:
            continue
        out += new
        ends.append(len(out))
        times.append(when)
    return bytes(out), ends, times


# ------------------------------------------------------------------------------------------------------- RTMP

@dataclass
class _ChunkState:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    extended: bool = False
    payload: bytearray = field(default_factory=bytearray)


def rtmp_messages(stream: bytes, start: int = HANDSHAKE_BYTES) -> list[tuple[int, int, bytes, int]]:
    """(type id, timestamp, payload, offset just past the message's last byte) of the messages of a client's
    chunk stream; stops at the first incomplete chunk."""
    out: list[tuple[int, int, bytes, int]] = []
    chunk_size = 128
    states: dict[int, _ChunkState] = {}
    pos = start
    size = len(stream)
    while pos < size:
        first = stream[pos]
        fmt, csid, p = first >> 6, first & 0x3F, pos + 1
        if csid == 0:
            if p + 1 > size:
                break
            csid, p = 64 + stream[p], p + 1
        elif csid == 1:
            if p + 2 > size:
                break
            csid, p = 64 + stream[p] + 256 * stream[p + 1], p + 2
        state = states.setdefault(csid, _ChunkState())
        starting = not state.payload
        if fmt == 0:
            if p + 11 > size:
                break
            stamp = int.from_bytes(stream[p:p + 3], "big")
            state.length = int.from_bytes(stream[p + 3:p + 6], "big")
            state.type_id = stream[p + 6]
            p += 11
        elif fmt == 1:
            if p + 7 > size:
                break
            stamp = int.from_bytes(stream[p:p + 3], "big")
            state.length = int.from_bytes(stream[p + 3:p + 6], "big")
            state.type_id = stream[p + 6]
            p += 7
        elif fmt == 2:
            if p + 3 > size:
                break
            stamp = int.from_bytes(stream[p:p + 3], "big")
            p += 3
        else:
            stamp = -1
        if fmt != 3:
            state.extended = stamp == 0xFFFFFF
        if state.extended:
            if p + 4 > size:
                break
            if fmt != 3:
                stamp = int.from_bytes(stream[p:p + 4], "big")
            p += 4
        if starting:
            if fmt == 0:
                state.timestamp, state.delta = stamp, 0
            elif fmt in (1, 2):
                state.delta = stamp
                state.timestamp = (state.timestamp + stamp) & 0xFFFFFFFF
            else:
                state.timestamp = (state.timestamp + state.delta) & 0xFFFFFFFF
        take = min(chunk_size, state.length - len(state.payload))
        if p + take > size:
            break
        state.payload += stream[p:p + take]
        pos = p + take
        if len(state.payload) >= state.length:
            payload = bytes(state.payload)
            state.payload = bytearray()
            out.append((state.type_id, state.timestamp, payload, pos))
            if state.type_id == 1 and len(payload) >= 4:
                chunk_size = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
    return out


def publish_name(payload: bytes) -> str | None:
    """The stream name of an AMF0 ``publish`` command, else ``None``."""
    try:
        if payload[:1] == b"\x00":  # AMF3 command message: a format byte, then AMF0
            payload = payload[1:]
        if payload[0] != 0x02:
            return None
        length = struct.unpack_from("!H", payload, 1)[0]
        if payload[3:3 + length] != b"publish":
            return None
        pos = 3 + length
        if payload[pos] != 0x00:
            return None
        pos += 9  # transaction id
        if payload[pos] == 0x05:  # null command object
            pos += 1
        if payload[pos] != 0x02:
            return None
        length = struct.unpack_from("!H", payload, pos + 1)[0]
        return payload[pos + 3:pos + 3 + length].decode("utf-8", "replace")
    except (IndexError, struct.error):
        return None


def flv_nal_units(payload: bytes, length_size: int = 4) -> list[bytes]:
    """NAL units of an FLV AVC NALU video tag."""
    units: list[bytes] = []
    pos = 5
    while pos + length_size <= len(payload):
        size = int.from_bytes(payload[pos:pos + length_size], "big")
        pos += length_size
        units.append(payload[pos:pos + size])
        pos += size
    return units


def rtp_slice_start(rtp: bytes) -> bytes | None:
    """The first bytes of the slice NAL unit that starts in this RTP packet (H.264, RFC 6184: a single NAL unit
    packet, or a FU-A start fragment with its NAL header rebuilt), else ``None``."""
    if len(rtp) < 14:
        return None
    cc = rtp[0] & 0x0F
    offset = 12 + 4 * cc
    if rtp[0] & 0x10:  # header extension
        if len(rtp) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", rtp, offset + 2)[0]
    payload = rtp[offset:]
    if rtp[0] & 0x20 and payload:  # padding
        payload = payload[:-payload[-1]]
    if not payload:
        return None
    kind = payload[0] & 0x1F
    if kind in (NAL_SLICE, NAL_IDR):
        return payload
    if kind == NAL_FU_A and len(payload) > 2 and payload[1] & 0x80 and payload[1] & 0x1F in (NAL_SLICE, NAL_IDR):
        return bytes([(payload[0] & 0xE0) | (payload[1] & 0x1F)]) + payload[2:]
    return None


# ------------------------------------------------------------------------------------------------------- analysis

Frame = tuple[int, int]  # (RTP port, RTP timestamp)
SliceTable = dict[bytes, dict[bytes, set[Frame]]]  # first KEY_BYTES -> slice start -> frames


def _match(table: SliceTable, unit: bytes) -> Frame | None:
    """The one frame whose slice starts as NAL unit ``unit`` does; ``None`` when none or several do."""
    frames: set[Frame] = set()
    for start, found in table.get(unit[:KEY_BYTES], {}).items():
        if unit.startswith(start):
            frames |= found
    return next(iter(frames)) if len(frames) == 1 else None


@dataclass
class CallWire:
    """What the capture shows of one sampled call."""

    name: str
    invite_time: float | None = None
    video_port: int | None = None
    first_keyframe_time: float | None = None
    setup: float | None = None
    latencies: list[float] = field(default_factory=list)  # seconds, frames written within the window
    frames_written: int = 0  # RTMP video messages with a slice, within the window
    frames_unmatched: int = 0  # ... whose slices were not found among the RTP packets
    note: str = ""


_INVITE_USER = re.compile(rb"^INVITE sip:([^@;> ]+)@", re.M)
_VIDEO_PORT = re.compile(rb"^m=video (\d+) ", re.M)


def analyze(path: Path, *, rtmp_port: int, window: tuple[float, float], starts: dict[str, float] | None,
            video_pt: int) -> dict[str, CallWire]:
    """The sampled calls found in capture ``path``, by RTMP stream name. ``starts`` gives each call's start time
    (gateway: its call/startup request); without it, the first INVITE of the call is its start."""
    packets = read_pcap(path, rtmp_port)
    calls: dict[str, CallWire] = {}
    for when, _sport, _dport, payload in packets.udp:
        user = _INVITE_USER.search(payload[:200])
        if user is None:
            continue
        name = user.group(1).decode("ascii", "replace")
        call = calls.setdefault(name, CallWire(name))
        if call.invite_time is None:
            call.invite_time = when
            port = _VIDEO_PORT.search(payload)
            call.video_port = int(port.group(1)) if port else None
    by_port = {call.video_port: call for call in calls.values() if call.video_port}

    # RTP: frame end time per (port, RTP timestamp); the first bytes of each slice -> its frame, by port and by
    # the first KEY_BYTES (a few slices of the synthetic clip share those; their whole first packet tells them apart).
    frame_end: dict[Frame, float] = {}
    keys: dict[int, SliceTable] = defaultdict(dict)
    for when, _sport, dport, rtp in packets.udp:
        if dport not in by_port or len(rtp) < 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != video_pt:
            continue
        stamp = struct.unpack_from("!I", rtp, 4)[0]
        frame = (dport, stamp)
        frame_end[frame] = max(when, frame_end.get(frame, when))
        start = rtp_slice_start(rtp)
        if start is not None:
            keys[dport].setdefault(start[:KEY_BYTES], {}).setdefault(start, set()).add(frame)

    for segments in packets.tcp.values():
        stream = _stream(segments)
        if stream is None:
            continue
        data, ends, times = stream
        messages = rtmp_messages(data)
        name = next((n for t, _ts, p, _e in messages if t in (17, 20) and (n := publish_name(p))), None)
        if name is None:
            continue
        call = calls.setdefault(name, CallWire(name))
        if call.video_port is None:
            call.note = "no INVITE captured"
            continue
        table = keys.get(call.video_port, {})
        length_size = 4
        for type_id, _stamp, payload, end in messages:
            if type_id != 9 or len(payload) < 5 or payload[0] & 0x0F != 7:
                continue
            when = times[min(bisect_right(ends, end - 1), len(times) - 1)]
            if payload[1] == 0:  # AVC sequence header: NAL length size
                if len(payload) > 9:
                    length_size = (payload[9] & 0x03) + 1
                continue
            if payload[1] != 1:
                continue
            if payload[0] >> 4 == 1 and call.first_keyframe_time is None:
                call.first_keyframe_time = when
            if not window[0] <= when <= window[1]:
                continue
            slices = [u for u in flv_nal_units(payload, length_size) if u and u[0] & 0x1F in (NAL_SLICE, NAL_IDR)]
            if not slices:
                continue
            call.frames_written += 1
            matched = next((f for u in slices if (f := _match(table, u)) is not None), None)
            if matched is None:
                call.frames_unmatched += 1
                continue
            call.latencies.append(when - frame_end[matched])
    for call in calls.values():
        began = (starts or {}).get(call.name, call.invite_time)
        if began is not None and call.first_keyframe_time is not None:
            call.setup = call.first_keyframe_time - began
    return calls
