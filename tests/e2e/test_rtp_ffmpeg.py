"""ffmpeg sends real RTP (H.264 + PCMU, VP8 + Opus) and SRTP into media sessions on 127.0.0.1.

A small relay between ffmpeg and each session drops and reorders packets deterministically and records what it
did, so each test knows which frames the loss really broke: a frame with a dropped packet, and (the sessions wait
for a keyframe after a loss) every frame after it until the next keyframe. The frames that come out must be
exactly the others, and must decode with PyAV without an error.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
from collections.abc import Callable
from typing import Any

import av
import av.logging
from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from wcsgw.rtp.h264 import AccessUnit
from wcsgw.rtp.packet import RtpPacket, is_rtcp
from wcsgw.rtp.protocol import MediaStreamProtocol
from wcsgw.rtp.session import (
    AudioFrame,
    MediaParams,
    MediaStreamSession,
    SenderReportReceived,
    SessionConfig,
    Vp8Frame,
)
from wcsgw.rtp.srtp import AES_CM_128_HMAC_SHA1_80, CryptoAttribute, generate_crypto

reactor: Any = _reactor  # the real reactor: this is an integration test
FFMPEG = shutil.which("ffmpeg")
LOCALHOST = "127.0.0.1"
CLIP_SECONDS = 2
FPS = 25


class FfmpegProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.stderr = b""
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(reason.value.exitCode)


def h264_keyframe(payload: bytes) -> bool:
    kind = payload[0] & 0x1F
    if kind == 5:
        return True
    if kind == 28:
        return payload[1] & 0x1F == 5
    if kind == 24:
        pos = 1
        while pos + 2 <= len(payload):
            (size,) = struct.unpack_from("!H", payload, pos)
            if payload[pos + 2] & 0x1F == 5:
                return True
            pos += 2 + size
    return False


def vp8_keyframe(payload: bytes) -> bool:
    """Keyframe bit of a packet that starts a frame (S=1, PID=0), else False."""
    if not payload[0] & 0x10 or payload[0] & 0x0F:
        return False
    pos = 1
    if payload[0] & 0x80:
        ext = payload[1]
        pos = 2
        if ext & 0x80:
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    return not payload[pos] & 0x01


class Relay(DatagramProtocol):
    """Forwards ffmpeg's RTP to a session, dropping and swapping packets at chosen indexes; records each packet as
    (timestamp, dropped, keyframe)."""

    def __init__(
        self,
        drop: set[int],
        swap: set[int],
        keyframe: Callable[[bytes], bool] = lambda payload: False,
        droppable: Callable[[bytes], bool] = lambda payload: True,
    ) -> None:
        self.drop, self.swap = drop, swap
        self.keyframe, self.droppable = keyframe, droppable
        self.target: tuple[str, int] | None = None
        self.index = 0
        self.forwarded = 0
        self.held: bytes | None = None
        self.want_drop = False
        self.records: list[tuple[int, bool, bool]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.target is None or (addr[0], addr[1]) == self.target or is_rtcp(data):
            return  # the session's keep-alives and reports
        packet = RtpPacket.parse(data)
        index, self.index = self.index, self.index + 1
        if index in self.drop:
            self.want_drop = True
        keyframe = self.keyframe(packet.payload)
        if self.want_drop and self.droppable(packet.payload):
            self.want_drop = False
            self.records.append((packet.timestamp, True, keyframe))
            return
        self.records.append((packet.timestamp, False, keyframe))
        if index in self.swap and self.held is None:
            self.held = data
            return
        self._send(data)
        self.flush()

    def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self._send(held)

    def _send(self, data: bytes) -> None:
        assert self.target is not None
        self.transport.write(data, self.target)
        self.forwarded += 1

    def frames(self) -> list[tuple[int, bool, bool]]:
        """(timestamp, broken, keyframe) per frame, in sending order."""
        order: list[int] = []
        state: dict[int, tuple[bool, bool]] = {}
        for timestamp, dropped, keyframe in self.records:
            if timestamp not in state:
                order.append(timestamp)
                state[timestamp] = (False, False)
            broken, key = state[timestamp]
            state[timestamp] = (broken or dropped, key or keyframe)
        return [(t, *state[t]) for t in order]

    def expected_video_frames(self) -> list[int]:
        """Timestamps of the frames that should come out: intact ones, except inter frames between a broken frame
        and the next keyframe."""
        expected, waiting = [], True
        for timestamp, broken, keyframe in self.frames():
            if broken:
                waiting = True
            elif keyframe:
                waiting = False
                expected.append(timestamp)
            elif not waiting:
                expected.append(timestamp)
        return expected

    @property
    def dropped(self) -> int:
        return sum(1 for _, dropped, _ in self.records if dropped)


class RtcpRelay(DatagramProtocol):
    """Forwards ffmpeg's RTCP to the session's RTCP port (and ignores what the session sends back)."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.target is not None and (addr[0], addr[1]) != self.target:
            self.transport.write(data, self.target)


def decode_count(codec_name: str, payloads: list[bytes], **settings: Any) -> tuple[int, list[Any]]:
    """Decode each payload; return (frames or samples decoded, error log lines)."""
    codec = av.CodecContext.create(codec_name, "r")
    for name, value in settings.items():
        setattr(codec, name, value)
    audio = codec_name in ("pcm_mulaw", "opus")
    total = 0
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            for payload in [*payloads, None]:
                packet = None if payload is None else av.Packet(payload)
                for frame in codec.decode(packet):
                    total += frame.samples if audio else 1
    finally:
        av.logging.set_level(previous)
    return total, list(logs)


def sprop_parameter_sets(path: str) -> str:
    """The sprop-parameter-sets of a file's H.264 stream, from its avcC extradata."""
    with av.open(path) as container:
        avcc = bytes(container.streams.video[0].codec_context.extradata or b"")
    nals, pos = [], 5
    for _ in range(2):  # SPS list, then PPS list
        count = avcc[pos] & 0x1F
        pos += 1
        for _ in range(count):
            (size,) = struct.unpack_from("!H", avcc, pos)
            nals.append(avcc[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return ",".join(base64.b64encode(nal).decode() for nal in nals)


class FfmpegRtpTests(TestCase):
    timeout = 60

    if FFMPEG is None:
        skip = "ffmpeg is not installed"

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)

    # --- helpers ----------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def run_ffmpeg(self, *args: str, timeout: float = 30.0) -> Any:
        """Run ffmpeg to its end (killed in cleanup if the test gives up first)."""
        process = FfmpegProcess()
        transport = reactor.spawnProcess(
            process, FFMPEG, [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], env=os.environ
        )

        def kill() -> Any:
            if process.running:
                transport.signalProcess("KILL")
                return process.ended
            return None

        self.addCleanup(kill)
        code = yield self.wait(process.ended, timeout, "ffmpeg to finish")
        self.assertEqual(code, 0, process.stderr.decode(errors="replace"))

    def wait(self, d: defer.Deferred[Any], timeout: float, what: str) -> defer.Deferred[Any]:
        def timed_out(failure: Any, seconds: float) -> None:
            raise self.failureException(f"timed out after {seconds} s waiting for {what}")

        d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
        return d

    @defer.inlineCallbacks
    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> Any:
        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out after {timeout} s waiting for {what}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    def listen(self, proto: DatagramProtocol) -> int:
        port = reactor.listenUDP(0, proto, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def media(self, params: MediaParams, events: list[Any], **config: Any) -> MediaStreamProtocol:
        config.setdefault("jitter_buffer_ms", 200)
        config.setdefault("rtp_activity_timeout", None)
        session = MediaStreamSession(params, SessionConfig(**config), reactor.seconds())
        stream = MediaStreamProtocol(reactor, session, events.append)
        stream.listen(0, 0, interface=LOCALHOST)
        self.addCleanup(stream.stop)
        return stream

    def relayed_session(self, relay: Relay, events: list[Any], **params: Any) -> tuple[MediaStreamProtocol, int, int]:
        """A session behind ``relay``; return it and the (RTP, RTCP) ports ffmpeg must send to."""
        rtcp_relay = RtcpRelay()
        rtp_port, rtcp_port = self.listen(relay), self.listen(rtcp_relay)
        stream = self.media(
            MediaParams(remote_rtp_addr=LOCALHOST, remote_rtp_port=rtp_port, remote_rtcp_port=rtcp_port, **params),
            events,
        )
        relay.target = (LOCALHOST, stream.rtp_port or 0)
        rtcp_relay.target = (LOCALHOST, stream.rtcp_port or 0)
        return stream, rtp_port, rtcp_port

    @defer.inlineCallbacks
    def settle(self, relays: list[tuple[Relay, MediaStreamProtocol]]) -> Any:
        """After ffmpeg ended: every relayed packet reached its session and nothing is left in a jitter buffer."""
        for relay, _ in relays:
            relay.flush()
        yield self.wait_until(
            lambda: all(
                stream.session.counters.rtp_datagrams == relay.forwarded and stream.session.jitter_buffer.pending == 0
                for relay, stream in relays
            ),
            10.0,
            "the relayed packets to come out of the sessions",
        )

    # --- tests ------------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_h264_pcmu_with_loss_and_reordering(self) -> Any:
        """H.264 and PCMU from ffmpeg through a lossy, reordering relay: the access units that come out are the
        ones the loss did not break, start with a keyframe and decode cleanly; every audio packet not dropped
        comes out once, in order."""
        clip = os.path.join(self.workdir, "h264.mkv")
        yield self.run_ffmpeg(
            *("-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"),
            *("-t", str(CLIP_SECONDS), "-map", "0:v", "-map", "1:a"),
            *("-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-pix_fmt", "yuv420p", "-c:a", "pcm_mulaw", clip),
        )
        video_events: list[Any] = []
        audio_events: list[Any] = []
        video_relay = Relay(
            drop={20, 47}, swap={8, 30, 61}, keyframe=h264_keyframe, droppable=lambda p: p[0] & 0x1F != 24
        )
        audio_relay = Relay(drop={4}, swap={2, 7})
        video, video_port, video_rtcp = self.relayed_session(
            video_relay, video_events, kind="video", codec="H264", payload_type=96, clock_rate=90000, remote_pli=True
        )
        audio, audio_port, audio_rtcp = self.relayed_session(
            audio_relay, audio_events, kind="audio", codec="PCMU", payload_type=0, clock_rate=8000
        )
        yield self.run_ffmpeg(
            *("-re", "-i", clip),
            # SPS and PPS in-band before each IDR, as most devices send them
            *("-map", "0:v", "-c", "copy", "-bsf:v", "h264_mp4toannexb", "-payload_type", "96", "-ssrc", "1001"),
            *("-f", "rtp"),
            f"rtp://{LOCALHOST}:{video_port}?rtcpport={video_rtcp}&pkt_size=1200",
            *("-map", "0:a", "-c", "copy", "-payload_type", "0", "-ssrc", "1002", "-f", "rtp"),
            f"rtp://{LOCALHOST}:{audio_port}?rtcpport={audio_rtcp}&pkt_size=400",
        )
        yield self.settle([(video_relay, video), (audio_relay, audio)])
        for stream in (video, audio):
            self.assertGreater(sum(s.reordered for s in stream.session.stats.values()), 0)

        self.assertEqual(video_relay.dropped, 2)
        frames = video_relay.frames()
        self.assertEqual(len(frames), CLIP_SECONDS * FPS)
        units = [e for e in video_events if isinstance(e, AccessUnit)]
        self.assertEqual([u.timestamp % 2**32 for u in units], video_relay.expected_video_frames())
        self.assertLess(len(units), len(frames))
        self.assertTrue(units[0].keyframe)
        decoded, errors = decode_count("h264", [u.to_annexb() for u in units])
        self.assertEqual((decoded, errors), (len(units), []))
        self.assertTrue(any(isinstance(e, SenderReportReceived) for e in video_events))
        self.assertGreaterEqual(video.session.counters.pli_sent, 2)  # at start, and after each broken frame

        self.assertEqual(audio_relay.dropped, 1)
        frames_out = [e for e in audio_events if isinstance(e, AudioFrame)]
        self.assertEqual(len(frames_out), len(audio_relay.records) - 1)
        self.assertEqual([f.timestamp for f in frames_out], sorted(f.timestamp for f in frames_out))
        samples, errors = decode_count("pcm_mulaw", [f.payload for f in frames_out], sample_rate=8000, layout="mono")
        self.assertEqual((samples, errors), (sum(len(f.payload) for f in frames_out), []))
        self.assertEqual(audio.session.counters.dropped_late + video.session.counters.dropped_late, 0)

    @defer.inlineCallbacks
    def test_vp8_opus_with_loss_and_reordering(self) -> Any:
        """VP8 and Opus from ffmpeg through a lossy, reordering relay: the VP8 frames that come out are the ones
        the loss did not break and decode cleanly; every Opus packet not dropped comes out and decodes."""
        clip = os.path.join(self.workdir, "vp8.webm")
        yield self.run_ffmpeg(
            *("-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}"),
            *("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"),
            *("-t", str(CLIP_SECONDS), "-map", "0:v", "-map", "1:a"),
            *("-c:v", "libvpx", "-g", "12", "-b:v", "400k", "-deadline", "realtime", "-cpu-used", "8"),
            *("-c:a", "libopus", "-b:a", "32k", clip),
        )
        video_events: list[Any] = []
        audio_events: list[Any] = []
        video_relay = Relay(drop={25, 70}, swap={10, 40, 90}, keyframe=vp8_keyframe)
        audio_relay = Relay(drop={10, 50}, swap={20, 60})
        video, video_port, video_rtcp = self.relayed_session(
            video_relay, video_events, kind="video", codec="VP8", payload_type=96, clock_rate=90000
        )
        audio, audio_port, audio_rtcp = self.relayed_session(
            audio_relay, audio_events, kind="audio", codec="opus", payload_type=111, clock_rate=48000, channels=2
        )
        yield self.run_ffmpeg(
            *("-re", "-i", clip),
            *("-map", "0:v", "-c", "copy", "-payload_type", "96", "-f", "rtp"),
            f"rtp://{LOCALHOST}:{video_port}?rtcpport={video_rtcp}&pkt_size=1200",
            *("-map", "0:a", "-c", "copy", "-payload_type", "111", "-f", "rtp"),
            f"rtp://{LOCALHOST}:{audio_port}?rtcpport={audio_rtcp}",
        )
        yield self.settle([(video_relay, video), (audio_relay, audio)])
        for stream in (video, audio):
            self.assertGreater(sum(s.reordered for s in stream.session.stats.values()), 0)

        self.assertEqual(video_relay.dropped, 2)
        frames = [e for e in video_events if isinstance(e, Vp8Frame)]
        self.assertEqual(len(video_relay.frames()), CLIP_SECONDS * FPS)
        self.assertEqual([f.timestamp % 2**32 for f in frames], video_relay.expected_video_frames())
        self.assertLess(len(frames), CLIP_SECONDS * FPS)
        self.assertTrue(frames[0].keyframe)
        self.assertEqual((frames[0].width, frames[0].height), (320, 240))
        decoded, errors = decode_count("vp8", [f.data for f in frames])
        self.assertEqual((decoded, errors), (len(frames), []))

        self.assertEqual(audio_relay.dropped, 2)
        packets = [e for e in audio_events if isinstance(e, AudioFrame)]
        self.assertEqual(len(packets), len(audio_relay.records) - 2)
        self.assertEqual([p.timestamp for p in packets], sorted(p.timestamp for p in packets))
        samples, errors = decode_count("opus", [p.payload for p in packets], sample_rate=48000, layout="mono")
        self.assertEqual((samples, errors), (960 * len(packets), []))

    @defer.inlineCallbacks
    def test_srtp_from_ffmpeg(self) -> Any:
        """H.264 over SRTP (AES_CM_128_HMAC_SHA1_80) from ffmpeg, keyed by an SDES inline key: every access unit
        comes out and decodes; ffmpeg's SRTCP sender report is authenticated too."""
        clip = os.path.join(self.workdir, "srtp.mkv")
        yield self.run_ffmpeg(
            *("-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}", "-t", "1"),
            *("-c:v", "libx264", "-preset", "veryfast", "-g", "12", "-pix_fmt", "yuv420p", clip),
        )
        sprop = sprop_parameter_sets(clip)  # SPS/PPS out of band only, as in SDP
        theirs = generate_crypto(1, AES_CM_128_HMAC_SHA1_80)
        self.assertEqual(CryptoAttribute.parse(str(theirs)), theirs)
        events: list[Any] = []
        stream = self.media(
            MediaParams(
                kind="video",
                codec="H264",
                payload_type=96,
                clock_rate=90000,
                fmtp={"packetization-mode": "1", "sprop-parameter-sets": sprop},
                remote_rtp_addr=LOCALHOST,
                remote_rtp_port=9,
                local_crypto=generate_crypto(1, AES_CM_128_HMAC_SHA1_80),
                remote_crypto=theirs,
            ),
            events,
        )
        yield self.run_ffmpeg(
            *("-re", "-i", clip, "-map", "0:v", "-c", "copy", "-payload_type", "96", "-f", "rtp"),
            *(
                "-srtp_out_suite",
                AES_CM_128_HMAC_SHA1_80,
                "-srtp_out_params",
                base64.b64encode(theirs.key_salt).decode(),
            ),
            f"srtp://{LOCALHOST}:{stream.rtp_port}?rtcpport={stream.rtcp_port}&pkt_size=1200",
        )
        yield self.wait_until(
            lambda: (
                stream.session.jitter_buffer.pending == 0
                and len([e for e in events if isinstance(e, AccessUnit)]) >= FPS
            ),
            10.0,
            "the SRTP access units",
        )
        units = [e for e in events if isinstance(e, AccessUnit)]
        self.assertEqual(len(units), FPS)
        counters = stream.session.counters
        self.assertEqual((counters.dropped_srtp, counters.rtcp_dropped_srtp), (0, 0))
        self.assertTrue(any(isinstance(e, SenderReportReceived) for e in events))
        decoded, errors = decode_count("h264", [u.to_annexb() for u in units])
        self.assertEqual((decoded, errors), (FPS, []))
