"""
GET /metrics: each counter moves when it should, on a real call (SIPp far end, ffmpeg RTP through a lossy relay,
nginx-rtmp), scraped before and during the call and after an nginx restart.
"""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e.gateway import CallAppReceiver, ChildProcess, InProcessGateway, wait_for
from tests.e2e.nginx import NginxRtmp
from tests.e2e.sipp import Sipp, require_sipp
from tests.e2e.test_call_to_rtmp import make_clip, offered_ports, send_rtp

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value for every sample; every non-comment line must be a well-formed sample."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match is not None, f"malformed metrics line {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def total(samples: dict[str, float], name: str) -> float:
    """The sum of a metric over all its label sets."""
    return sum(value for key, value in samples.items() if key == name or key.startswith(name + "{"))


class LossyRelay(DatagramProtocol):
    """Forwards datagrams to ``target``, dropping every ``drop_every``-th one."""

    def __init__(self, target: tuple[str, int], drop_every: int = 0) -> None:
        self.target = target
        self.drop_every = drop_every
        self.seen = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.seen += 1
        if self.drop_every and self.seen % self.drop_every == 0:
            return
        self.transport.write(data, self.target)


class MetricsTests(TestCase):
    timeout = 180

    def setUp(self) -> Any:
        require_sipp()
        if shutil.which("ffmpeg") is None:
            raise SkipTest("ffmpeg is not installed")
        self.nginx = NginxRtmp.create(self)
        return deferToThread(self.nginx.start)

    @inlineCallbacks
    def scrape(self) -> Any:
        response = yield self.gw._http.get(f"http://127.0.0.1:{self.gw.rest_port}/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4"))
        text = yield treq.text_content(response)
        return parse_metrics(text)

    @inlineCallbacks
    def test_counters_move(self) -> Any:
        """Calls by status, RTP packets/bytes/lost, frames, keyframe requests, RTMP bytes/reconnects, latency,
        setup time, reactor lag, SIP and CallApp counters all move with a real call; per-call series appear."""
        receiver = CallAppReceiver()
        receiver.start(self)
        self.gw = InProcessGateway(self, receiver, rtmp_reconnect_delays=(0.3, 0.5, 1.0, 1.0, 2.0))
        yield self.gw.start()
        before = yield self.scrape()
        self.assertEqual(before["wcsgw_calls{status=\"ESTABLISHED\"}"], 0)
        self.assertEqual(total(before, "wcsgw_rtp_packets_received_total"), 0)

        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        commands, video_file, audio_file = make_clip(workdir, "h264", "pcmu")
        for command in commands:
            out, err, code = yield getProcessOutputAndValue(shutil.which("ffmpeg"), command)
            self.assertEqual(code, 0, err)
        sipp = Sipp(reactor, "uas_answer.xml", workdir=str(workdir / "sipp"))
        self.addCleanup(sipp.stop)
        yield sipp.start()
        code, _ = yield self.gw.post("call/startup", {
            "callId": "metrics-1", "callee": "far", "sipDomain": "127.0.0.1", "sipPort": sipp.port,
            "sipLogin": "gw", "rtmpUrl": self.nginx.rtmp_url(), "rtmpStream": "metrics_1",
            "hasAudio": "false", "hasVideo": "false"})
        self.assertEqual(code, 200)
        yield wait_for(lambda: receiver.statuses("metrics-1")[-1:] == [("ESTABLISHED", "RTMP_STREAM_ACTIVE")],
                       what="the call publishing")
        ports = offered_ports(sipp.messages)
        relays = {}
        for kind, drop_every in (("audio", 40), ("video", 0)):
            relay = LossyRelay(("127.0.0.1", ports[kind]), drop_every)
            relays[kind] = reactor.listenUDP(0, relay, interface="127.0.0.1")
            self.addCleanup(relays[kind].stopListening)
        sender = ChildProcess(["ffmpeg", *send_rtp(video_file, audio_file,
                                                   {k: p.getHost().port for k, p in relays.items()}, 112, 0,
                                                   rtcp_ports={k: ports[k] + 1 for k in ports})], cwd=workdir)
        self.addCleanup(sender.stop)

        @inlineCallbacks
        def media_flowing() -> Any:
            samples = yield self.scrape()
            return samples

        during: dict[str, float] = {}
        for _ in range(200):
            during = yield media_flowing()
            if (total(during, "wcsgw_rtp_packets_lost_total") > 0 and total(during, "wcsgw_call_setup_seconds_count")
                    and during.get('wcsgw_rtp_to_rtmp_latency_seconds_count{media="audio"}', 0) > 20
                    and during.get('wcsgw_rtp_to_rtmp_latency_seconds_count{media="video"}', 0) > 20):
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(during['wcsgw_calls{status="ESTABLISHED"}'], 1)
        self.assertGreater(total(during, "wcsgw_rtp_packets_received_total"), 50)
        self.assertGreater(total(during, "wcsgw_rtp_bytes_received_total"), 5000)
        self.assertGreater(total(during, "wcsgw_rtp_packets_lost_total"), 0)
        self.assertGreater(total(during, "wcsgw_frames_assembled_total"), 20)
        self.assertGreater(total(during, "wcsgw_keyframe_requests_total"), 0)
        self.assertGreater(total(during, "wcsgw_rtmp_bytes_sent_total"), 2000)
        self.assertGreaterEqual(during["wcsgw_media_datagrams_total"], total(during, "wcsgw_rtp_packets_received_total"))
        self.assertGreater(during["wcsgw_media_drains_total"], 0)
        self.assertIn("wcsgw_transcode_gate_waits_total", during)
        self.assertEqual(during["wcsgw_transcode_gate_skips_total"], 0)  # one call: never behind
        # the AAC came back with the media reads (transcode_results_with_reads), not in turns of its own
        self.assertGreater(during["wcsgw_transcode_results_waited_total"],
                           before.get("wcsgw_transcode_results_waited_total", 0))
        for phase in ("read", "deliver", "send"):
            key = f'wcsgw_media_cpu_seconds_total{{phase="{phase}"}}'
            self.assertGreater(during[key], before.get(key, 0.0))
        self.assertGreater(during["wcsgw_rtmp_sends_total"], before.get("wcsgw_rtmp_sends_total", 0))
        self.assertEqual(during['wcsgw_media_socket_errors_total{kind="protocol"}'], 0)
        self.assertGreater(during['wcsgw_rtp_to_rtmp_latency_seconds_count{media="audio"}'], 20)
        self.assertGreater(during['wcsgw_rtp_to_rtmp_latency_seconds_count{media="video"}'], 20)
        self.assertEqual(during["wcsgw_call_setup_seconds_count"], 1)
        self.assertGreater(during["wcsgw_reactor_lag_seconds_count"], before["wcsgw_reactor_lag_seconds_count"])
        self.assertGreater(total(during, "wcsgw_sip_received_total"), 0)
        self.assertGreater(during['wcsgw_callapp_events_total{outcome="delivered"}'], 2)
        self.assertIn('wcsgw_call_rtp_packets{call_id="metrics-1",kind="audio"}', during)
        self.assertGreater(during['wcsgw_call_rtp_lost{call_id="metrics-1",kind="audio"}'], 0)
        self.assertIn('wcsgw_call_rtp_jitter_seconds{call_id="metrics-1",kind="video"}', during)
        self.assertTrue(any(k.startswith("wcsgw_worker_queue_depth{call_id=\"metrics-1\"") for k in during))
        self.assertTrue(any(k.startswith("wcsgw_call_rtmp_bytes{call_id=\"metrics-1\"") for k in during))
        self.assertGreater(during['wcsgw_media_ports_in_use'], 0)

        # A malformed datagram to the SIP port is counted; an nginx restart makes the destination reconnect.
        sip_port = self.gw.service.agent.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"\x00garbage", ("127.0.0.1", sip_port))
        yield deferToThread(self.nginx.restart)
        yield wait_for(lambda: ("ESTABLISHED", "RTMP_CONNECTION_LOST") in receiver.statuses("metrics-1"),
                       what="the connection loss")
        yield wait_for(lambda: receiver.statuses("metrics-1")[-1] == ("ESTABLISHED", "RTMP_STREAM_ACTIVE"),
                       what="the reconnection")
        after = yield self.scrape()
        self.assertGreater(total(after, "wcsgw_rtmp_reconnects_total"), 0)
        self.assertGreater(total(after, "wcsgw_sip_malformed_total"), total(during, "wcsgw_sip_malformed_total"))
        self.assertGreater(after["wcsgw_rtmp_bytes_sent_total"], during["wcsgw_rtmp_bytes_sent_total"])

        code, _ = yield self.gw.post("call/terminate", {"callId": "metrics-1"})
        yield wait_for(lambda: receiver.statuses("metrics-1")[-1][0] == "FINISH", what="FINISH")
        ended = yield self.scrape()
        self.assertEqual(ended['wcsgw_calls{status="FINISH"}'], 1)
        self.assertGreaterEqual(ended["wcsgw_rtp_packets_received_total"], after["wcsgw_rtp_packets_received_total"])
        self.assertGreaterEqual(ended["wcsgw_rtmp_bytes_sent_total"], after["wcsgw_rtmp_bytes_sent_total"])
        self.assertNotIn('wcsgw_call_rtp_packets{call_id="metrics-1",kind="audio"}', ended)
