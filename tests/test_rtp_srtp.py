"""Tests for wcsgw.rtp.srtp: RFC 4568 crypto attributes and the libsrtp protect/unprotect context."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.rtcp import RtcpReceiverReport
from wcsgw.rtp.srtp import (
    AES_CM_128_HMAC_SHA1_32,
    AES_CM_128_HMAC_SHA1_80,
    CryptoAttribute,
    SrtpContext,
    generate_crypto,
)

KEY_A = bytes(range(30))
KEY_B = bytes(range(100, 130))
INLINE_A = base64.b64encode(KEY_A).decode()


def crypto(key: bytes, suite: str = AES_CM_128_HMAC_SHA1_80) -> CryptoAttribute:
    return CryptoAttribute(1, suite, key)


class CryptoAttributeTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """The RFC 4568 example shape parses: tag, suite, key||salt, lifetime, MKI."""
        attribute = CryptoAttribute.parse(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE_A}|2^20|1:4")
        self.assertEqual(attribute.tag, 1)
        self.assertEqual(attribute.suite, AES_CM_128_HMAC_SHA1_80)
        self.assertEqual(attribute.key_salt, KEY_A)
        self.assertEqual(attribute.lifetime, "2^20")
        self.assertEqual(attribute.mki, (1, 4))

    def test_format_round_trip(self) -> None:
        """str() gives the attribute value back; session parameters are kept."""
        value = f"2 AES_CM_128_HMAC_SHA1_32 inline:{INLINE_A}|1:1 UNENCRYPTED_SRTCP"
        attribute = CryptoAttribute.parse(value)
        self.assertEqual(attribute.session_params, ("UNENCRYPTED_SRTCP",))
        self.assertEqual(str(attribute), value)
        self.assertEqual(str(crypto(KEY_A)), f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE_A}")

    def test_generate(self) -> None:
        """A generated attribute has a fresh 30-byte key from the given source."""
        attribute = generate_crypto(3, AES_CM_128_HMAC_SHA1_32, random_bytes=lambda n: b"\x07" * n)
        self.assertEqual(
            (attribute.tag, attribute.suite, attribute.key_salt), (3, AES_CM_128_HMAC_SHA1_32, b"\x07" * 30)
        )
        self.assertEqual(len(generate_crypto().key_salt), 30)
        self.assertNotEqual(generate_crypto().key_salt, generate_crypto().key_salt)

    def test_errors(self) -> None:
        """Malformed attributes are refused with the reason."""
        cases = [
            (
                "1 AES_CM_128_HMAC_SHA1_80",
                "crypto attribute needs a tag, a suite and key parameters: '1 AES_CM_128_HMAC_SHA1_80'",
            ),
            (f"x AES_CM_128_HMAC_SHA1_80 inline:{INLINE_A}", "crypto tag 'x' is not a 1-9 digit number"),
            (f"1 AES_256_CM_HMAC_SHA1_80 inline:{INLINE_A}", "crypto suite AES_256_CM_HMAC_SHA1_80 is not supported"),
            (f"1 AES_CM_128_HMAC_SHA1_80 uri:{INLINE_A}", f"crypto key method in 'uri:{INLINE_A}' is not inline"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:@@@@", "crypto key '@@@@' is not valid base64"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "crypto key||salt is 3 bytes, AES_CM_128_HMAC_SHA1_80 needs 30"),
            (
                f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE_A}|junk",
                "crypto key parameter 'junk' is neither a lifetime nor an MKI",
            ),
            (
                f"1 AES_CM_128_HMAC_SHA1_80 inline:{INLINE_A};inline:{INLINE_A}",
                "crypto attribute with several keys is not supported",
            ),
        ]
        for value, message in cases:
            self.assertEqual(str(self.assertRaises(ValueError, CryptoAttribute.parse, value)), message)


class SrtpContextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.alice = SrtpContext(crypto(KEY_A), crypto(KEY_B))
        self.bob = SrtpContext(crypto(KEY_B), crypto(KEY_A))

    def test_rtp_round_trip(self) -> None:
        """RTP protected with one side's key unprotects with the other side's context; the tag is 10 bytes."""
        plain = bytes(RtpPacket(0, False, 1, 160, 0x1234, payload=b"\xff" * 160))
        protected = self.alice.protect(plain)
        self.assertEqual(len(protected), len(plain) + 10)
        self.assertNotEqual(protected[12:172], plain[12:])
        self.assertEqual(self.bob.unprotect(protected), plain)

    def test_rtcp_round_trip(self) -> None:
        """RTCP is protected and unprotected the same way (SRTCP index + tag)."""
        plain = bytes(RtcpReceiverReport(0x1234))
        protected = self.bob.protect_rtcp(plain)
        self.assertEqual(self.alice.unprotect_rtcp(protected), plain)

    def test_auth_failure(self) -> None:
        """A tampered packet fails authentication: ValueError, counted."""
        protected = bytearray(self.alice.protect(bytes(RtpPacket(0, False, 1, 160, 0x1234, payload=b"abc"))))
        protected[-1] ^= 1
        error = self.assertRaises(ValueError, self.bob.unprotect, bytes(protected))
        self.assertEqual(str(error), "SRTP unprotect failed: authentication failure")
        self.assertEqual(self.bob.auth_failures, 1)

    def test_wrong_key(self) -> None:
        """A packet made with another key fails authentication."""
        protected = self.alice.protect(bytes(RtpPacket(0, False, 1, 160, 0x1234, payload=b"abc")))
        self.assertRaises(ValueError, self.alice.unprotect, protected)
        self.assertEqual(self.alice.auth_failures, 1)

    def test_replay(self) -> None:
        """The same packet twice is a replay: ValueError, counted."""
        protected = self.alice.protect(bytes(RtpPacket(0, False, 7, 160, 0x1234, payload=b"abc")))
        self.bob.unprotect(protected)
        self.assertRaises(ValueError, self.bob.unprotect, protected)
        self.assertEqual(self.bob.replay_failures, 1)

    def test_short_tag(self) -> None:
        """The _32 suite adds a 4-byte tag."""
        alice = SrtpContext(crypto(KEY_A, AES_CM_128_HMAC_SHA1_32), crypto(KEY_B, AES_CM_128_HMAC_SHA1_32))
        bob = SrtpContext(crypto(KEY_B, AES_CM_128_HMAC_SHA1_32), crypto(KEY_A, AES_CM_128_HMAC_SHA1_32))
        plain = bytes(RtpPacket(0, False, 1, 160, 9, payload=b"x" * 20))
        protected = alice.protect(plain)
        self.assertEqual(len(protected), len(plain) + 4)
        self.assertEqual(bob.unprotect(protected), plain)

    def test_unusable(self) -> None:
        """Mixed suites, MKIs and session parameters are refused."""
        error = self.assertRaises(ValueError, SrtpContext, crypto(KEY_A), crypto(KEY_B, AES_CM_128_HMAC_SHA1_32))
        self.assertEqual(
            str(error), "local suite AES_CM_128_HMAC_SHA1_80 differs from remote suite AES_CM_128_HMAC_SHA1_32"
        )
        with_mki = CryptoAttribute(1, AES_CM_128_HMAC_SHA1_80, KEY_B, mki=(1, 1))
        self.assertEqual(
            str(self.assertRaises(ValueError, SrtpContext, crypto(KEY_A), with_mki)),
            "crypto attribute with an MKI is not supported",
        )
        params = CryptoAttribute(1, AES_CM_128_HMAC_SHA1_80, KEY_B, session_params=("UNENCRYPTED_SRTP",))
        self.assertEqual(
            str(self.assertRaises(ValueError, SrtpContext, crypto(KEY_A), params)),
            "crypto session parameters UNENCRYPTED_SRTP are not supported",
        )
