"""Make the far end's media once, into ``bench/work/media/``, so that replaying it costs little.

* ``video-pt112-<S>s.pcap``: H.264 Constrained Baseline 1280x720 at 25 fps, about 1.5 Mbit/s, one IDR every 2 s
  (SPS/PPS repeated before each), from ffmpeg lavfi ``testsrc2``, packetized by ffmpeg's own RTP muxer
  (RFC 6184 mode 1, payloads <= 1200 bytes) with payload type 112 (the gateway's offer; the baseline's UAC offers
  the same), for SIPp's ``play_pcap_video``. SIPp replays payloads verbatim at the pcap's packet times, so those
  times are written from the RTP timestamps (a frame's packets 0.2 ms apart), not from capture jitter.
* ``tone-440hz.ulaw``: 10 s of a 440 Hz ``sine`` as raw G.711 mu-law (8 kHz), which SIPp's ``rtp_stream`` sends as
  PCMU (payload type 0) in 160-byte packets every 20 ms, looping for as long as the call lasts. (SIPp 3.6.1 plays
  one pcap per call at a time: a ``play_pcap_audio`` would cancel the ``play_pcap_video``.)
* ``media.json``: what was made and what it measured (packets, bit rate, keyframe interval), read by ``run.py``.

Run ``.venv/bin/python bench/media.py [--seconds 150]``; nothing is redone when the files exist and are long
enough. The clip must last longer than the longest call of a run: a pcap plays once, and replaying it in a loop
would send RTP timestamps and sequence numbers back in time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
MEDIA_DIR = WORK / "media"

WIDTH, HEIGHT, FPS = 1280, 720, 25
VIDEO_BITRATE = 1_500_000
GOP_SECONDS = 2
VIDEO_PT = 112
VIDEO_CLOCK = 90000
RTP_PAYLOAD_MAX = 1200
PACKET_SPACING = 0.0002  # seconds between the packets of one frame in the pcap
AUDIO_SECONDS = 10
DEFAULT_SECONDS = 150
PCAP_DST_PORT = 30000
PCAP_SRC_PORT = 40000


@dataclass(frozen=True)
class Media:
    video_pcap: str
    audio_ulaw: str
    video_pt: int
    seconds: float
    video_packets: int
    video_packets_per_second: float
    video_bitrate: float  # RTP payload bits per second
    keyframe_interval: float
    audio_packets_per_second: float = 50.0

    @property
    def packets_per_second(self) -> float:
        """RTP packets per second a call receives (video + audio)."""
        return self.video_packets_per_second + self.audio_packets_per_second


def _run(args: list[str]) -> None:
    result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def encode_video(path: Path, seconds: float) -> None:
    """H.264 Annex B, Constrained Baseline 720p25, ~1.5 Mbit/s CBR-like, IDR every 2 s with SPS/PPS in band."""
    kbit = VIDEO_BITRATE // 1000
    _run([
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-t", str(seconds), "-pix_fmt", "yuv420p",
        "-c:v", "libx264", "-profile:v", "baseline", "-level", "3.1", "-preset", "veryfast", "-tune", "zerolatency",
        "-b:v", f"{kbit}k", "-maxrate", f"{kbit}k", "-bufsize", f"{kbit}k",
        "-g", str(FPS * GOP_SECONDS), "-keyint_min", str(FPS * GOP_SECONDS), "-sc_threshold", "0",
        "-x264-params", "repeat-headers=1",
        "-f", "h264", str(path),
    ])  # fmt: skip


def encode_audio(path: Path) -> None:
    _run([
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
        "-t", str(AUDIO_SECONDS), "-ar", "8000", "-ac", "1", "-f", "mulaw", str(path),
    ])  # fmt: skip


def _receive(sock: socket.socket, packets: list[bytes], done: threading.Event) -> None:
    sock.settimeout(0.2)
    while True:
        try:
            packets.append(sock.recv(65535))
        except TimeoutError:
            if done.is_set():
                return


def packetize(h264: Path, payload_type: int, readrate: float = 8.0) -> list[bytes]:
    """RTP packets of ``h264`` as ffmpeg's RTP muxer makes them, received on a 127.0.0.1 socket; every sequence
    number must arrive (the muxer is paced with ``-readrate`` and the socket buffer is large)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, 64 * 1024 * 1024)  # SO_RCVBUFFORCE (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    packets: list[bytes] = []
    done = threading.Event()
    reader = threading.Thread(target=_receive, args=(sock, packets, done), daemon=True)
    reader.start()
    try:
        _run([
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
            "-readrate", str(readrate), "-framerate", str(FPS), "-f", "h264", "-i", str(h264),
            "-c:v", "copy", "-an", "-payload_type", str(payload_type), "-ssrc", "305419896",
            "-f", "rtp", f"rtp://127.0.0.1:{port}?pkt_size={RTP_PAYLOAD_MAX + 12}",
        ])  # fmt: skip
        time.sleep(0.5)
    finally:
        done.set()
        reader.join()
        sock.close()
    rtp = [p for p in packets if len(p) >= 12 and p[0] >> 6 == 2 and p[1] & 0x7F == payload_type]
    if not rtp:
        raise RuntimeError("ffmpeg sent no RTP")
    first = struct.unpack_from("!H", rtp[0], 2)[0]
    for index, packet in enumerate(rtp):
        seq = struct.unpack_from("!H", packet, 2)[0]
        if seq != (first + index) & 0xFFFF:
            raise RuntimeError(f"RTP capture lost packets near #{index} (seq {seq}); try a lower readrate")
    return rtp


def schedule(packets: list[bytes]) -> list[float]:
    """Send time of each packet: its frame's RTP time, plus PACKET_SPACING per earlier packet of the frame."""
    times: list[float] = []
    ts0 = struct.unpack_from("!I", packets[0], 4)[0]
    last_ts: int | None = None
    rank = 0
    for packet in packets:
        ts = struct.unpack_from("!I", packet, 4)[0]
        rank = rank + 1 if ts == last_ts else 0
        last_ts = ts
        times.append(((ts - ts0) & 0xFFFFFFFF) / VIDEO_CLOCK + rank * PACKET_SPACING)
    return times


def write_pcap(path: Path, packets: list[bytes], times: list[float]) -> None:
    """Classic pcap, Ethernet link type, IPv4/UDP 127.0.0.1:40000 -> 127.0.0.1:30000 (SIPp rewrites the ports)."""
    start = 1_700_000_000.0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ident, (payload, offset) in enumerate(zip(packets, times, strict=True)):
            udp = struct.pack("!HHHH", PCAP_SRC_PORT, PCAP_DST_PORT, 8 + len(payload), 0) + payload
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0x4000, 64, 17, 0,
                                 socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
            checksum = _ip_checksum(header)
            ip = header[:10] + struct.pack("!H", checksum) + header[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            when = start + offset
            seconds = int(when)
            micros = int(round((when - seconds) * 1e6))
            if micros >= 1_000_000:
                seconds, micros = seconds + 1, micros - 1_000_000
            out.write(struct.pack("<IIII", seconds, micros, len(frame), len(frame)))
            out.write(frame)


def _ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def read_pcap_rtp(path: Path) -> list[tuple[float, bytes]]:
    """(time, RTP packet) of each UDP packet of a pcap written by :func:`write_pcap` (or by tcpdump on lo)."""
    data = path.read_bytes()
    magic, = struct.unpack_from("<I", data, 0)
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{path}: not a little-endian microsecond pcap")
    pos = 24
    out: list[tuple[float, bytes]] = []
    while pos + 16 <= len(data):
        sec, usec, caplen, _length = struct.unpack_from("<IIII", data, pos)
        frame = data[pos + 16:pos + 16 + caplen]
        pos += 16 + caplen
        ihl = (frame[14] & 0x0F) * 4
        out.append((sec + usec / 1e6, frame[14 + ihl + 8:]))
    return out


def _is_keyframe(payload: bytes) -> bool:
    nal = payload[0] & 0x1F
    if nal == 28:  # FU-A: start bit and the NAL type of the fragment
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    if nal == 24:  # STAP-A
        pos = 1
        while pos + 3 <= len(payload):
            size = struct.unpack_from("!H", payload, pos)[0]
            if payload[pos + 2] & 0x1F == 5:
                return True
            pos += 2 + size
        return False
    return nal == 5


def ensure_media(seconds: float = DEFAULT_SECONDS, *, force: bool = False, log=print) -> Media:
    """The media files for calls of up to ``seconds``, made now only when missing or too short."""
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    info_path = MEDIA_DIR / "media.json"
    if info_path.exists() and not force:
        media = Media(**json.loads(info_path.read_text()))
        if media.seconds >= seconds and os.path.exists(media.video_pcap) and os.path.exists(media.audio_ulaw):
            return media
    seconds = max(seconds, DEFAULT_SECONDS)
    log(f"making {seconds:.0f} s of 720p H.264 + PCMU into {MEDIA_DIR} (once; about {seconds / 3:.0f} s)")
    h264 = MEDIA_DIR / "video.h264"
    encode_video(h264, seconds)
    packets = packetize(h264, VIDEO_PT)
    times = schedule(packets)
    video_pcap = MEDIA_DIR / f"video-pt{VIDEO_PT}-{int(seconds)}s.pcap"
    write_pcap(video_pcap, packets, times)
    h264.unlink()
    audio = MEDIA_DIR / "tone-440hz.ulaw"
    encode_audio(audio)
    key_times = sorted({round(t * FPS) / FPS for t, p in zip(times, packets, strict=True) if _is_keyframe(p[12:])})
    intervals = [b - a for a, b in zip(key_times, key_times[1:], strict=False)]
    duration = times[-1] + 1 / FPS
    media = Media(
        video_pcap=str(video_pcap),
        audio_ulaw=str(audio),
        video_pt=VIDEO_PT,
        seconds=round(duration, 3),
        video_packets=len(packets),
        video_packets_per_second=round(len(packets) / duration, 2),
        video_bitrate=round(sum(len(p) - 12 for p in packets) * 8 / duration),
        keyframe_interval=round(sum(intervals) / len(intervals), 3) if intervals else 0.0,
    )
    for old in MEDIA_DIR.glob("video-pt*.pcap"):
        if old != video_pcap:
            old.unlink()
    info_path.write_text(json.dumps(asdict(media), indent=2) + "\n")
    log(f"media: {media.video_packets} video packets, {media.video_packets_per_second} pkt/s, "
        f"{media.video_bitrate / 1e6:.2f} Mbit/s, keyframe every {media.keyframe_interval} s, {media.seconds} s")
    return media


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="clip length (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="make the files again")
    args = parser.parse_args(argv)
    media = ensure_media(args.seconds, force=args.force)
    print(json.dumps(asdict(media), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
