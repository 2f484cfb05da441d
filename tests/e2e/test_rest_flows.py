"""
SIP flows and RTP behaviour through the REST API: the gateway (in this process, real sockets on 127.0.0.1) places
calls to SIPp far ends; the statuses seen through call/find and through the CallApp events must match the SIP flow.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SkipTest

from tests.e2e.flows import FlowTestCase, lose_first
from tests.e2e.gateway import ChildProcess, free_udp_port, wait_for
from wcsgw.rtp.dtmf import TelephoneEvent, event_to_digit
from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.srtp import AES_CM_128_HMAC_SHA1_80, CryptoAttribute, SrtpContext, generate_crypto

Steps = Generator[Any, Any, None]

class RestFlowTestCase(FlowTestCase):
    gateway_settings = {"media_port_from": 46000, "media_port_to": 46999}
    call_fields = {"callee": "bob", "sipLogin": "alice", "sipPassword": "secret", "visibleName": "Alice"}


class SipFlowTests(RestFlowTestCase):
    @inlineCallbacks
    def test_answer_then_terminate(self) -> Steps:
        """Far end rings and answers; call/terminate sends BYE: NEW PENDING TRYING RING ESTABLISHED FINISH."""
        yield self.gateway()
        yield self.sipp("uas_answer.xml")
        yield self.startup("flow-answer")
        yield self.until("flow-answer", "ESTABLISHED")
        found = yield self.gw.find("flow-answer")
        self.assertEqual((found["status"], found["sipStatus"]), ("ESTABLISHED", 200))
        self.assertIn("m=video", found["sdp"])
        code, _ = yield self.gw.post("call/terminate", {"callId": "flow-answer"})
        self.assertEqual(code, 200)
        yield self.check_final("flow-answer", ["NEW", "PENDING", "TRYING", "RING", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")
        self.assertEqual([e["sipStatus"] for e in self.events("flow-answer")], [None, None, 100, 180, 200, 200])

    @inlineCallbacks
    def test_busy(self) -> Steps:
        """486 from the far end: BUSY with sipStatus 486."""
        yield self.gateway()
        yield self.sipp("uas_busy.xml")
        yield self.startup("flow-busy")
        yield self.check_final("flow-busy", ["NEW", "PENDING", "TRYING", "BUSY"], 486, "BUSY_HERE")

    @inlineCallbacks
    def test_never_answers(self) -> Steps:
        """No answer at all: Timer B (64*T1, T1 = 50 ms) ends the call FAILED 408 FAILED_BY_REQUEST_TIMEOUT."""
        yield self.gateway(sip_t1=0.05)
        yield self.sipp("uas_silent.xml")
        yield self.startup("flow-silent")
        yield self.until("flow-silent", "FAILED")
        self.assertEqual(self.statuses("flow-silent"), ["NEW", "PENDING", "FAILED"])
        found = yield self.gw.find("flow-silent")
        self.assertEqual((found["sipStatus"], found["info"]), (408, "FAILED_BY_REQUEST_TIMEOUT"))

    @inlineCallbacks
    def test_digest_right_and_wrong_password(self) -> Steps:
        """401 challenge: the right credentials get the call established, wrong ones end it FAILED 403."""
        yield self.gateway()
        yield self.sipp("uas_auth.xml", variables={"user": "alice-auth", "password": "s3cret"})
        yield self.startup("flow-auth", sipAuthenticationName="alice-auth", sipPassword="s3cret")
        yield self.until("flow-auth", "ESTABLISHED")
        yield self.gw.post("call/terminate", {"callId": "flow-auth"})
        yield self.check_final("flow-auth", ["NEW", "PENDING", "ESTABLISHED", "FINISH"], 200, "NORMAL_CALL_CLEARING")
        yield self.sipp("uas_auth.xml", variables={"user": "alice", "password": "right"})
        yield self.startup("flow-auth-wrong", sipPassword="wrong")
        yield self.check_final("flow-auth-wrong", ["NEW", "PENDING", "FAILED"], 403, "FAILED_BY_ERROR")

    @inlineCallbacks
    def test_register_required(self) -> Steps:
        """sipRegisterRequired: REGISTER (challenged, then accepted) before the INVITE, removed at the end."""
        yield self.gateway()
        yield self.sipp("uas_register.xml", calls=2, variables={"user": "alice", "password": "secret"})
        yield self.startup("flow-register", sipRegisterRequired="true")
        yield self.until("flow-register", "ESTABLISHED")
        yield self.gw.post("call/terminate", {"callId": "flow-register"})
        yield self.check_final("flow-register", ["NEW", "PENDING", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")
        methods = [line.split()[0] for line in self.far.start_lines("received")]
        self.assertEqual(methods, ["REGISTER", "REGISTER", "INVITE", "ACK", "BYE", "REGISTER"])

    @inlineCallbacks
    def test_far_end_hangs_up(self) -> Steps:
        """The far end's BYE ends the call FINISH 200 NORMAL_CALL_CLEARING."""
        yield self.gateway()
        yield self.sipp("uas_hangup.xml")
        yield self.startup("flow-hangup")
        yield self.check_final("flow-hangup", ["NEW", "PENDING", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")

    @inlineCallbacks
    def test_terminate_while_ringing_cancels(self) -> Steps:
        """call/terminate before the answer sends CANCEL (and ACKs the 487): the call ends FINISH."""
        yield self.gateway()
        yield self.sipp("uas_cancel.xml")
        yield self.startup("flow-cancel")
        yield self.until("flow-cancel", "RING")
        yield self.gw.post("call/terminate", {"callId": "flow-cancel"})
        yield self.check_final("flow-cancel", ["NEW", "PENDING", "TRYING", "RING", "FINISH"], 180,
                               "NORMAL_CALL_CLEARING")
        self.assertEqual([line.split()[0] for line in self.far.start_lines("received")], ["INVITE", "CANCEL", "ACK"])

    @inlineCallbacks
    def test_hold_and_resume(self) -> Steps:
        """A far-end re-INVITE with sendonly puts the call in HOLD; sendrecv resumes it."""
        yield self.gateway()
        yield self.sipp("uas_hold.xml")
        yield self.startup("flow-hold")
        yield wait_for(lambda: self.statuses("flow-hold").count("ESTABLISHED") == 2, what="resume")
        yield self.gw.post("call/terminate", {"callId": "flow-hold"})
        yield self.check_final("flow-hold", ["NEW", "PENDING", "ESTABLISHED", "HOLD", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")

    @inlineCallbacks
    def test_lost_invite_and_lost_200(self) -> Steps:
        """The first INVITE and the first 200 are lost: retransmissions recover; the flow is unchanged."""
        gateway = yield self.gateway(sip_t1=0.1)
        yield self.sipp("uas_answer.xml")
        lost = lose_first(gateway.service.agent._port, self, b"INVITE ", b"SIP/2.0 200")
        yield self.startup("flow-lost")
        yield self.until("flow-lost", "ESTABLISHED")
        yield self.gw.post("call/terminate", {"callId": "flow-lost"})
        yield self.check_final("flow-lost", ["NEW", "PENDING", "TRYING", "RING", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")
        self.assertEqual(len(lost), 2)


class RtpCollector(DatagramProtocol):
    """Stands in for the far end's media port: records the RTP the gateway sends."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        try:
            self.packets.append(RtpPacket.parse(data))
        except ValueError:
            pass


class MediaFlowTests(RestFlowTestCase):
    @inlineCallbacks
    def media_call(self, call_id: str, **fields: Any) -> Any:
        collector = RtpCollector()
        audio = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(audio.stopListening)
        video_port = free_udp_port()
        yield self.sipp("uas_answer_media.xml",
                        variables={"audio_port": str(audio.getHost().port), "video_port": str(video_port)})
        yield self.startup(call_id, **fields)
        yield self.until(call_id, "ESTABLISHED")
        return collector

    @inlineCallbacks
    def test_keepalive_rtp_in_sendrecv(self) -> Steps:
        """hasAudio=true (sendrecv): the far end receives our PCMU silence although we have nothing to send."""
        yield self.gateway()
        collector = yield self.media_call("media-keepalive", hasAudio="true")
        yield wait_for(lambda: len(collector.packets) >= 3, timeout=15, what="three keep-alive packets")
        first = collector.packets[0]
        self.assertEqual((first.payload_type, first.payload), (0, b"\xff" * 160))
        self.assertEqual(len({p.ssrc for p in collector.packets}), 1)
        yield self.gw.post("call/terminate", {"callId": "media-keepalive"})
        yield self.until("media-keepalive", "FINISH")

    @inlineCallbacks
    def test_recvonly_sends_no_keepalive(self) -> Steps:
        """hasAudio=false (recvonly): no RTP goes to the far end, not even RFC 2833 DTMF (400, use INFO)."""
        yield self.gateway()
        collector = yield self.media_call("media-recvonly", hasAudio="false")
        code, error = yield self.gw.post("call/send_dtmf", {"callId": "media-recvonly", "dtmf": "1",
                                                            "type": "RFC2833"})
        self.assertEqual(code, 400)
        self.assertIn("audio is recvonly", error["message"])
        code, _ = yield self.gw.post("call/send_dtmf", {"callId": "media-recvonly", "dtmf": "1", "type": "INFO"})
        self.assertEqual(code, 200)
        yield wait_for(lambda: "Signal=1" in self.far.messages, what="the INFO")  # by then keep-alive would be due
        self.assertEqual(collector.packets, [])
        yield self.gw.post("call/terminate", {"callId": "media-recvonly"})
        yield self.until("media-recvonly", "FINISH")

    @inlineCallbacks
    def test_dtmf_rfc2833_and_info(self) -> Steps:
        """REST DTMF arrives as RFC 4733 events (payload type 101, three end packets) and as SIP INFO."""
        yield self.gateway()
        collector = yield self.media_call("media-dtmf", hasAudio="true")
        code, _ = yield self.gw.post("call/send_dtmf", {"callId": "media-dtmf", "dtmf": "5#", "type": "RFC2833"})
        self.assertEqual(code, 200)

        def ends() -> list[RtpPacket]:
            return [p for p in collector.packets if p.payload_type == 101 and TelephoneEvent.parse(p.payload).end]

        yield wait_for(lambda: len(ends()) >= 6, timeout=15, what="two digits' end packets")
        events = [TelephoneEvent.parse(p.payload) for p in collector.packets if p.payload_type == 101]
        digits = []
        for event in events:
            digit = event_to_digit(event.event)
            if not digits or digits[-1] != digit:
                digits.append(digit)
        self.assertEqual(digits, ["5", "#"])
        self.assertEqual(len([e for e in events if e.end]), 6)
        self.assertTrue(all(e.duration >= 1280 for e in events if e.end))  # 160 ms at 8 kHz
        code, _ = yield self.gw.post("call/send_dtmf", {"callId": "media-dtmf", "dtmf": "7", "type": "INFO"})
        self.assertEqual(code, 200)
        yield wait_for(lambda: "Signal=7" in self.far.messages, what="the SIP INFO")
        self.assertIn("application/dtmf-relay", self.far.messages)
        yield self.gw.post("call/terminate", {"callId": "media-dtmf"})
        yield self.check_final("media-dtmf", ["NEW", "PENDING", "TRYING", "RING", "ESTABLISHED", "FINISH"], 200,
                               "NORMAL_CALL_CLEARING")

    @inlineCallbacks
    def test_far_end_stops_sending_rtp(self) -> Steps:
        """Media that stops for rtp_activity_detecting seconds ends the call (BYE) FAILED_BY_RTP_ACTIVITY."""
        if shutil.which("ffmpeg") is None:
            raise SkipTest("ffmpeg is not installed")
        yield self.gateway(rtp_activity_detecting=(True, 2))
        yield self.sipp("uas_answer.xml")
        yield self.startup("media-inactive", hasAudio="false", hasVideo="false")
        yield self.until("media-inactive", "ESTABLISHED")
        media = self.gw.service.backend.calls["media-inactive"]
        audio_port, video_port = media.ports["audio"][0], media.ports["video"][0]
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        sender = ChildProcess(["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "sine=f=440:d=1.5",
                               "-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=15:d=1.5",
                               "-map", "0:a", "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1", "-f", "rtp",
                               f"rtp://127.0.0.1:{audio_port}?rtcpport={audio_port + 1}",
                               "-map", "1:v", "-c:v", "libx264", "-tune", "zerolatency", "-bf", "0",
                               "-payload_type", "112", "-f", "rtp",
                               f"rtp://127.0.0.1:{video_port}?rtcpport={video_port + 1}"], cwd=workdir)
        self.addCleanup(sender.stop)
        yield wait_for(lambda: media.stream is not None and media.stream.stats.audio_frames_in > 20,
                       what="audio from ffmpeg")
        yield self.until("media-inactive", "FAILED", timeout=30)
        self.assertEqual(self.statuses("media-inactive")[-2:], ["ESTABLISHED", "FAILED"])
        self.assertEqual(self.events("media-inactive")[-1]["info"], "FAILED_BY_RTP_ACTIVITY")
        code = yield self.far.wait_exit(timeout=20)  # SIPp got our BYE
        self.assertEqual(code, 0, self.far.describe())

    @inlineCallbacks
    def test_srtp_call_for_sips_callee(self) -> Steps:
        """A sips: callee gets an SRTP offer (RTP/SAVP, a=crypto for both suites); the far end's SRTP from ffmpeg is
        decrypted and reaches the stream, and our keep-alive RTP leaves encrypted with the key we offered."""
        if shutil.which("ffmpeg") is None:
            raise SkipTest("ffmpeg is not installed")
        yield self.gateway()
        collector = RtpCollector()
        collector.raw = []  # type: ignore[attr-defined]
        collector.datagramReceived = lambda data, addr: collector.raw.append(data)  # type: ignore
        listening = reactor.listenUDP(0, collector, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        theirs = generate_crypto(1, AES_CM_128_HMAC_SHA1_80)
        key = base64.b64encode(theirs.key_salt).decode()
        yield self.sipp("uas_answer_srtp.xml", variables={"audio_port": str(listening.getHost().port), "key": key})
        yield self.startup("media-srtp", callee="sips:bob", hasAudio="true")
        yield self.until("media-srtp", "ESTABLISHED")
        invite = self.far.messages[self.far.messages.index("INVITE sip:bob@"):]
        invite = invite[:invite.index("SIP/2.0 100")]  # the INVITE alone, not SIPp's answers
        self.assertIn("m=audio", invite)
        self.assertRegex(invite, r"m=audio \d+ RTP/SAVP ")
        offered = re.findall(r"a=crypto:(\d+ AES_CM_128_HMAC_SHA1_(?:80|32) inline:\S+)", invite)
        self.assertEqual(len(offered), 4)  # two suites, audio and video
        ours = CryptoAttribute.parse(offered[0])
        # Before the far end sends anything (then symmetric RTP would answer to its source), our keep-alive goes
        # to the SDP address: SRTP with the key we offered.
        yield wait_for(lambda: len(collector.raw) >= 2, what="our keep-alive")  # type: ignore[attr-defined]
        context = SrtpContext(local=theirs, remote=ours)
        packet = RtpPacket.parse(context.unprotect(collector.raw[0]))  # type: ignore[attr-defined]
        self.assertEqual((packet.payload_type, packet.payload), (0, b"\xff" * 160))
        self.assertNotIn(b"\xff" * 16, collector.raw[1])  # type: ignore[attr-defined]  # the payload is encrypted
        media = self.gw.service.backend.calls["media-srtp"]
        audio_port = media.ports["audio"][0]
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        sender = ChildProcess(["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "sine=f=440:d=3",
                               "-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1", "-f", "rtp",
                               "-srtp_out_suite", AES_CM_128_HMAC_SHA1_80, "-srtp_out_params", key,
                               f"srtp://127.0.0.1:{audio_port}?rtcpport={audio_port + 1}"], cwd=workdir)
        self.addCleanup(sender.stop)
        yield wait_for(lambda: media.stream is not None and media.stream.stats.audio_frames_in >= 50,
                       what="decrypted audio frames")
        yield self.gw.post("call/terminate", {"callId": "media-srtp"})
        yield self.until("media-srtp", "FINISH")
