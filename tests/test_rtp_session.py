"""Tests for wcsgw.rtp.session: the sans-I/O media receiver (latching, payload types, frames, RTCP reports,
keyframe requests, keep-alive, inactivity and hold, DTMF, SRTP)."""

from __future__ import annotations

import os
import random
import struct
from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.dtmf import TelephoneEvent
from wcsgw.rtp.h264 import AccessUnit
from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.rtcp import (
    RtcpBye,
    RtcpCompound,
    RtcpFir,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSenderReport,
    RtcpSourceDescription,
    ntp_from_seconds,
    rtcp_report_interval,
)
from wcsgw.rtp.session import (
    AudioFrame,
    ByeReceived,
    DtmfReceived,
    KeyframeNeeded,
    MediaParams,
    MediaStreamSession,
    RtpInactivity,
    SenderReportReceived,
    SessionConfig,
    StreamRestarted,
    Vp8Frame,
)
from wcsgw.rtp.srtp import CryptoAttribute, SrtpContext

PUBLIC = ("203.0.113.5", 4000)
PRIVATE = ("192.168.1.10", 4000)
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def audio_params(**changes: Any) -> MediaParams:
    params = MediaParams(
        kind="audio",
        codec="PCMU",
        payload_type=0,
        clock_rate=8000,
        remote_rtp_addr=PUBLIC[0],
        remote_rtp_port=PUBLIC[1],
        telephone_event_pt=101,
    )
    return replace(params, **changes)


def video_params(**changes: Any) -> MediaParams:
    params = MediaParams(
        kind="video",
        codec="H264",
        payload_type=96,
        clock_rate=90000,
        remote_rtp_addr=PUBLIC[0],
        remote_rtp_port=PUBLIC[1],
    )
    return replace(params, **changes)


def make(params: MediaParams, now: float = 0.0, **config: Any) -> MediaStreamSession:
    config.setdefault("rtp_in_buffer", False)
    config.setdefault("keepalive", False)
    return MediaStreamSession(params, SessionConfig(**config), now, rng=random.Random(7))


def rtp(
    seq: int, ts: int = 0, pt: int = 0, ssrc: int = 0x5555, payload: bytes = b"\xff" * 160, marker: bool = False
) -> bytes:
    return bytes(RtpPacket(pt, marker, seq % 65536, ts % 2**32, ssrc, payload=payload))


def sent(session: MediaStreamSession) -> list[tuple[bytes, tuple[str, int], str]]:
    return session.datagrams_to_send()


def rtcp_sent(session: MediaStreamSession) -> list[tuple[list[object], tuple[str, int], str]]:
    out = []
    for data, addr, channel in session.datagrams_to_send():
        if 192 <= data[1] <= 223:
            out.append((RtcpCompound.parse(data).packets, addr, channel))
    return out


def run_until(session: MediaStreamSession, end: float) -> float:
    """Fire the session's timer until ``end``; return the last time fired."""
    now = 0.0
    while True:
        when = session.get_timer()
        if when is None or when > end:
            return now
        now = when
        session.handle_timer(now)


def load_fixture(name: str) -> list[RtpPacket]:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        data = f.read()
    packets, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("!H", data, pos)
        packets.append(RtpPacket.parse(data[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return packets


class LatchingTests(SynchronousTestCase):
    def test_public_address_exact(self) -> None:
        """With a public SDP address, its own packets are accepted; another IP is dropped and counted."""
        session = make(audio_params())
        session.receive_rtp(rtp(1), ("198.51.100.9", 4000), 0.0)
        self.assertEqual(session.counters.dropped_unexpected_source, 1)
        self.assertEqual(session.events(), [])
        session.receive_rtp(rtp(2), PUBLIC, 0.0)
        self.assertEqual(session.latched_rtp_address, PUBLIC)
        self.assertEqual(len(session.events()), 1)

    def test_public_address_other_port(self) -> None:
        """With a public SDP address, the same IP from another port (NAT) is learned; replies go there."""
        session = make(audio_params(), keepalive=True)
        session.handle_timer(0.0)
        sent(session)
        session.receive_rtp(rtp(1), (PUBLIC[0], 61000), 0.0)
        self.assertEqual(session.latched_rtp_address, (PUBLIC[0], 61000))
        session.receive_rtp(rtp(2), PUBLIC, 0.01)
        self.assertEqual(session.counters.dropped_unexpected_source, 1)
        session.handle_timer(1.0)
        self.assertEqual({addr for _, addr, channel in sent(session) if channel == "rtp"}, {(PUBLIC[0], 61000)})

    def test_private_address_learns_any(self) -> None:
        """With a private SDP address, the first valid source is learned whatever it is, then kept."""
        session = make(audio_params(remote_rtp_addr=PRIVATE[0]))
        session.receive_rtp(rtp(1), ("198.51.100.9", 30000), 0.0)
        self.assertEqual(session.latched_rtp_address, ("198.51.100.9", 30000))
        session.receive_rtp(rtp(2), PRIVATE, 0.0)
        self.assertEqual(session.counters.dropped_unexpected_source, 1)

    def test_unspecified_address(self) -> None:
        """With 0.0.0.0 nothing is sent until the far end is learned; then it is."""
        session = make(audio_params(remote_rtp_addr="0.0.0.0"), keepalive=True)
        session.handle_timer(0.0)
        self.assertEqual(sent(session), [])
        self.assertEqual(session.counters.send_skipped_no_destination, 1)
        session.receive_rtp(rtp(1), ("198.51.100.9", 30000), 0.0)
        session.handle_timer(1.0)
        self.assertEqual([addr for _, addr, _ in sent(session)], [("198.51.100.9", 30000)])

    def test_invalid_packet_does_not_latch(self) -> None:
        """A packet with a payload type not negotiated neither passes nor latches."""
        session = make(audio_params(remote_rtp_addr=PRIVATE[0]))
        session.receive_rtp(rtp(1, pt=8), ("198.51.100.9", 30000), 0.0)
        self.assertIsNone(session.latched_rtp_address)
        self.assertEqual(session.counters.dropped_payload_type, 1)
        session.receive_rtp(rtp(2), PRIVATE, 0.0)
        self.assertEqual(session.latched_rtp_address, PRIVATE)

    def test_malformed(self) -> None:
        """Garbage is dropped and counted as malformed."""
        session = make(audio_params())
        session.receive_rtp(b"\x00" * 20, PUBLIC, 0.0)
        self.assertEqual(session.counters.dropped_malformed, 1)
        self.assertIsNone(session.latched_rtp_address)

    def test_update_params_relatches(self) -> None:
        """A re-INVITE with a new address forgets the learned one."""
        session = make(audio_params())
        session.receive_rtp(rtp(1), PUBLIC, 0.0)
        session.update_params(audio_params(remote_rtp_addr="203.0.113.77"), 1.0)
        self.assertIsNone(session.latched_rtp_address)
        session.receive_rtp(rtp(2), PUBLIC, 1.0)
        self.assertEqual(session.counters.dropped_unexpected_source, 1)


class AudioTests(SynchronousTestCase):
    def test_every_attribute_is_a_slot(self) -> None:
        """The session keeps its attributes in ``__slots__`` (it has more than the 30 that CPython 3.11 keeps
        beside an instance without a dict of its own): after packets in and out of order, the timer, a report
        and keep-alive, its ``__dict__`` is still empty."""
        session = make(audio_params(), rtp_in_buffer=True, keepalive=True)
        session.receive_rtp_many([(rtp(i, ts=160 * i), PUBLIC, None) for i in range(1, 4)], 0.06)
        session.receive_rtp(rtp(5, ts=800), PUBLIC, 0.1)
        session.receive_rtp(rtp(4, ts=640), PUBLIC, 0.1)
        session.handle_timer(10.0)
        session.events()
        session.datagrams_to_send()
        self.assertEqual(vars(session), {})

    def test_frames_with_extended_timestamps(self) -> None:
        """Audio payloads come out as AudioFrame; timestamps keep growing across the 32-bit wrap."""
        session = make(audio_params())
        for i in range(3):
            session.receive_rtp(rtp(i, ts=2**32 - 160 + 160 * i), PUBLIC, i * 0.02)
        self.assertEqual(
            session.events(),
            [
                AudioFrame(2**32 - 160, b"\xff" * 160, 0),
                AudioFrame(2**32, b"\xff" * 160, 0),
                AudioFrame(2**32 + 160, b"\xff" * 160, 0),
            ],
        )

    def test_jitter_buffer_reorders(self) -> None:
        """With rtp_in_buffer, reordered packets come out in order, released by the timer."""
        session = make(audio_params(), rtp_in_buffer=True, jitter_buffer_ms=60)
        session.receive_rtp(rtp(2, ts=320), PUBLIC, 0.0)
        session.receive_rtp(rtp(1, ts=160), PUBLIC, 0.01)
        self.assertEqual(session.events(), [])
        self.assertAlmostEqual(session.get_timer() or 0, 0.06)
        session.handle_timer(0.06)
        self.assertEqual([e.timestamp for e in session.events()], [160, 320])  # type: ignore[union-attr]
        session.receive_rtp(rtp(1, ts=160), PUBLIC, 0.07)
        self.assertEqual(session.counters.dropped_duplicate, 1)

    def test_the_timer_may_lag_unless_the_buffer_waits_or_dtmf_is_paced(self) -> None:
        """``timer_may_lag``: not while the jitter buffer holds packets for a missing one, nor while DTMF is
        queued or paced out; otherwise (RTCP, keep-alive, inactivity) it may."""
        session = make(audio_params(telephone_event_pt=101), rtp_in_buffer=True, jitter_buffer_ms=60)
        self.assertTrue(session.timer_may_lag())
        session.receive_rtp(rtp(2, ts=320), PUBLIC, 0.0)
        session.receive_rtp(rtp(1, ts=160), PUBLIC, 0.01)
        self.assertFalse(session.timer_may_lag())  # held until 60 ms
        session.handle_timer(0.06)
        self.assertTrue(session.timer_may_lag())
        session.send_dtmf("1", 0.07)
        self.assertFalse(session.timer_may_lag())
        now = 0.07
        while session._dtmf_digits or session._dtmf_due:
            now = session.get_timer() or now
            session.handle_timer(now)
        self.assertTrue(session.timer_may_lag())

    def test_late_counted(self) -> None:
        """A packet arriving after the buffer moved past it is dropped as late, also in the statistics."""
        session = make(audio_params())
        session.receive_rtp(rtp(1), PUBLIC, 0.0)
        session.receive_rtp(rtp(3), PUBLIC, 0.0)
        session.receive_rtp(rtp(2), PUBLIC, 0.0)
        self.assertEqual(session.counters.dropped_late, 1)
        self.assertEqual(session.stats[0x5555].late, 1)

    def test_payload_types(self) -> None:
        """Only the codec, telephone-event and comfort noise types pass; CN is counted, not a frame."""
        session = make(audio_params())
        session.receive_rtp(rtp(1, pt=13, payload=b"\x40"), PUBLIC, 0.0)
        session.receive_rtp(rtp(2, pt=18), PUBLIC, 0.0)
        self.assertEqual(session.counters.comfort_noise, 1)
        self.assertEqual(session.counters.dropped_payload_type, 1)
        self.assertEqual(session.events(), [])

    def test_dtmf_received(self) -> None:
        """A digit's three end packets give one DtmfReceived with its duration."""
        session = make(audio_params())
        for seq, end in enumerate([False, False, True, True, True]):
            payload = bytes(TelephoneEvent(11, end, 10, 1280 if end else 160 * (seq + 1)))
            session.receive_rtp(rtp(seq, ts=8000, pt=101, payload=payload, marker=seq == 0), PUBLIC, 0.0)
        self.assertEqual(session.events(), [DtmfReceived("#", 160)])

    def test_ssrc_change(self) -> None:
        """A new SSRC restarts the stream: StreamRestarted, then its frames from its own timestamps."""
        session = make(audio_params())
        session.receive_rtp(rtp(1, ts=1000), PUBLIC, 0.0)
        session.receive_rtp(rtp(500, ts=90000, ssrc=0x6666), PUBLIC, 0.02)
        events = session.events()
        self.assertEqual(events[1:], [StreamRestarted(0x6666), AudioFrame(90000, b"\xff" * 160, 0)])

    def test_not_receiving(self) -> None:
        """In sendonly or inactive direction, received media is dropped and counted."""
        session = make(audio_params(direction="inactive"))
        session.receive_rtp(rtp(1), PUBLIC, 0.0)
        self.assertEqual(session.counters.dropped_not_receiving, 1)
        self.assertEqual(session.events(), [])


class RtcpTests(SynchronousTestCase):
    def test_interval_function(self) -> None:
        """RFC 3550 A.7: 5 s minimum (half at first), randomised by [0.5, 1.5) and compensated by e - 3/2."""
        self.assertAlmostEqual(rtcp_report_interval(2, 1, 400, False, 100, False, 0.5), 5 / 1.21828)
        self.assertAlmostEqual(rtcp_report_interval(2, 1, 400, False, 100, True, 0.0), 2.5 * 0.5 / 1.21828)
        self.assertAlmostEqual(rtcp_report_interval(2, 1, 10, False, 100, False, 0.5), 100 * 2 / 10 / 1.21828)

    def test_receiver_reports(self) -> None:
        """RRs with a report block and SDES CNAME go to the SDP RTCP address, at RFC 3550 intervals."""
        session = make(audio_params(), cname="gw@example")
        for i in range(10):
            if i != 4:
                session.receive_rtp(rtp(i, ts=160 * i), PUBLIC, i * 0.02)
        first = session.get_timer() or 0
        self.assertTrue(1.0 <= first <= 3.1, first)
        session.handle_timer(first)
        [(packets, addr, channel)] = rtcp_sent(session)
        self.assertEqual((addr, channel), ((PUBLIC[0], PUBLIC[1] + 1), "rtcp"))
        report, sdes = packets
        assert isinstance(report, RtcpReceiverReport) and isinstance(sdes, RtcpSourceDescription)
        self.assertEqual(report.ssrc, session.ssrc)
        [block] = report.reports
        self.assertEqual((block.ssrc, block.packets_lost, block.highest_sequence), (0x5555, 1, 9))
        self.assertEqual(block.fraction_lost, 256 // 10)
        self.assertEqual(sdes.chunks[0].cname, b"gw@example")
        second = session.get_timer() or 0
        self.assertTrue(2.0 <= second - first <= 6.2, second - first)
        session.handle_timer(second)
        [(packets, _, _)] = rtcp_sent(session)
        self.assertEqual(packets[0].reports, [])  # type: ignore[attr-defined]  # nothing received since

    def test_explicit_rtcp_address(self) -> None:
        """An a=rtcp address and port are used as given."""
        session = make(audio_params(remote_rtcp_addr="203.0.113.6", remote_rtcp_port=5001))
        session.handle_timer(session.get_timer() or 0)
        self.assertEqual([addr for _, addr, _ in rtcp_sent(session)], [("203.0.113.6", 5001)])

    def test_rtcp_mux(self) -> None:
        """With rtcp-mux, RTCP arriving on the RTP port is handled and reports leave from the RTP socket."""
        session = make(audio_params(rtcp_mux=True))
        session.receive_rtp(rtp(1, ts=8000), PUBLIC, 0.0)
        sr = RtcpSenderReport(0x5555, ntp_from_seconds(1000.0), 8000, 1, 160)
        session.receive_rtp(bytes(sr), PUBLIC, 0.5)
        events = session.events()
        self.assertIsInstance(events[-1], SenderReportReceived)
        session.handle_timer(session.get_timer() or 0)
        self.assertEqual([(addr, channel) for _, addr, channel in rtcp_sent(session)], [(PUBLIC, "rtp")])

    def test_sender_report(self) -> None:
        """An SR gives its NTP/RTP mapping (extended timestamp) and the next RR carries LSR/DLSR."""
        session = make(audio_params())
        session.receive_rtp(rtp(1, ts=2**32 - 160), PUBLIC, 0.0)
        session.receive_rtp(rtp(2, ts=0), PUBLIC, 0.02)
        session.events()
        ntp = ntp_from_seconds(1700000000.0)
        session.receive_rtcp(bytes(RtcpSenderReport(0x5555, ntp, 160, 2, 320)), (PUBLIC[0], 4001), 0.5)
        [event] = session.events()
        assert isinstance(event, SenderReportReceived)
        self.assertEqual((event.report.rtp_timestamp, event.extended_rtp_timestamp), (160, 2**32 + 160))
        self.assertEqual(event.report.arrival, 0.5)
        when = session.get_timer() or 0
        session.handle_timer(when)
        [(packets, _, _)] = rtcp_sent(session)
        block = packets[0].reports[0]  # type: ignore[attr-defined]
        self.assertEqual(block.lsr, (ntp >> 16) & 0xFFFFFFFF)
        self.assertEqual(block.dlsr, int((when - 0.5) * 65536))

    def test_rtcp_checks(self) -> None:
        """RTCP from a foreign address or malformed is dropped and counted; unknown types are counted; BYE is
        reported."""
        session = make(audio_params())
        session.receive_rtcp(bytes(RtcpReceiverReport(1)), ("198.51.100.1", 4001), 0.0)
        self.assertEqual(session.counters.rtcp_dropped_unexpected_source, 1)
        session.receive_rtcp(b"\x80\xc9\x00\x09", (PUBLIC[0], 4001), 0.0)
        self.assertEqual(session.counters.rtcp_malformed, 1)
        app = bytes([0x80, 204, 0, 2]) + b"\x00\x00\x00\x01name"
        session.receive_rtcp(bytes(RtcpReceiverReport(1)) + app + bytes(RtcpBye([1], b"bye")), (PUBLIC[0], 4001), 0.0)
        self.assertEqual(session.counters.rtcp_unknown, 1)
        self.assertEqual(session.events(), [ByeReceived(1, b"bye")])

    def test_close_says_bye(self) -> None:
        """close sends RR + SDES + BYE once, then the session ignores everything."""
        session = make(audio_params())
        session.close(1.0)
        [(packets, _, _)] = rtcp_sent(session)
        self.assertEqual(packets[-1], RtcpBye([session.ssrc]))
        self.assertIsNone(session.get_timer())
        session.receive_rtp(rtp(1), PUBLIC, 2.0)
        self.assertEqual(session.counters.rtp_datagrams, 0)


class KeyframeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.packets = load_fixture("h264_160x120.rtp")

    def feed(self, session: MediaStreamSession, indexes: range | list[int], now: float) -> None:
        for index in indexes:
            session.receive_rtp(bytes(self.packets[index]), PUBLIC, now)

    def feedback(self, session: MediaStreamSession) -> list[object]:
        return [p for packets, _, _ in rtcp_sent(session) for p in packets if isinstance(p, (RtcpPli, RtcpFir))]

    def test_pli_at_start(self) -> None:
        """The first video packet triggers a PLI for its SSRC, even without rtcp-fb negotiated (many devices
        honour it); SIP INFO is kept as the last resort, not asked for on the first attempt."""
        session = make(video_params())
        self.feed(session, [0], 0.0)
        self.assertEqual(self.feedback(session), [RtcpPli(session.ssrc, 1111)])
        self.assertEqual(session.events(), [KeyframeNeeded("start", 0, False)])

    def test_repeated_until_keyframe(self) -> None:
        """Requests repeat at the retry interval until a keyframe comes out, then stop."""
        session = make(video_params(remote_pli=True))
        self.feed(session, range(9, 14), 0.0)  # P frames only: dropped while waiting
        self.assertEqual(len(self.feedback(session)), 1)
        self.assertEqual(session.get_timer(), 1.0)
        session.handle_timer(1.0)
        self.assertEqual(len(self.feedback(session)), 1)
        events = session.events()
        self.assertEqual(
            [e for e in events if isinstance(e, KeyframeNeeded)],
            [KeyframeNeeded("start", 0, False), KeyframeNeeded("start", 1, False)],
        )
        session.handle_timer(2.0)
        self.assertEqual(session.events(), [KeyframeNeeded("start", 2, True)])  # SIP INFO from the third attempt
        self.assertEqual(len(self.feedback(session)), 1)
        self.feed(session, range(14, 26), 2.5)  # second GOP: IDR
        units = [e for e in session.events() if isinstance(e, AccessUnit)]
        self.assertEqual(len(units), 6)
        self.assertTrue(units[0].keyframe)
        self.assertLess(session.get_timer() or 99, 99)
        run_until(session, 3.5)
        self.assertEqual(self.feedback(session), [])

    def test_rate_limited(self) -> None:
        """Requests within 500 ms of the last PLI wait for those 500 ms; without new ones, retries are 1 s apart."""
        session = make(video_params(remote_pli=True))
        self.feed(session, range(0, 26), 0.0)
        self.assertEqual(len(self.feedback(session)), 1)  # start request; the IDR then satisfied it
        run_until(session, 9.9)
        session.datagrams_to_send()
        session.events()
        session.request_keyframe(10.0)
        self.assertEqual(len(self.feedback(session)), 1)
        session.request_keyframe(10.1)
        session.request_keyframe(10.2)
        self.assertEqual(self.feedback(session), [])
        self.assertEqual(session.get_timer(), 10.5)  # new requests since the last send: the minimum interval
        session.handle_timer(10.5)
        self.assertEqual(len(self.feedback(session)), 1)
        self.assertEqual(session.get_timer(), 11.5)  # no new request, still no keyframe: the retry interval
        self.assertEqual([e.reason for e in session.events()], ["requested", "requested"])  # type: ignore[union-attr]

    def test_fir_when_offered(self) -> None:
        """With ccm fir, each request carries a FIR with a new sequence number too."""
        session = make(video_params(remote_fir=True, remote_pli=True))
        self.feed(session, [9], 0.0)
        session.handle_timer(1.0)
        firs = [p for p in self.feedback(session) if isinstance(p, RtcpFir)]
        self.assertEqual(firs, [RtcpFir(session.ssrc, [(1111, 1)]), RtcpFir(session.ssrc, [(1111, 2)])])

    def test_loss_breaks_frame(self) -> None:
        """A lost fragment that breaks a frame asks for a keyframe (reason loss)."""
        session = make(video_params(remote_pli=True))
        self.feed(session, range(0, 14), 0.0)
        session.events()
        self.feedback(session)
        self.feed(session, [14, 15, 17, 18, 19, 20], 5.0)  # 16 lost: the second IDR is broken
        self.assertEqual(
            [e for e in session.events() if isinstance(e, KeyframeNeeded)], [KeyframeNeeded("loss", 0, False)]
        )
        self.assertEqual(len(self.feedback(session)), 1)

    def test_audio_ignores_requests(self) -> None:
        """Keyframe requests on an audio session do nothing."""
        session = make(audio_params())
        session.request_keyframe(0.0)
        self.assertEqual(session.events(), [])


class VideoTests(SynchronousTestCase):
    def test_vp8_frames(self) -> None:
        """VP8 packets come out as whole frames; a malformed payload is counted and asks for a keyframe."""
        session = make(video_params(codec="VP8", payload_type=97))
        packets = load_fixture("vp8_160x120.rtp")
        for packet in packets:
            session.receive_rtp(bytes(packet), PUBLIC, 0.0)
        frames = [e for e in session.events() if isinstance(e, Vp8Frame)]
        self.assertEqual(len(frames), 12)
        self.assertEqual(frames[0].timestamp, packets[0].timestamp)
        self.assertTrue(frames[0].keyframe)
        last = packets[-1]
        session.receive_rtp(
            rtp(last.sequence_number + 1, ts=last.timestamp + 9000, pt=97, ssrc=2222, payload=b"\x90", marker=True),
            PUBLIC,
            0.1,
        )
        self.assertEqual(session.counters.depacketizer_errors, 1)
        self.assertEqual(session.events(), [])  # the start request went out 100 ms ago: rate limited
        session.handle_timer(0.5)
        self.assertEqual(session.events(), [KeyframeNeeded("loss", 0, False)])

    def test_ssrc_change_asks_for_keyframe(self) -> None:
        """A new video SSRC restarts the stream and asks it for a keyframe."""
        session = make(video_params(remote_pli=True))
        packets = load_fixture("h264_160x120.rtp")
        for packet in packets[:14]:
            session.receive_rtp(bytes(packet), PUBLIC, 0.0)
        session.events()
        session.datagrams_to_send()
        other = replace(packets[20], ssrc=4242)
        session.receive_rtp(bytes(other), PUBLIC, 5.0)
        self.assertEqual(session.events(), [StreamRestarted(4242), KeyframeNeeded("loss", 0, False)])
        [pli] = [p for packets_, _, _ in rtcp_sent(session) for p in packets_ if isinstance(p, RtcpPli)]
        self.assertEqual(pli.media_ssrc, 4242)


class KeepaliveTests(SynchronousTestCase):
    def rtp_sent(self, session: MediaStreamSession) -> list[RtpPacket]:
        session.handle_timer(0.0)
        return [RtpPacket.parse(d) for d, _, c in session.datagrams_to_send() if not 192 <= d[1] <= 223]

    def test_pcmu_silence(self) -> None:
        """sendrecv PCMU: 20 ms of 0xFF at once and every interval, timestamps following real time."""
        session = make(audio_params(), keepalive=True, keepalive_interval=2.0, rtcp_min_interval=60)
        session.handle_timer(0.0)
        first = self.rtp_sent(session)
        self.assertEqual([(p.payload_type, p.payload, p.marker) for p in first], [(0, b"\xff" * 160, True)])
        self.assertEqual(session.get_timer(), 2.0)
        session.handle_timer(2.0)
        [second] = self.rtp_sent(session)
        self.assertEqual(second.sequence_number, (first[0].sequence_number + 1) % 65536)
        self.assertEqual((second.timestamp - first[0].timestamp) % 2**32, 16000)
        self.assertEqual(second.ssrc, session.ssrc)
        self.assertEqual(session.counters.keepalive_sent, 2)

    def test_codecs(self) -> None:
        """PCMA sends 0xD5 bytes, Opus its 3-byte silence frame, speex nothing (no silence known)."""
        pcma = make(audio_params(codec="PCMA", payload_type=8), keepalive=True)
        self.assertEqual([p.payload for p in self.rtp_sent(pcma)], [b"\xd5" * 160])
        opus = make(audio_params(codec="opus", payload_type=111, clock_rate=48000, channels=2), keepalive=True)
        self.assertEqual([p.payload for p in self.rtp_sent(opus)], [b"\xf8\xff\xfe"])
        speex = make(audio_params(codec="speex", payload_type=97), keepalive=True)
        self.assertEqual(self.rtp_sent(speex), [])

    def test_only_sendrecv(self) -> None:
        """No keep-alive in recvonly, nor on video."""
        self.assertEqual(self.rtp_sent(make(audio_params(direction="recvonly"), keepalive=True)), [])
        self.assertEqual(self.rtp_sent(make(video_params(), keepalive=True)), [])

    def test_sender_report_after_sending(self) -> None:
        """Having sent keep-alives, the periodic report is an SR with our counts."""
        session = make(audio_params(), keepalive=True, keepalive_interval=1.0)
        run_until(session, 4.0)
        session.datagrams_to_send()
        when = session.get_timer() or 0
        while when < 10:
            session.handle_timer(when)
            reports = [p for packets, _, _ in rtcp_sent(session) for p in packets]
            if reports:
                break
            when = session.get_timer() or 0
        sr = reports[0]
        assert isinstance(sr, RtcpSenderReport)
        self.assertEqual(sr.ssrc, session.ssrc)
        self.assertEqual(sr.octet_count, 160 * sr.packet_count)


class InactivityTests(SynchronousTestCase):
    def test_timeout(self) -> None:
        """No RTP for rtp_activity_timeout seconds gives one RtpInactivity; RTP re-arms it."""
        session = make(audio_params(), rtp_activity_timeout=10.0)
        session.receive_rtp(rtp(1), PUBLIC, 1.0)
        session.events()
        run_until(session, 10.9)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [])
        run_until(session, 30.0)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [RtpInactivity(10.0)])
        session.receive_rtp(rtp(2), PUBLIC, 31.0)
        session.handle_timer(41.0)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [RtpInactivity(10.0)])

    def test_hold_suspends(self) -> None:
        """On hold, silence is not inactivity; after resume the timeout counts from the resume."""
        session = make(audio_params(), rtp_activity_timeout=10.0)
        session.set_hold(True, 2.0)
        run_until(session, 60.0)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [])
        session.set_hold(False, 60.0)
        session.handle_timer(69.0)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [])
        session.handle_timer(70.0)
        self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [RtpInactivity(10.0)])

    def test_disabled(self) -> None:
        """A timeout of None disables the check, and so does a direction where nothing is expected."""
        for session in (make(audio_params(), rtp_activity_timeout=None), make(audio_params(direction="sendonly"))):
            session.handle_timer(1000.0)
            self.assertEqual([e for e in session.events() if isinstance(e, RtpInactivity)], [])


class DtmfSendTests(SynchronousTestCase):
    def test_digit_at_pace(self) -> None:
        """A digit's 11 packets leave 20 ms apart through the timer, one timestamp, consecutive sequence numbers;
        keep-alive waits meanwhile; a second digit follows after the gap."""
        session = make(audio_params(), keepalive=True, keepalive_interval=0.05)
        session.datagrams_to_send()
        session.send_dtmf("1", 0.0)
        session.send_dtmf("2", 0.0)
        packets = []
        now = 0.0
        while now < 0.5:
            for data, _, _ in session.datagrams_to_send():
                if not 192 <= data[1] <= 223:
                    packets.append((now, RtpPacket.parse(data)))
            now = session.get_timer() or 1
            session.handle_timer(now)
        first = [(t, p) for t, p in packets if p.payload_type == 101 and p.payload[0] == 1]
        self.assertEqual(len(first), 11)
        self.assertEqual([round(t, 3) for t, _ in first], [round(0.02 * i, 3) for i in range(11)])
        self.assertEqual({p.timestamp for _, p in first}, {first[0][1].timestamp})
        self.assertTrue(first[0][1].marker)
        seqs = [p.sequence_number for _, p in first]
        self.assertEqual(seqs, [(seqs[0] + i) % 65536 for i in range(11)])
        during = [p for t, p in packets if p.payload_type == 0 and 0 < t < 0.2]
        self.assertEqual(during, [])
        second = [(t, p) for t, p in packets if p.payload_type == 101 and p.payload[0] == 2]
        self.assertAlmostEqual(second[0][0], 0.2 + 0.06)
        self.assertEqual(session.counters.dtmf_packets_sent, 22)

    def test_refused(self) -> None:
        """Without telephone-event, in recvonly, or with a bad digit, send_dtmf raises ValueError."""
        error = self.assertRaises(ValueError, make(audio_params(telephone_event_pt=None)).send_dtmf, "1", 0.0)
        self.assertEqual(str(error), "telephone-event was not negotiated")
        error = self.assertRaises(ValueError, make(audio_params(direction="recvonly")).send_dtmf, "1", 0.0)
        self.assertEqual(str(error), "cannot send DTMF in direction recvonly")
        self.assertRaises(ValueError, make(audio_params()).send_dtmf, "X", 0.0)


class SrtpTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ours = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
        self.theirs = CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", bytes(range(50, 80)))
        self.peer = SrtpContext(self.theirs, self.ours)

    def test_protected_media(self) -> None:
        """SRTP from the far end is unprotected; plain RTP fails and is counted; our keep-alive and RTCP are
        protected with our key."""
        session = make(audio_params(local_crypto=self.ours, remote_crypto=self.theirs), keepalive=True)
        session.handle_timer(0.0)
        [(keepalive, _, _)] = session.datagrams_to_send()
        self.assertEqual(len(RtpPacket.parse(self.peer.unprotect(keepalive)).payload), 160)
        session.receive_rtp(rtp(1), PUBLIC, 0.0)
        self.assertEqual(session.counters.dropped_srtp, 1)
        session.receive_rtp(self.peer.protect(rtp(2)), PUBLIC, 0.0)
        self.assertEqual(len(session.events()), 1)
        session.receive_rtcp(self.peer.protect_rtcp(bytes(RtcpReceiverReport(0x5555))), (PUBLIC[0], 4001), 0.1)
        self.assertEqual(session.counters.rtcp_accepted, 1)
        session.receive_rtcp(bytes(RtcpReceiverReport(0x5555)), (PUBLIC[0], 4001), 0.1)
        self.assertEqual(session.counters.rtcp_dropped_srtp, 1)
        session.handle_timer(session.get_timer() or 0)
        for data, _, _ in session.datagrams_to_send():
            if 192 <= data[1] <= 223:
                RtcpCompound.parse(self.peer.unprotect_rtcp(data))

    def test_validation(self) -> None:
        """Parameters are validated when the session is made."""
        error = self.assertRaises(ValueError, make, audio_params(local_crypto=self.ours))
        self.assertEqual(str(error), "SRTP needs both local_crypto and remote_crypto")
        error = self.assertRaises(ValueError, make, video_params(codec="H263"))
        self.assertEqual(str(error), "video codec 'H263' is not supported (H264, VP8)")
        error = self.assertRaises(ValueError, make, audio_params(remote_rtp_addr="phone.example"))
        self.assertEqual(str(error), "remote_rtp_addr 'phone.example' is not an IP address")
