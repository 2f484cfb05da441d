"""
The whole mission end to end, every part real, on 127.0.0.1: the gateway process dials a SIPp far end, ffmpeg
sends the far end's RTP into the ports the gateway offered, the gateway publishes to a private nginx-rtmp, and
ffmpeg reads the stream back from nginx.

The test clip carries sync marks: a white video frame and a 1 kHz beep at the same irregular instants.  Reading the
stream back, each flash is paired with its beep: their distance is the audio/video drift the gateway introduced.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import av
import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.e2e.gateway import (CallAppReceiver, ChildProcess, free_tcp_port, start_gateway, thread_scheduling,
                               wait_for)
from tests.e2e.nginx import NginxRtmp
from tests.e2e.sipp import Sipp, require_sipp

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FPS = 25
CLIP_SECONDS = 4


def offered_ports(messages: str) -> dict[str, int]:
    """The audio and video ports of the gateway's INVITE offer, read from SIPp's message log."""
    invite = messages[messages.index("INVITE sip:"):]
    return {kind: int(re.search(rf"^m={kind} (\d+) ", invite, re.M).group(1))  # type: ignore[union-attr]
            for kind in ("audio", "video")}


#: Sync marks within each CLIP_SECONDS: irregular, so that no shift but a whole clip could align flashes and beeps.
MARKS = (0.0, 0.32, 1.2, 2.48)


def make_clip(workdir: Path, video: str, audio: str) -> tuple[list[list[str]], Path, Path]:
    """ffmpeg commands that make the clip's video and audio files: black video with a white frame and silence with
    a 40 ms 1 kHz beep at each of MARKS.  H.264 goes into MPEG-TS, whose H.264 carries SPS and PPS in-band before
    each IDR, as SIP devices send it (the far end's SDP answer has no sprop-parameter-sets)."""
    frames = CLIP_SECONDS * FPS
    flash = "+".join(f"eq(mod(n\\,{frames})\\,{round(mark * FPS)})" for mark in MARKS)
    beep = "+".join(f"between(mod(t\\,{CLIP_SECONDS})\\,{mark}\\,{mark + 0.04})" for mark in MARKS)
    video_file = workdir / ("video.ts" if video == "h264" else "video.webm")
    audio_file = workdir / "audio.mka"
    video_codec = {"h264": ["-c:v", "libx264", "-profile:v", "baseline", "-g", str(FPS), "-bf", "0", "-tune",
                            "zerolatency", "-pix_fmt", "yuv420p"],
                   "vp8": ["-c:v", "libvpx", "-g", str(FPS), "-deadline", "realtime", "-b:v", "600k"]}[video]
    audio_codec = {"pcmu": ["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"],
                   "opus": ["-c:a", "libopus", "-ar", "48000", "-ac", "2", "-b:a", "48k"]}[audio]
    return ([
        ["-y", "-loglevel", "error", "-f", "lavfi", "-i",
         f"color=c=black:s=320x240:r={FPS},drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='{flash}'",
         "-t", str(CLIP_SECONDS), *video_codec, str(video_file)],
        ["-y", "-loglevel", "error", "-f", "lavfi", "-i",
         f"aevalsrc='if({beep}\\,0.8*sin(2*PI*1000*t)\\,0)':s=48000", "-t", str(CLIP_SECONDS), *audio_codec,
         str(audio_file)],
    ], video_file, audio_file)


def send_rtp(video_file: Path, audio_file: Path, ports: dict[str, int], video_pt: int, audio_pt: int,
             rtcp_ports: dict[str, int] | None = None) -> list[str]:
    """ffmpeg arguments that loop the clip as RTP (with RTCP sender reports) into the offered ports (RTCP to
    port + 1 unless ``rtcp_ports`` says otherwise)."""
    rtcp = rtcp_ports or {kind: port + 1 for kind, port in ports.items()}
    return ["-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(video_file),
            "-re", "-stream_loop", "-1", "-i", str(audio_file),
            "-map", "0:v", "-c", "copy", "-payload_type", str(video_pt), "-ssrc", "1111", "-f", "rtp",
            f"rtp://127.0.0.1:{ports['video']}?rtcpport={rtcp['video']}",
            "-map", "1:a", "-c", "copy", "-payload_type", str(audio_pt), "-ssrc", "2222", "-f", "rtp",
            f"rtp://127.0.0.1:{ports['audio']}?rtcpport={rtcp['audio']}"]


def analyse(data: bytes) -> dict[str, Any]:
    """Decode an FLV recording: codecs, frame counts, decode errors and the flash-to-beep drifts in ms."""
    errors: list[str] = []
    container = av.open(io.BytesIO(data), format="flv")
    streams = {s.type: s.codec_context.name for s in container.streams}
    flashes: list[float] = []
    beeps: list[float] = []
    video_frames = audio_frames = 0
    quiet_until = None
    previous_bright = False
    for packet in container.demux():
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            errors.append(f"{packet.stream.type}: {exc}")
            continue
        for frame in frames:
            seconds = float(frame.pts * frame.time_base)
            if packet.stream.type == "video":
                video_frames += 1
                luma = frame.to_ndarray(format="gray").mean()
                bright = luma > 128
                if bright and not previous_bright:
                    flashes.append(seconds * 1000)
                previous_bright = bright
            else:
                audio_frames += 1
                samples = frame.to_ndarray()
                mono = abs(samples[0])
                loud = (mono > 0.2).nonzero()[0]
                if len(loud):
                    onset = seconds + loud[0] / frame.sample_rate
                    if quiet_until is None or onset > quiet_until:
                        beeps.append(onset * 1000)
                    quiet_until = seconds + (loud[-1] + 1) / frame.sample_rate + 0.3
    drifts = []
    for flash in flashes:
        nearest = min(beeps, key=lambda beep: abs(beep - flash), default=None)
        if nearest is not None and abs(nearest - flash) < 150:
            drifts.append(nearest - flash)
    return {"streams": streams, "video_frames": video_frames, "audio_frames": audio_frames, "errors": errors,
            "flashes": len(flashes), "beeps": len(beeps), "drifts": drifts}


class CallToRtmpTests(TestCase):
    timeout = 240

    def setUp(self) -> Any:
        require_sipp()
        if shutil.which("ffmpeg") is None:
            raise SkipTest("ffmpeg is not installed")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.nginx = NginxRtmp.create(self)
        return deferToThread(self.nginx.start)

    @inlineCallbacks
    def post(self, method: str, body: dict[str, Any]) -> Any:
        response = yield self.http.post(f"{self.base}/{method}", data=json.dumps(body).encode())
        content = yield treq.content(response)
        return response.code, json.loads(content) if content else None

    @inlineCallbacks
    def ffmpeg(self, args: list[str], timeout: float = 60) -> Any:
        out, err, code = yield getProcessOutputAndValue(FFMPEG, args)
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out

    @inlineCallbacks
    def start_call(self, scenario: str, video: str, audio: str, video_pt: int, audio_pt: int,
                   stream: str, app: str = "live") -> Any:
        """SIPp far end + gateway + a call publishing to nginx; ffmpeg sends the far end's RTP."""
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        commands, video_file, audio_file = make_clip(workdir, video, audio)
        for command in commands:
            yield self.ffmpeg(command)
        self.sipp = Sipp(reactor, scenario, workdir=str(workdir / "sipp"))
        self.addCleanup(self.sipp.stop)
        yield self.sipp.start()
        self.receiver = CallAppReceiver()
        self.receiver.start(self)
        port = free_tcp_port()
        self.gateway = yield start_gateway(self, [
            "--rest-port", str(port), "--callapp-url", self.receiver.url, "--sip-port", "0",
            "--sip-address", "127.0.0.1", "--media-ports", "44000-44999"])
        self.base = f"http://127.0.0.1:{port}/rest-api"
        code, _ = yield self.post("call/startup", {
            "callId": stream, "callee": "far", "sipDomain": "127.0.0.1", "sipPort": self.sipp.port,
            "sipLogin": "gw", "rtmpUrl": self.nginx.rtmp_url(app), "rtmpStream": stream,
            "hasAudio": "false", "hasVideo": "false"})
        self.assertEqual(code, 200)
        yield wait_for(lambda: self.status(stream)[0] == "ESTABLISHED", what="ESTABLISHED")
        ports = offered_ports(self.sipp.messages)
        sender = ChildProcess([FFMPEG, *send_rtp(video_file, audio_file, ports, video_pt, audio_pt)], cwd=workdir)
        self.addCleanup(sender.stop)
        return workdir

    def status(self, call_id: str) -> tuple[str | None, str | None]:
        statuses = self.receiver.statuses(call_id)
        return statuses[-1] if statuses else (None, None)

    @inlineCallbacks
    def record(self, workdir: Path, name: str, seconds: int = 6) -> Any:
        """Read ``seconds`` of a stream back from nginx with ffmpeg (no re-encoding) and analyse it."""
        target = workdir / f"{name}.flv"
        yield self.ffmpeg(["-y", "-loglevel", "error", "-rw_timeout", "15000000", "-i", self.nginx.play_url(name),
                           "-t", str(seconds), "-c", "copy", "-f", "flv", str(target)])
        result = yield deferToThread(analyse, target.read_bytes())
        return result

    @inlineCallbacks
    def test_h264_pcmu_call_published_in_sync_with_pushes_and_nginx_restart(self) -> Any:
        """H.264 + PCMU from the far end reach nginx as H.264 + AAC in sync; two pushes get the same stream;
        an nginx restart mid-call returns to RTMP_STREAM_ACTIVE while the call stays ESTABLISHED."""
        workdir = yield self.start_call("uas_answer.xml", "h264", "pcmu", 112, 0, "call_h264")
        yield wait_for(lambda: self.status("call_h264") == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"), timeout=60,
                       what="RTMP_STREAM_ACTIVE")
        pushes = []
        for name in ("copy_a", "copy_b"):
            code, push = yield self.post("push/startup", {"streamName": "call_h264",
                                                          "rtmpUrl": self.nginx.rtmp_url(), "rtmpStream": name})
            self.assertEqual(code, 200)
            pushes.append(push["mediaSessionId"])

        @inlineCallbacks
        def pushes_active() -> Any:
            statuses = []
            for media_session_id in pushes:
                code, found = yield self.post("push/find", {"mediaSessionId": media_session_id})
                statuses.append(found[0]["status"] if code == 200 else None)
            return statuses == ["RTMP_STREAM_ACTIVE"] * len(pushes)

        for _ in range(300):
            active = yield pushes_active()
            if active:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(active, "pushes did not become active")
        # The reactor thread and the transcoding thread it started with the call run at real-time priority
        # (realtime_priority, 5); the threads of Twisted's pool, if any, normal (SCHED_RESET_ON_FORK).
        threads = thread_scheduling(self.gateway.pid)
        if "cannot run at real-time priority" in self.gateway.output:  # not permitted here: it said so
            self.assertEqual({threads["main"], threads["wcsgw-tc"]}, {(os.SCHED_OTHER, 0)}, threads)
        else:
            self.assertIn("media threads: real-time priority 5 (SCHED_RR)", self.gateway.output)
            self.assertEqual(threads["main"], (os.SCHED_RR, 5), threads)
            self.assertEqual(threads["wcsgw-tc"], (os.SCHED_RR, 5), threads)
            self.assertEqual({policy for name, policy in threads.items() if name not in ("main", "wcsgw-tc")},
                             {(os.SCHED_OTHER, 0)} if len(threads) > 2 else set(), threads)

        main = yield self.record(workdir, "call_h264")
        self.assertEqual(main["streams"], {"video": "h264", "audio": "aac"})
        self.assertEqual(main["errors"], [])
        self.assertGreaterEqual(main["video_frames"], 4 * FPS)
        self.assertGreaterEqual(len(main["drifts"]), 4, main)
        self.assertLess(max(abs(d) for d in main["drifts"]), 40, main["drifts"])
        for name in ("copy_a", "copy_b"):
            copy = yield self.record(workdir, name, seconds=4)
            self.assertEqual(copy["streams"], {"video": "h264", "audio": "aac"})
            self.assertEqual(copy["errors"], [])
            self.assertGreaterEqual(copy["video_frames"], 2 * FPS)

        yield deferToThread(self.nginx.restart)
        yield wait_for(lambda: ("ESTABLISHED", "RTMP_CONNECTION_LOST") in self.receiver.statuses("call_h264"),
                       timeout=30, what="RTMP_CONNECTION_LOST")
        yield wait_for(lambda: self.status("call_h264") == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"), timeout=60,
                       what="RTMP_STREAM_ACTIVE again")
        again = yield self.record(workdir, "call_h264", seconds=3)
        self.assertEqual(again["streams"], {"video": "h264", "audio": "aac"})
        self.assertEqual(again["errors"], [])
        self.assertNotIn("FAILED", [s for s, _ in self.receiver.statuses("call_h264")])

        code, _ = yield self.post("call/terminate", {"callId": "call_h264"})
        self.assertEqual(code, 200)
        yield wait_for(lambda: self.status("call_h264")[0] == "FINISH", what="FINISH")
        exit_code = yield self.sipp.wait_exit(timeout=30)
        self.assertEqual(exit_code, 0, self.sipp.describe())

    @inlineCallbacks
    def test_vp8_opus_call_transcoded(self) -> Any:
        """VP8 + Opus from the far end are transcoded to H.264 + AAC that decode without errors, in sync."""
        workdir = yield self.start_call("uas_answer_vp8_opus.xml", "vp8", "opus", 120, 111, "call_vp8")
        yield wait_for(lambda: self.status("call_vp8") == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"), timeout=60,
                       what="RTMP_STREAM_ACTIVE")
        # The re-encoded stream has a keyframe every 2 s and nginx starts a reader at one: read 8 s.
        result = yield self.record(workdir, "call_vp8", seconds=8)
        self.assertEqual(result["streams"], {"video": "h264", "audio": "aac"})
        self.assertEqual(result["errors"], [])
        self.assertGreaterEqual(result["video_frames"], 4 * FPS)
        self.assertGreaterEqual(len(result["drifts"]), 4, result)
        self.assertLess(max(abs(d) for d in result["drifts"]), 40, result["drifts"])

    @inlineCallbacks
    def test_refused_publish_fails_destination_not_call(self) -> Any:
        """A publish the RTMP server refuses ends RTMP_CONNECTION_FAILED; the SIP call stays ESTABLISHED."""
        yield self.start_call("uas_answer.xml", "h264", "pcmu", 112, 0, "call_refused", app="refuse")
        yield wait_for(lambda: self.status("call_refused") == ("ESTABLISHED", "RTMP_CONNECTION_FAILED"),
                       timeout=60, what="RTMP_CONNECTION_FAILED")
        code, calls = yield self.post("call/find", {"callId": "call_refused"})
        self.assertEqual((code, calls[0]["status"], calls[0]["rtmpStreamStatus"]),
                         (200, "ESTABLISHED", "RTMP_CONNECTION_FAILED"))
