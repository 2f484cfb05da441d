"""Tests for wcsgw.sip.sdp: offer shape, parsing, answer negotiation, answers to re-offers."""

from __future__ import annotations

import base64
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.sip.sdp import (
    DEFAULT_AUDIO_CODECS,
    Codec,
    Crypto,
    Direction,
    MediaKind,
    MediaOffer,
    SessionDescription,
    SessionOffer,
    build_answer,
    build_offer,
    is_hold,
    negotiate,
    select_codecs,
)

# The "sendrecv" example of the spec, section "SDP parameters recvonly and sendrecv".
SPEC_SENDRECV = """v=0
o=Flashphoner 0 1437391553771 IN IP4 sip.flashphoner.com
s=Flashphoner/1.0
c=IN IP4 sip.flashphoner.com
t=0 0
m=audio 31022 RTP/AVP 8 0
c=IN IP4 46.101.139.106
a=rtpmap:8 pcma/8000
a=rtpmap:0 pcmu/8000
a=ptime:20
a=rtcp:31023 IN IP4 sip.flashphoner.com
a=sendrecv
a=ssrc:1478013757 cname:rtp/audio/Xq2tlLcX89tTjaji
m=video 31024 RTP/AVP 112 113
c=IN IP4 sip.flashphoner.com
a=rtpmap:112 H264/90000
a=fmtp:112 packetization-mode=1; profile-level-id=420020
a=rtpmap:113 H264/90000
a=fmtp:113 packetization-mode=0; profile-level-id=420020
a=rtcp-fb:* ccm fir
a=rtcp-fb:* nack
a=rtcp-fb:* nack pli
a=rtcp:31025 IN IP4 sip.flashphoner.com
a=sendrecv
a=ssrc:979076678 cname:rtp/video/Xq2tlLcX89tTjaji
"""

SPEC_VIDEO_CODECS = (
    Codec(112, "H264", 90000, fmtp={"packetization-mode": "1", "profile-level-id": "420020"}),
    Codec(113, "H264", 90000, fmtp={"packetization-mode": "0", "profile-level-id": "420020"}),
)


def spec_offer(send: bool) -> SessionOffer:
    return SessionOffer(
        address="sip.flashphoner.com",
        session_id=0,
        session_version=1437391553771,
        origin_username="Flashphoner",
        session_name="Flashphoner/1.0",
        media=(
            MediaOffer(
                MediaKind.AUDIO,
                31022,
                send=send,
                codecs=select_codecs(DEFAULT_AUDIO_CODECS, ["pcma", "pcmu"]),
                address="46.101.139.106",
                rtcp_address="sip.flashphoner.com",
                ssrc=1478013757,
                cname="rtp/audio/Xq2tlLcX89tTjaji",
            ),
            MediaOffer(
                MediaKind.VIDEO,
                31024,
                send=send,
                codecs=SPEC_VIDEO_CODECS,
                ssrc=979076678,
                cname="rtp/video/Xq2tlLcX89tTjaji",
            ),
        ),
    )


def default_offer(send: bool = False, **audio: Any) -> str:
    media = (MediaOffer(MediaKind.AUDIO, 4000, send, **audio), MediaOffer(MediaKind.VIDEO, 4002, send))
    return build_offer(SessionOffer("192.0.2.1", media))


ANSWER = """v=0
o=- 42 1 IN IP4 192.0.2.2
s=-
c=IN IP4 192.0.2.2
t=0 0
m=audio 5000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=sendrecv
m=video 5002 RTP/AVP 112
c=IN IP4 192.0.2.3
a=rtpmap:112 H264/90000
a=fmtp:112 profile-level-id=42801f;packetization-mode=1;sprop-parameter-sets=Z0IAH5WoFAFuQA==,aM48gA==
a=rtcp-fb:* nack
a=rtcp-fb:112 ccm fir
a=rtcp:6003 IN IP4 192.0.2.4
a=recvonly
"""


class OfferTests(SynchronousTestCase):
    def test_sendrecv_matches_the_spec_example(self) -> None:
        """With the spec's codecs and addresses, our sendrecv offer is the spec's example line for line."""
        self.assertEqual(build_offer(spec_offer(True)), SPEC_SENDRECV.replace("\n", "\r\n"))

    def test_recvonly_matches_the_spec_example(self) -> None:
        """hasAudio/hasVideo false gives the spec's recvonly example."""
        expected = SPEC_SENDRECV.replace("a=sendrecv", "a=recvonly").replace("\n", "\r\n")
        self.assertEqual(build_offer(spec_offer(False)), expected)

    def test_default_codecs(self) -> None:
        """By default audio offers PCMA, PCMU, opus/48000/2, speex 16k/8k, telephone-event; video H264 (modes 1
        and 0, profile-level-id 42e01f) and VP8 with nack, nack pli and ccm fir feedback."""
        sdp = default_offer()
        self.assertIn("m=audio 4000 RTP/AVP 8 0 111 98 97 101\r\n", sdp)
        for line in (
            "a=rtpmap:111 opus/48000/2",
            "a=rtpmap:98 speex/16000",
            "a=rtpmap:97 speex/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
            "m=video 4002 RTP/AVP 112 113 120",
            "a=fmtp:112 packetization-mode=1; profile-level-id=42e01f",
            "a=fmtp:113 packetization-mode=0; profile-level-id=42e01f",
            "a=rtpmap:120 VP8/90000",
            "a=rtcp-fb:* nack",
            "a=rtcp-fb:* nack pli",
            "a=rtcp-fb:* ccm fir",
            "a=rtcp:4001 IN IP4 192.0.2.1",
            "a=rtcp:4003 IN IP4 192.0.2.1",
        ):
            self.assertIn(line + "\r\n", sdp)
        self.assertEqual(sdp.count("a=recvonly"), 2)

    def test_codec_order_is_configurable(self) -> None:
        """select_codecs picks and orders codecs by name (and rate)."""
        codecs = select_codecs(DEFAULT_AUDIO_CODECS, ["opus", "speex/8000", "PCMU"])
        self.assertEqual([(c.name, c.clock_rate) for c in codecs], [("opus", 48000), ("speex", 8000), ("pcmu", 8000)])
        with self.assertRaises(ValueError) as caught:
            select_codecs(DEFAULT_AUDIO_CODECS, ["g729"])
        self.assertEqual(str(caught.exception), "unknown codec 'g729'")

    def test_crypto_makes_savp(self) -> None:
        """a=crypto lines given as input switch the profile to RTP/SAVP."""
        key = base64.b64encode(bytes(range(30))).decode()
        sdp = default_offer(crypto=(Crypto(1, "AES_CM_128_HMAC_SHA1_80", f"inline:{key}"),))
        self.assertIn("m=audio 4000 RTP/SAVP ", sdp)
        self.assertIn(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n", sdp)
        self.assertIn("m=video 4002 RTP/AVP ", sdp)

    def test_empty_offer_is_refused(self) -> None:
        """An offer without m-line is a programming error."""
        self.assertRaises(ValueError, build_offer, SessionOffer("192.0.2.1", ()))


class ParseTests(SynchronousTestCase):
    def test_tolerates_real_world_sdp(self) -> None:
        """LF line ends, blank lines, no s= or t=, unknown lines and attributes, upper case names are accepted."""
        sdp = SessionDescription.parse(
            "v=0\no=user 1 2 IN IP4 10.0.0.1\n\nc=IN IP4 10.0.0.1/127\nx=unknown\n"
            "m=audio 7078 RTP/AVP 8 96 18\na=RTPMAP:96 OPUS/48000\nb=AS:64\na=x-whatever\n"
        )
        self.assertEqual(sdp.connection, "10.0.0.1")
        [media] = sdp.media
        self.assertEqual([(c.payload_type, c.name) for c in media.codecs()], [(8, "PCMA"), (96, "OPUS"), (18, "G729")])
        self.assertEqual(media.bandwidths, ["AS:64"])

    def test_errors_are_precise(self) -> None:
        """Broken SDP raises ValueError naming the problem."""
        cases = {
            "o=x 1 1 IN IP4 h\r\n": "SDP must start with v=0",
            "v=0\r\nbad line\r\n": "invalid SDP line 'bad line'",
            "v=0\r\ns=x\r\n": "SDP has no o= line",
            "v=0\r\no=x 1 one IN IP4 h\r\n": "invalid o= line 'x 1 one IN IP4 h'",
            "v=0\r\no=x 1 1 IN IP4 h\r\nc=IN IP9 h\r\n": "invalid c= line 'IN IP9 h'",
            "v=0\r\no=x 1 1 IN IP4 h\r\nm=audio port RTP/AVP 0\r\n": "invalid port in m= line 'audio port RTP/AVP 0'",
            "v=0\r\no=x 1 1 IN IP4 h\r\nm=audio 1\r\n": "invalid m= line 'audio 1'",
        }
        for text, message in cases.items():
            with self.assertRaises(ValueError) as caught:
                SessionDescription.parse(text)
            self.assertEqual(str(caught.exception), message)
        broken = SessionDescription.parse("v=0\r\no=x 1 1 IN IP4 h\r\nm=audio 1 RTP/AVP 96\r\na=rtpmap:96 opus\r\n")
        with self.assertRaises(ValueError) as caught:
            broken.media[0].codecs()
        self.assertEqual(str(caught.exception), "invalid rtpmap attribute '96 opus'")
        self.assertRaises(ValueError, SessionDescription.parse, b"v=0\r\n\xff")

    def test_crypto_attribute(self) -> None:
        """a=crypto parses into tag, suite, key parameters and session parameters; key_salt decodes the key."""
        key = base64.b64encode(b"k" * 30).decode()
        crypto = Crypto.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:32 KDR=1")
        self.assertEqual((crypto.tag, crypto.suite, crypto.session_params), (1, "AES_CM_128_HMAC_SHA1_80", ("KDR=1",)))
        self.assertEqual(crypto.key_salt, b"k" * 30)
        self.assertEqual(str(crypto), f"1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:32 KDR=1")
        self.assertRaises(ValueError, Crypto.parse, "x AES")


class NegotiationTests(SynchronousTestCase):
    def test_answer_negotiation(self) -> None:
        """The answer's common codecs, addresses, rtcp, direction, fmtp and feedback are kept per m-line."""
        result = negotiate(default_offer(), ANSWER)
        self.assertFalse(result.no_common_codecs)
        audio, video = result.media
        self.assertEqual((audio.kind, audio.port, audio.address, audio.rtcp_port), ("audio", 5000, "192.0.2.2", 5001))
        self.assertEqual(audio.codec, Codec(0, "PCMU", 8000, fmtp={}))
        self.assertEqual(audio.telephone_event_pt, 101)
        self.assertEqual(audio.direction, Direction.SENDRECV)
        self.assertEqual((video.address, video.rtcp_port, video.rtcp_address), ("192.0.2.3", 6003, "192.0.2.4"))
        assert video.codec is not None
        self.assertEqual(video.codec.packetization_mode, 1)
        self.assertEqual(video.codec.fmtp["sprop-parameter-sets"], "Z0IAH5WoFAFuQA==,aM48gA==")
        self.assertEqual(video.rtcp_fb, frozenset({"nack", "ccm fir"}))
        self.assertEqual(video.direction, Direction.RECVONLY)
        self.assertFalse(video.rtcp_mux)
        self.assertIs(result.get(MediaKind.VIDEO), video)

    def test_renumbered_payload_type(self) -> None:
        """A dynamic codec renumbered by the far end is matched by name; both numbers map to it."""
        answer = ANSWER.replace("m=audio 5000 RTP/AVP 0 101", "m=audio 5000 RTP/AVP 96").replace(
            "a=rtpmap:0 PCMU/8000", "a=rtpmap:96 opus/48000/2\na=rtcp-mux"
        )
        audio = negotiate(default_offer(), answer).media[0]
        assert audio.codec is not None
        self.assertEqual((audio.codec.payload_type, audio.codec.name), (96, "opus"))
        self.assertEqual(set(audio.receive_payload_types), {96, 111})
        self.assertTrue(audio.rtcp_mux)

    def test_h264_modes_are_distinct(self) -> None:
        """An H.264 answer in packetization-mode 0 matches our mode-0 format, not mode 1."""
        answer = ANSWER.replace("packetization-mode=1;", "")
        video = negotiate(default_offer(), answer).media[1]
        assert video.codec is not None
        self.assertEqual(video.codec.packetization_mode, 0)
        self.assertEqual(video.receive_payload_types[113].name, "H264")

    def test_rejected_m_line(self) -> None:
        """A port 0 m-line is rejected and unusable; the call still has a codec."""
        answer = ANSWER.replace("m=video 5002", "m=video 0")
        result = negotiate(default_offer(), answer)
        self.assertTrue(result.media[1].rejected)
        self.assertFalse(result.media[1].usable)
        self.assertIsNone(result.get("video"))
        self.assertFalse(result.no_common_codecs)

    def test_no_common_codec(self) -> None:
        """Answers with only unknown formats leave no usable m-line: no_common_codecs is true."""
        answer = (
            "v=0\r\no=- 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
            "m=audio 5000 RTP/AVP 18 101\r\na=rtpmap:101 telephone-event/8000\r\n"
            "m=video 0 RTP/AVP 112\r\n"
        )
        result = negotiate(default_offer(), answer)
        self.assertTrue(result.no_common_codecs)
        self.assertEqual(result.media[0].codecs, ())
        self.assertEqual(result.media[0].telephone_event_pt, 101)

    def test_wrong_shape_is_refused(self) -> None:
        """An answer with another number of m-lines, or another media type, cannot be negotiated."""
        one = ANSWER.split("m=video")[0]
        with self.assertRaises(ValueError) as caught:
            negotiate(default_offer(), one)
        self.assertEqual(str(caught.exception), "answer has 1 m-lines, the offer had 2")
        swapped = ANSWER.replace("m=video", "m=text")
        with self.assertRaises(ValueError) as caught:
            negotiate(default_offer(), swapped)
        self.assertEqual(str(caught.exception), "answer m-line 1 is text, the offer's is video")

    def test_answer_crypto_is_kept(self) -> None:
        """The answer's a=crypto attributes reach the negotiated m-line."""
        key = base64.b64encode(b"x" * 30).decode()
        answer = ANSWER.replace("a=sendrecv", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\na=sendrecv")
        audio = negotiate(default_offer(), answer).media[0]
        self.assertEqual(audio.crypto[0].key_salt, b"x" * 30)


REOFFER = """v=0
o=- 42 2 IN IP4 192.0.2.2
s=-
c=IN IP4 192.0.2.2
t=0 0
m=audio 5000 RTP/AVP 0 8 96 101
a=rtpmap:96 opus/48000/2
a=rtpmap:101 telephone-event/8000
a=sendonly
m=video 5002 RTP/AVP 99
a=rtpmap:99 H263-1998/90000
"""


class ReofferTests(SynchronousTestCase):
    def local(self, send: bool = False) -> SessionOffer:
        return SessionOffer(
            "192.0.2.1",
            (MediaOffer(MediaKind.AUDIO, 4000, send), MediaOffer(MediaKind.VIDEO, 4002, send)),
            session_id=7,
        )

    def test_hold_detection(self) -> None:
        """sendonly or inactive on every active m-line (or c=0.0.0.0) is hold; sendrecv is not."""
        self.assertTrue(is_hold(SessionDescription.parse(REOFFER.replace("m=video 5002", "m=video 0"))))
        self.assertFalse(is_hold(SessionDescription.parse(REOFFER)))  # video has no direction: sendrecv
        inactive = REOFFER.replace("a=sendonly\n", "").replace("t=0 0\n", "t=0 0\na=inactive\n")
        self.assertTrue(is_hold(SessionDescription.parse(inactive)))
        zero = REOFFER.replace("a=sendonly\n", "").replace("c=IN IP4 192.0.2.2", "c=IN IP4 0.0.0.0")
        self.assertTrue(is_hold(SessionDescription.parse(zero)))

    def test_answer_to_hold(self) -> None:
        """Their sendonly gets our recvonly, with our codecs in our order and their payload types; the m-line
        without a common codec is rejected with port 0; the o= line carries our session id and the new version."""
        answer = build_answer(REOFFER, self.local(), session_version=3)
        self.assertIn("o=wcsgw 7 3 IN IP4 192.0.2.1\r\n", answer)
        self.assertIn("m=audio 4000 RTP/AVP 8 0 96 101\r\n", answer)
        self.assertIn("a=rtpmap:96 opus/48000/2\r\n", answer)
        self.assertIn("a=recvonly\r\n", answer)
        self.assertIn("m=video 0 RTP/AVP 99\r\n", answer)

    def test_answer_directions(self) -> None:
        """inactive gives inactive; sendrecv gives sendrecv when we send, recvonly otherwise."""
        inactive = build_answer(REOFFER.replace("sendonly", "inactive"), self.local(True), session_version=1)
        self.assertIn("a=inactive\r\n", inactive)
        resume = REOFFER.replace("sendonly", "sendrecv")
        self.assertIn("a=sendrecv\r\n", build_answer(resume, self.local(True), session_version=1))
        self.assertIn("a=recvonly\r\n", build_answer(resume, self.local(False), session_version=1))

    def test_savp_needs_crypto(self) -> None:
        """An RTP/SAVP m-line is answered only with a shared crypto suite (their tag, our key)."""
        key = base64.b64encode(b"y" * 30).decode()
        offer = REOFFER.replace("RTP/AVP 0 8 96 101", "RTP/SAVP 0").replace(
            "a=sendonly", "a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:" + key
        )
        self.assertIn("m=audio 0 RTP/SAVP 0", build_answer(offer, self.local(), session_version=1))
        ours = Crypto(1, "AES_CM_128_HMAC_SHA1_80", "inline:" + key)
        local = SessionOffer("192.0.2.1", (MediaOffer(MediaKind.AUDIO, 4000, crypto=(ours,)),))
        answer = build_answer(offer, local, session_version=1)
        self.assertIn("m=audio 4000 RTP/SAVP 0\r\n", answer)
        self.assertIn(f"a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n", answer)
