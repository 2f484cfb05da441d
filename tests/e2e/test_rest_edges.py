"""
Edges of the call life cycle through the REST API, with the gateway in this process (real sockets on 127.0.0.1),
SIPp far ends and, for media, ffmpeg as the far end's RTP sender and a private nginx-rtmp: the media port range
running out, an answer without common codecs, gateway shutdown, a failing RTMP destination, an audio-only call,
and push/terminate of one destination among several.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from tests.e2e.gateway import ChildProcess, free_tcp_port, wait_for
from tests.e2e.nginx import NginxRtmp
from tests.e2e.flows import FlowTestCase
from tests.e2e.test_call_to_rtmp import FFMPEG, analyse, make_clip, send_rtp

Steps = Generator[Any, Any, None]

#: Media ports of the gateways here (the exhaustion test uses its own two pairs); apart from test_rest_flows'.
MEDIA_PORTS = {"media_port_from": 47100, "media_port_to": 47199}
ERROR_FIELDS = ["error", "exception", "message", "path", "status", "timestamp"]


def require_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        raise SkipTest("ffmpeg is not installed (Debian package ffmpeg); media edge tests skipped")


def stat_streams(xml: bytes, app: str = "live") -> dict[str, tuple[int, bool]]:
    """The streams of ``app`` in nginx-rtmp's ``rtmp_stat`` page: name -> (bytes_in, has a publisher)."""
    root = ElementTree.fromstring(xml)
    streams: dict[str, tuple[int, bool]] = {}
    for application in root.iter("application"):
        if application.findtext("name") != app:
            continue
        for stream in application.iter("stream"):
            streams[stream.findtext("name") or ""] = (int(stream.findtext("bytes_in") or 0),
                                                      stream.find("publishing") is not None)
    return streams


def stat_codecs(xml: bytes, name: str, app: str = "live") -> tuple[str | None, str | None]:
    """The video and audio codecs nginx-rtmp read from stream ``name``'s metadata (``None``: no such track)."""
    root = ElementTree.fromstring(xml)
    for application in root.iter("application"):
        if application.findtext("name") != app:
            continue
        for stream in application.iter("stream"):
            if stream.findtext("name") == name:
                return (stream.findtext("meta/video/codec"), stream.findtext("meta/audio/codec"))
    raise AssertionError(f"no stream {name!r} in rtmp_stat")


class EdgeTestCase(FlowTestCase):
    gateway_settings = dict(MEDIA_PORTS)
    call_fields = {"callee": "bob", "sipLogin": "alice", "hasAudio": "false", "hasVideo": "false"}

    def far_end_received(self) -> list[str]:
        return [line.split()[0] for line in self.far.start_lines("received")]


class PortRangeTests(EdgeTestCase):
    @inlineCallbacks
    def test_exhausted_range_refuses_with_503_until_quarantine_passes(self) -> Steps:
        """With room for one call (47000-47003: an audio and a video pair), a second call/startup gets 503 with
        WCS's error shape naming the range; once the first call ended and its ports' 5 s quarantine passed, a new
        call is accepted and established."""
        yield self.gateway(media_port_from=47000, media_port_to=47003)
        yield self.sipp("uas_answer.xml", calls=2)
        yield self.startup("ports-first")
        yield self.until("ports-first", "ESTABLISHED")

        before = reactor.seconds()
        code, error = yield self.gw.post("call/startup", self.body("ports-refused"))
        self.assertEqual(code, 503, error)
        self.assertEqual(sorted(error), ERROR_FIELDS)
        self.assertEqual((error["status"], error["error"], error["path"]),
                         (503, "Service Unavailable", "/rest-api/call/startup"))
        self.assertTrue(error["exception"].endswith("Exception"), error)
        self.assertIn("47000-47003", error["message"])
        self.assertIn("exhausted", error["message"])
        self.assertLessEqual(abs(error["timestamp"] / 1000 - before), 5, error)
        found = yield self.gw.find("ports-first")
        self.assertEqual(found["status"], "ESTABLISHED")  # the refusal did not touch the live call

        code, _ = yield self.gw.post("call/terminate", {"callId": "ports-first"})
        self.assertEqual(code, 200)
        yield self.until("ports-first", "FINISH")
        ended = reactor.seconds()
        code, error = yield self.gw.post("call/startup", self.body("ports-quarantined"))
        self.assertEqual(code, 503, "a call was accepted on ports still in quarantine")
        self.assertIn("47000-47003", error["message"])

        deadline = ended + 20
        refused = 0
        while True:
            code, answer = yield self.gw.post("call/startup", self.body("ports-again"))
            if code == 200:
                break
            self.assertEqual(code, 503, answer)
            refused += 1
            self.assertLess(reactor.seconds(), deadline, "no call accepted 20 s after the range was freed")
            yield deferLater(reactor, 0.25, lambda: None)
        accepted = reactor.seconds()
        self.assertGreaterEqual(accepted - ended, 4.5, "the ports were reused before their quarantine")
        self.assertGreater(refused, 0)
        yield wait_for(lambda: "ESTABLISHED" in self.statuses("ports-again")
                       and self.statuses("ports-again")[-1] != "FAILED", what="ports-again ESTABLISHED")
        media = self.gw.service.backend.calls["ports-again"]
        self.assertEqual(sorted(media.ports.values()), [(47000, 47001), (47002, 47003)])
        yield self.gw.post("call/terminate", {"callId": "ports-again"})
        yield self.until("ports-again", "FINISH")
        yield self.far_end_passed()


class NoCommonCodecsTests(EdgeTestCase):
    @inlineCallbacks
    def test_answer_without_common_codecs_fails_the_call(self) -> Steps:
        """A far end answering only G.729 audio and rejecting video: we ACK its 200 and send BYE; the call ends
        FAILED with info NO_COMMON_CODECS (never ESTABLISHED), in the CallApp events and in call/find."""
        yield self.gateway()
        yield self.sipp("uas_no_common_codecs.xml")
        yield self.startup("codecs-none", hasAudio="true", hasVideo="true")
        yield self.until("codecs-none", "FAILED")
        self.assertEqual(self.statuses("codecs-none"), ["NEW", "PENDING", "TRYING", "FAILED"])
        final = self.events("codecs-none")[-1]
        self.assertEqual((final["sipStatus"], final["info"]), (200, "NO_COMMON_CODECS"))
        found = yield self.gw.find("codecs-none")
        self.assertEqual((found["status"], found["info"]), ("FAILED", "NO_COMMON_CODECS"))
        yield self.far_end_passed()
        self.assertEqual(self.far_end_received(), ["INVITE", "ACK", "BYE"])
        self.assertNotIn("codecs-none", self.gw.service.backend.calls)


class ShutdownTests(EdgeTestCase):
    @inlineCallbacks
    def test_shutdown_sends_bye_and_reports_finish(self) -> Steps:
        """Stopping the gateway with an ESTABLISHED call sends BYE (answered by the far end), and the CallApp
        receiver has the FINISH event with info GATEWAY_SHUTDOWN before the stop completes."""
        gateway = yield self.gateway()
        yield self.sipp("uas_answer.xml")
        yield self.startup("shutdown-bye")
        yield self.until("shutdown-bye", "ESTABLISHED")
        yield gateway.service.stopService()
        self.assertEqual(self.statuses("shutdown-bye")[-2:], ["ESTABLISHED", "FINISH"])
        self.assertEqual(self.events("shutdown-bye")[-1]["info"], "GATEWAY_SHUTDOWN")
        yield self.far_end_passed()
        self.assertEqual(self.far_end_received(), ["INVITE", "ACK", "BYE"])

    @inlineCallbacks
    def test_shutdown_while_ringing_sends_cancel(self) -> Steps:
        """Stopping the gateway while the far end rings sends CANCEL (and ACKs the 487) instead of BYE; the
        FINISH event (GATEWAY_SHUTDOWN) reaches the CallApp receiver before the stop completes."""
        gateway = yield self.gateway()
        yield self.sipp("uas_cancel.xml")
        yield self.startup("shutdown-cancel")
        yield self.until("shutdown-cancel", "RING")
        yield gateway.service.stopService()
        self.assertEqual(self.statuses("shutdown-cancel")[-2:], ["RING", "FINISH"])
        self.assertEqual(self.events("shutdown-cancel")[-1]["info"], "GATEWAY_SHUTDOWN")
        yield self.far_end_passed()
        self.assertEqual(self.far_end_received(), ["INVITE", "CANCEL", "ACK"])


class RtmpFailureTests(EdgeTestCase):
    def dead_rtmp_url(self) -> str:
        return f"rtmp://127.0.0.1:{free_tcp_port()}/live"  # nothing listens there

    @inlineCallbacks
    def test_rtmp_failure_ends_call_when_configured(self) -> Steps:
        """rtmp_failure_ends_call=true: once ESTABLISHED, the call's own destination that cannot connect goes
        RTMP_CONNECTION_FAILED after the reconnect delays, and the call ends FAILED with info
        FAILED_BY_RTMP_WRITER_ERROR (BYE sent)."""
        yield self.gateway(rtmp_failure_ends_call=True, rtmp_reconnect_delays=(0.2, 0.2))
        yield self.sipp("uas_answer.xml")
        yield self.startup("rtmp-ends", rtmpUrl=self.dead_rtmp_url(), rtmpStream="dead")
        yield self.until("rtmp-ends", "FAILED")
        events = self.receiver.statuses("rtmp-ends")
        self.assertIn(("ESTABLISHED", "RTMP_CONNECTION_FAILED"), events)
        self.assertEqual(events[-1], ("FAILED", "RTMP_CONNECTION_FAILED"))
        self.assertEqual(self.events("rtmp-ends")[-1]["info"], "FAILED_BY_RTMP_WRITER_ERROR")
        found = yield self.gw.find("rtmp-ends")
        self.assertEqual((found["status"], found["info"], found["rtmpStreamStatus"]),
                         ("FAILED", "FAILED_BY_RTMP_WRITER_ERROR", "RTMP_CONNECTION_FAILED"))
        yield self.far_end_passed()
        self.assertEqual(self.far_end_received(), ["INVITE", "ACK", "BYE"])

    @inlineCallbacks
    def test_rtmp_failure_keeps_call_by_default(self) -> Steps:
        """Without rtmp_failure_ends_call the same failure leaves the call ESTABLISHED with rtmpStreamStatus
        RTMP_CONNECTION_FAILED until it is terminated."""
        yield self.gateway(rtmp_reconnect_delays=(0.2, 0.2))
        yield self.sipp("uas_answer.xml")
        yield self.startup("rtmp-stays", rtmpUrl=self.dead_rtmp_url(), rtmpStream="dead")
        yield wait_for(lambda: ("ESTABLISHED", "RTMP_CONNECTION_FAILED") in self.receiver.statuses("rtmp-stays"),
                       what="RTMP_CONNECTION_FAILED")
        # Ending the call would be synchronous with the destination's failure: by now it would show.
        found = yield self.gw.find("rtmp-stays")
        self.assertEqual((found["status"], found["rtmpStreamStatus"]), ("ESTABLISHED", "RTMP_CONNECTION_FAILED"))
        self.assertNotIn("info", found)
        code, _ = yield self.gw.post("call/terminate", {"callId": "rtmp-stays"})
        self.assertEqual(code, 200)
        yield self.until("rtmp-stays", "FINISH")
        self.assertEqual(self.events("rtmp-stays")[-1]["info"], "NORMAL_CALL_CLEARING")
        self.assertNotIn("FAILED", self.statuses("rtmp-stays"))
        yield self.far_end_passed()


class MediaEdgeTests(EdgeTestCase):
    """Calls whose media reaches a private nginx-rtmp."""

    timeout = 120

    def setUp(self) -> Any:
        super().setUp()
        require_ffmpeg()
        self.nginx = NginxRtmp.create(self)
        return deferToThread(self.nginx.start)

    def workdir(self) -> Path:
        path = Path(self.mktemp()).resolve()
        path.mkdir(parents=True)
        return path

    @inlineCallbacks
    def ffmpeg(self, args: list[str]) -> Any:
        out, err, code = yield getProcessOutputAndValue(FFMPEG, args)
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out

    def rtmp_status(self, call_id: str) -> tuple[str | None, str | None]:
        statuses = self.receiver.statuses(call_id)
        return statuses[-1] if statuses else (None, None)

    @inlineCallbacks
    def until_stat(self, condition: Callable[[dict[str, tuple[int, bool]]], bool], what: str,
                   timeout: float = 30) -> Any:
        """Poll nginx's rtmp_stat until ``condition(streams)``; the streams that satisfied it."""
        deadline = reactor.seconds() + timeout
        while True:
            streams = stat_streams((yield deferToThread(self.nginx.stat_xml)))
            if condition(streams):
                return streams
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; nginx has {streams}")
            yield deferLater(reactor, 0.2, lambda: None)

    @inlineCallbacks
    def test_audio_only_call_publishes_aac_without_video(self) -> Steps:
        """A far end answering audio only (video port 0) and sending PCMU: nginx gets a stream with AAC audio and
        no video track, which decodes without errors."""
        yield self.gateway()
        yield self.sipp("uas_answer_audio_only.xml")
        yield self.startup("audio-only", rtmpUrl=self.nginx.rtmp_url(), rtmpStream="audio_only")
        yield self.until("audio-only", "ESTABLISHED")
        media = self.gw.service.backend.calls["audio-only"]
        port = media.ports["audio"][0]
        workdir = self.workdir()
        sender = ChildProcess([FFMPEG, "-loglevel", "error", "-re", "-f", "lavfi", "-i", "sine=f=440:sample_rate=8000",
                               "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1", "-payload_type", "0",
                               "-ssrc", "2222", "-f", "rtp", f"rtp://127.0.0.1:{port}?rtcpport={port + 1}"],
                              cwd=workdir)
        self.addCleanup(sender.stop)
        yield wait_for(lambda: self.rtmp_status("audio-only") == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"),
                       what="RTMP_STREAM_ACTIVE")
        yield self.until_stat(lambda s: s.get("audio_only", (0, False))[0] > 2000, "audio bytes at nginx")
        codecs = stat_codecs((yield deferToThread(self.nginx.stat_xml)), "audio_only")
        self.assertEqual(codecs, (None, "AAC"), "the stream's metadata should announce AAC audio and no video")
        target = workdir / "audio_only.flv"
        yield self.ffmpeg(["-y", "-loglevel", "error", "-rw_timeout", "15000000", "-i",
                           self.nginx.play_url("audio_only"), "-t", "3", "-c", "copy", "-f", "flv", str(target)])
        result = yield deferToThread(analyse, target.read_bytes())
        self.assertEqual(result["streams"], {"audio": "aac"}, result)
        self.assertEqual(result["errors"], [])
        self.assertGreaterEqual(result["audio_frames"], 80, result)  # 3 s of 1024-sample AAC frames at 44.1 kHz
        self.assertEqual(result["video_frames"], 0)
        yield self.gw.post("call/terminate", {"callId": "audio-only"})
        yield self.until("audio-only", "FINISH")
        self.assertNotIn("FAILED", self.statuses("audio-only"))
        yield self.far_end_passed()

    @inlineCallbacks
    def test_push_terminate_stops_one_destination_only(self) -> Steps:
        """With two pushes on a live call, push/terminate of one makes its stream leave nginx while the call's own
        stream and the other push keep publishing (their bytes keep growing)."""
        workdir = self.workdir()
        commands, video_file, audio_file = make_clip(workdir, "h264", "pcmu")
        for command in commands:
            yield self.ffmpeg(command)
        yield self.gateway()
        yield self.sipp("uas_answer.xml")
        yield self.startup("push-main", rtmpUrl=self.nginx.rtmp_url(), rtmpStream="push_main")
        yield self.until("push-main", "ESTABLISHED")
        media = self.gw.service.backend.calls["push-main"]
        ports = {kind: media.ports[kind][0] for kind in ("audio", "video")}
        sender = ChildProcess([FFMPEG, *send_rtp(video_file, audio_file, ports, 112, 0)], cwd=workdir)
        self.addCleanup(sender.stop)
        yield wait_for(lambda: self.rtmp_status("push-main") == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"),
                       what="RTMP_STREAM_ACTIVE")
        pushes = {}
        for name in ("push_a", "push_b"):
            code, push = yield self.gw.post("push/startup", {"streamName": "push-main",
                                                             "rtmpUrl": self.nginx.rtmp_url(), "rtmpStream": name})
            self.assertEqual(code, 200, push)
            pushes[name] = push["mediaSessionId"]
        names = ("push_main", "push_a", "push_b")
        yield self.until_stat(lambda s: all(s.get(n, (0, False))[1] and s[n][0] > 10_000 for n in names),
                              "the call's stream and both pushes publishing")

        code, answer = yield self.gw.post("push/terminate", {"mediaSessionId": pushes["push_a"]})
        self.assertEqual((code, answer), (200, {}))
        after = yield self.until_stat(lambda s: "push_a" not in s, "push_a to leave nginx")
        yield self.until_stat(lambda s: all(s.get(n, (0, False))[1] and s[n][0] > after[n][0] + 10_000
                                            for n in ("push_main", "push_b")),
                              "the call's stream and push_b to keep growing")
        code, _ = yield self.gw.post("push/find", {"mediaSessionId": pushes["push_a"]})
        self.assertEqual(code, 404)
        code, found = yield self.gw.post("push/find", {"mediaSessionId": pushes["push_b"]})
        self.assertEqual((code, found[0]["status"]), (200, "RTMP_STREAM_ACTIVE"))
        self.assertEqual(self.rtmp_status("push-main"), ("ESTABLISHED", "RTMP_STREAM_ACTIVE"))

        yield self.gw.post("call/terminate", {"callId": "push-main"})
        yield self.until("push-main", "FINISH")
        yield self.far_end_passed()
