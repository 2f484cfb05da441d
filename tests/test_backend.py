"""
The pure helpers of ``wcsgw.backend``: which codecs a call offers, how a negotiated m-line becomes the RTP
session's ``MediaParams``, and which local address a call announces; and how a call hands its sessions' events
to its stream.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.backend import CallMedia, media_params, offered_codecs, route_address
from wcsgw.rtp.params import AudioFrame, RtpInactivity
from wcsgw.config import KNOWN_CODECS
from wcsgw.rtp.params import MediaParams
from wcsgw.sip.sdp import DEFAULT_AUDIO_CODECS, DEFAULT_VIDEO_CODECS, NegotiatedMedia, negotiate

#: Our offer, as ``build_offer`` writes it for a call with hasAudio and hasVideo.
OFFER = "\r\n".join([
    "v=0",
    "o=wcsgw 1 0 IN IP4 127.0.0.1",
    "s=wcsgw",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 31000 RTP/AVP 8 0 111 101",
    "c=IN IP4 127.0.0.1",
    "a=rtpmap:8 pcma/8000",
    "a=rtpmap:0 pcmu/8000",
    "a=rtpmap:111 opus/48000/2",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=rtcp:31001 IN IP4 127.0.0.1",
    "a=sendrecv",
    "m=video 31002 RTP/AVP 112 120",
    "c=IN IP4 127.0.0.1",
    "a=rtpmap:112 H264/90000",
    "a=fmtp:112 packetization-mode=1; profile-level-id=42e01f",
    "a=rtpmap:120 VP8/90000",
    "a=rtcp-fb:* ccm fir",
    "a=rtcp-fb:* nack",
    "a=rtcp-fb:* nack pli",
    "a=rtcp:31003 IN IP4 127.0.0.1",
    "a=sendrecv",
    "",
])


def answer(audio: list[str], video: list[str], *, connection: str = "192.0.2.10") -> str:
    """The far end's answer: session lines, then the audio and the video m-line with their attribute lines."""
    return "\r\n".join([
        "v=0",
        "o=far 7 7 IN IP4 192.0.2.10",
        "s=-",
        f"c=IN IP4 {connection}",
        "t=0 0",
        *audio,
        *video,
        "",
    ])


AUDIO_PCMU = ["m=audio 40000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
              "a=fmtp:101 0-15"]
VIDEO_H264 = ["m=video 40002 RTP/AVP 112", "a=rtpmap:112 H264/90000",
              "a=fmtp:112 packetization-mode=1;profile-level-id=42e01f"]


def negotiated(kind: str, far_answer: str) -> NegotiatedMedia:
    media = negotiate(OFFER, far_answer).get(kind)
    assert media is not None, f"no usable {kind} m-line"
    return media


class OfferedCodecsTests(SynchronousTestCase):
    def test_default_setting_offers_every_codec_in_default_order(self) -> None:
        """The default ``codecs`` setting offers every default audio and video codec, in their order."""
        audio, video = offered_codecs(KNOWN_CODECS)
        self.assertEqual(audio, DEFAULT_AUDIO_CODECS)
        self.assertEqual(video, DEFAULT_VIDEO_CODECS)

    def test_follows_the_setting_order(self) -> None:
        """The offer lists codecs in the setting's order, not the built-in one: ulaw before alaw, vp8 first."""
        audio, video = offered_codecs(("ulaw", "telephone-event", "alaw", "vp8", "h264"))
        self.assertEqual([(c.name, c.payload_type) for c in audio],
                         [("pcmu", 0), ("telephone-event", 101), ("pcma", 8)])
        self.assertEqual([(c.name, c.payload_type) for c in video], [("VP8", 120), ("H264", 112), ("H264", 113)])

    def test_subset(self) -> None:
        """Codecs not named in the setting are not offered; speex16 and speex are the 16 and 8 kHz Speex."""
        audio, video = offered_codecs(("speex", "opus", "speex16"))
        self.assertEqual([(c.name, c.clock_rate, c.payload_type) for c in audio],
                         [("speex", 8000, 97), ("opus", 48000, 111), ("speex", 16000, 98)])
        self.assertEqual(video, ())
        audio, video = offered_codecs(("h264",))
        self.assertEqual(audio, ())
        self.assertEqual([(c.payload_type, c.packetization_mode) for c in video], [(112, 1), (113, 0)])


class MediaParamsTests(SynchronousTestCase):
    def test_audio_sendrecv(self) -> None:
        """A sendrecv PCMU answer: the far end's codec, payload types, addresses and ports; we send and receive."""
        media = negotiated("audio", answer(AUDIO_PCMU, VIDEO_H264))
        params = media_params(media, True)
        self.assertEqual(params, MediaParams(
            kind="audio", codec="PCMU", payload_type=0, clock_rate=8000, channels=1, fmtp={},
            telephone_event_pt=101, telephone_event_clock_rate=8000,
            remote_rtp_addr="192.0.2.10", remote_rtp_port=40000,
            remote_rtcp_addr="192.0.2.10", remote_rtcp_port=40001, rtcp_mux=False, direction="sendrecv",
            remote_fir=False, remote_pli=False, remote_nack=False))
        params.validate()

    def test_our_direction(self) -> None:
        """Our direction: we send only when hasAudio/hasVideo and the far end receives; we receive when it sends."""
        expected = {
            # (far end's attribute, we_send): our direction
            ("sendrecv", True): "sendrecv",
            ("sendrecv", False): "recvonly",
            ("recvonly", True): "sendonly",
            ("recvonly", False): "inactive",
            ("sendonly", True): "recvonly",
            ("sendonly", False): "recvonly",
            ("inactive", True): "inactive",
            ("inactive", False): "inactive",
        }
        seen = {}
        for far, we_send in expected:
            media = negotiated("audio", answer([*AUDIO_PCMU, f"a={far}"], VIDEO_H264))
            seen[(far, we_send)] = media_params(media, we_send).direction
        self.assertEqual(seen, expected)

    def test_session_level_direction(self) -> None:
        """A direction at session level applies to the m-lines without their own."""
        far = answer(AUDIO_PCMU, VIDEO_H264).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
        self.assertEqual(media_params(negotiated("video", far), True).direction, "recvonly")

    def test_rtcp_feedback_flags(self) -> None:
        """rtcp-fb of the chosen codec: ``ccm fir`` -> remote_fir, ``nack pli`` -> remote_pli, ``nack`` ->
        remote_nack, each on its own."""
        cases = {
            ("a=rtcp-fb:* ccm fir",): (True, False, False),
            ("a=rtcp-fb:112 nack pli",): (False, True, False),
            ("a=rtcp-fb:112 nack",): (False, False, True),
            ("a=rtcp-fb:* ccm fir", "a=rtcp-fb:112 nack", "a=rtcp-fb:112 nack pli"): (True, True, True),
            ("a=rtcp-fb:120 nack pli",): (False, False, False),  # another payload type's feedback
            (): (False, False, False),
        }
        seen = {}
        for lines in cases:
            params = media_params(negotiated("video", answer(AUDIO_PCMU, [*VIDEO_H264, *lines])), True)
            seen[lines] = (params.remote_fir, params.remote_pli, params.remote_nack)
        self.assertEqual(seen, cases)

    def test_video_codec(self) -> None:
        """A video answer gives the far end's H.264 payload type, the 90 kHz clock and the fmtp parameters."""
        params = media_params(negotiated("video", answer(AUDIO_PCMU, VIDEO_H264)), False)
        self.assertEqual((params.kind, params.codec, params.payload_type, params.clock_rate, params.direction),
                         ("video", "H264", 112, 90000, "recvonly"))
        self.assertEqual(dict(params.fmtp), {"packetization-mode": "1", "profile-level-id": "42e01f"})
        self.assertIsNone(params.telephone_event_pt)

    def test_telephone_event_payload_type(self) -> None:
        """telephone-event takes the far end's payload type (and clock rate); none negotiated gives None."""
        far = ["m=audio 40000 RTP/AVP 8 96", "a=rtpmap:8 PCMA/8000", "a=rtpmap:96 telephone-event/8000"]
        params = media_params(negotiated("audio", answer(far, VIDEO_H264)), True)
        self.assertEqual((params.codec, params.payload_type, params.telephone_event_pt,
                          params.telephone_event_clock_rate), ("PCMA", 8, 96, 8000))
        params = media_params(negotiated("audio", answer(["m=audio 40000 RTP/AVP 0"], VIDEO_H264)), True)
        self.assertEqual((params.codec, params.telephone_event_pt), ("PCMU", None))

    def test_opus_channels(self) -> None:
        """Opus keeps its 48 kHz clock and two channels."""
        far = ["m=audio 40000 RTP/AVP 109", "a=rtpmap:109 opus/48000/2"]
        params = media_params(negotiated("audio", answer(far, VIDEO_H264)), True)
        self.assertEqual((params.codec, params.payload_type, params.clock_rate, params.channels),
                         ("opus", 109, 48000, 2))

    def test_rtcp_attribute_and_mux(self) -> None:
        """``a=rtcp`` moves the far end's RTCP port and address; ``a=rtcp-mux`` is carried over."""
        far = [*AUDIO_PCMU, "a=rtcp:40009 IN IP4 192.0.2.99", "a=rtcp-mux"]
        params = media_params(negotiated("audio", answer(far, VIDEO_H264)), True)
        self.assertEqual((params.remote_rtcp_addr, params.remote_rtcp_port, params.rtcp_mux),
                         ("192.0.2.99", 40009, True))

    def test_host_name_connection_latches(self) -> None:
        """A host name in ``c=`` becomes 0.0.0.0 (RTP and RTCP): the session learns the address from packets."""
        far = answer(AUDIO_PCMU, VIDEO_H264, connection="media.example.com")
        for kind in ("audio", "video"):
            params = media_params(negotiated(kind, far), True)
            self.assertEqual((params.remote_rtp_addr, params.remote_rtcp_addr), ("0.0.0.0", "0.0.0.0"))
            self.assertIsNone(params.remote_rtp)
            params.validate()

    def test_media_level_connection_wins(self) -> None:
        """A media-level ``c=`` overrides the session's, and a host name there also latches."""
        far = answer([*AUDIO_PCMU[:1], "c=IN IP4 198.51.100.7", *AUDIO_PCMU[1:]],
                     [*VIDEO_H264[:1], "c=IN IP4 cam.example.net", *VIDEO_H264[1:]])
        self.assertEqual(media_params(negotiated("audio", far), True).remote_rtp, ("198.51.100.7", 40000))
        self.assertEqual(media_params(negotiated("video", far), True).remote_rtp_addr, "0.0.0.0")


class RouteAddressTests(SynchronousTestCase):
    def test_loopback(self) -> None:
        """Towards 127.0.0.1 the kernel routes from 127.0.0.1 (a connected UDP socket, nothing is sent)."""
        self.assertEqual(route_address("127.0.0.1", "192.0.2.55"), "127.0.0.1")

    def test_host_name_gives_fallback(self) -> None:
        """A host name is not resolved: the fallback is used."""
        self.assertEqual(route_address("sip.example.com", "192.0.2.55"), "192.0.2.55")
        self.assertEqual(route_address("", "192.0.2.55"), "192.0.2.55")


class CryptoChoiceTests(SynchronousTestCase):
    def test_answer_picks_our_key_by_suite(self) -> None:
        """The far end's crypto line selects our key of the same suite; SRTP keys pair (ours, theirs)."""
        from wcsgw.backend import choose_crypto, sip_callee, wants_srtp
        from wcsgw.config import build_settings
        from wcsgw.rtp.srtp import AES_CM_128_HMAC_SHA1_32, AES_CM_128_HMAC_SHA1_80, CryptoAttribute, generate_crypto
        from wcsgw.sip.sdp import Crypto

        ours = (generate_crypto(1, AES_CM_128_HMAC_SHA1_80), generate_crypto(2, AES_CM_128_HMAC_SHA1_32))
        theirs = generate_crypto(7, AES_CM_128_HMAC_SHA1_32)
        local, remote = choose_crypto(ours, (Crypto.parse(str(theirs)),))
        self.assertEqual((local, remote), (ours[1], CryptoAttribute.parse(str(theirs))))
        with self.assertRaises(ValueError):
            choose_crypto(ours[:1], (Crypto.parse(str(theirs)),))
        self.assertEqual((sip_callee("sips:bob"), sip_callee("bob")), ("bob", "bob"))
        self.assertEqual((wants_srtp(build_settings(), "sips:bob"), wants_srtp(build_settings(), "bob"),
                          wants_srtp(build_settings({"srtp": True}), "bob")), (True, False, True))


class RecordingStream:
    """What ``CallMedia`` hands a stream: each ``media_events`` delivery and each ``media_event``."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, list[Any], float]] = []
        self.single: list[tuple[str, Any]] = []

    def media_events(self, kind: str, events: list[Any], now: float) -> None:
        self.deliveries.append((kind, list(events), now))

    def media_event(self, kind: str, event: Any, now: float) -> None:
        self.single.append((kind, event))

    def audio_wanted_at(self) -> float | None:
        return 12.75


class CallMediaEventsTests(SynchronousTestCase):
    def make(self) -> tuple[CallMedia, RecordingStream]:
        clock = Clock()
        clock.advance(12.5)
        media = CallMedia(SimpleNamespace(reactor=clock), SimpleNamespace(call_id="c1"))  # type: ignore[arg-type]
        stream = media.stream = RecordingStream()  # type: ignore[assignment]
        return media, stream

    def test_a_delivery_of_frames_goes_to_the_stream_in_one_call(self) -> None:
        """The frames of one delivery reach the stream together, with the reactor's time, and mark the kind
        active again."""
        media, stream = self.make()
        media._inactive.add("audio")
        frames = [AudioFrame(160 * n, b"\x7f" * 160, 0, 12.0) for n in range(3)]
        media._events("audio", frames)
        self.assertEqual(stream.deliveries, [("audio", frames, 12.5)])
        self.assertEqual(stream.single, [])
        self.assertEqual(media._inactive, set())

    def test_after_a_delivery_of_audio_the_socket_is_told_when_it_is_wanted(self) -> None:
        """After the stream takes a delivery of audio frames, the audio socket (one that holds its reads) gets the
        stream's ``audio_wanted_at`` as its ``wanted_at``; video leaves it alone."""
        media, stream = self.make()
        socket = media._audio_socket = SimpleNamespace(hold=0.04, wanted_at=None)
        media._events("video", [AudioFrame(0, b"\x7f" * 160, 0, 12.0)])
        self.assertIsNone(socket.wanted_at)
        media._events("audio", [AudioFrame(0, b"\x7f" * 160, 0, 12.0)])
        self.assertEqual(socket.wanted_at, 12.75)

    def test_a_delivery_with_other_events_goes_one_by_one(self) -> None:
        """A delivery that holds anything but frames is handled event by event, in order, as ``_event`` does:
        the inactivity in the middle marks the kind inactive, the frame after it active again."""
        media, stream = self.make()
        first, last = AudioFrame(0, b"\x7f" * 160, 0, 12.0), AudioFrame(160, b"\x7f" * 160, 0, 12.0)
        media._events("audio", [first, RtpInactivity(idle=5.0), last])
        self.assertEqual(stream.deliveries, [])
        self.assertEqual(stream.single, [("audio", first), ("audio", last)])
        self.assertEqual(media._inactive, set())
        media._events("audio", [last, RtpInactivity(idle=5.0)])
        self.assertEqual(media._inactive, {"audio"})

    def test_an_ended_call_takes_no_events(self) -> None:
        media, stream = self.make()
        media._ended = True
        media._events("audio", [AudioFrame(0, b"\x7f" * 160, 0, 12.0)])
        self.assertEqual((stream.deliveries, stream.single), ([], []))
