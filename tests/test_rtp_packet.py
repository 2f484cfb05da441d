"""Tests for wcsgw.rtp.packet: RTP header parse/build and the RFC 5761 demultiplexing test."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.packet import (
    HeaderExtension,
    RtpPacket,
    fill_ring,
    is_rtcp,
    sequence_add,
    sequence_delta,
    timestamp_delta,
)

# version 2, marker, PT 96, seq 0x1234, ts 0xdeadbeef, ssrc 0x01020304, payload "abc"
SIMPLE = bytes.fromhex("80e0 1234 deadbeef 01020304") + b"abc"


class RtpPacketParseTests(SynchronousTestCase):
    def test_simple(self) -> None:
        """A plain packet yields each header field and the payload."""
        packet = RtpPacket.parse(SIMPLE)
        self.assertEqual(packet.payload_type, 96)
        self.assertTrue(packet.marker)
        self.assertEqual(packet.sequence_number, 0x1234)
        self.assertEqual(packet.timestamp, 0xDEADBEEF)
        self.assertEqual(packet.ssrc, 0x01020304)
        self.assertEqual(packet.csrc, [])
        self.assertIsNone(packet.extension)
        self.assertEqual(packet.payload, b"abc")
        self.assertEqual(packet.padding_size, 0)

    def test_round_trip_everything(self) -> None:
        """CSRCs, a header extension and padding survive build then parse, byte for byte."""
        packet = RtpPacket(
            payload_type=111,
            marker=False,
            sequence_number=65535,
            timestamp=2**32 - 1,
            ssrc=7,
            csrc=[1, 2, 3],
            extension=HeaderExtension(0xBEDE, b"\x10\xff\x00\x00"),
            payload=b"opus",
            padding_size=4,
        )
        data = bytes(packet)
        self.assertEqual(data[0], 0x80 | 0x20 | 0x10 | 3)
        self.assertEqual(data[-1], 4)
        self.assertEqual(RtpPacket.parse(data), packet)
        self.assertEqual(bytes(RtpPacket.parse(data)), data)

    def test_too_short(self) -> None:
        """Fewer than 12 bytes is refused with the length."""
        error = self.assertRaises(ValueError, RtpPacket.parse, SIMPLE[:11])
        self.assertEqual(str(error), "RTP packet is 11 bytes, shorter than the 12-byte header")

    def test_bad_version(self) -> None:
        """A version other than 2 is refused."""
        error = self.assertRaises(ValueError, RtpPacket.parse, b"\x40" + SIMPLE[1:])
        self.assertEqual(str(error), "RTP version is 1, expected 2")

    def test_truncated_csrc(self) -> None:
        """A CSRC count larger than the packet is refused."""
        data = bytes([0x82]) + SIMPLE[1:12] + b"\x00\x00\x00\x01"
        error = self.assertRaises(ValueError, RtpPacket.parse, data)
        self.assertEqual(str(error), "RTP packet is truncated: CSRC count 2 needs 8 bytes")

    def test_truncated_extension_header(self) -> None:
        """The X bit without room for the extension header is refused."""
        data = bytes([0x90]) + SIMPLE[1:12] + b"\xbe\xde"
        error = self.assertRaises(ValueError, RtpPacket.parse, data)
        self.assertEqual(str(error), "RTP packet is truncated: header extension needs 4 bytes")

    def test_truncated_extension_data(self) -> None:
        """An extension length beyond the packet is refused."""
        data = bytes([0x90]) + SIMPLE[1:12] + b"\xbe\xde\x00\x02" + b"\x00" * 4
        error = self.assertRaises(ValueError, RtpPacket.parse, data)
        self.assertEqual(str(error), "RTP packet is truncated: header extension length 2 words exceeds the packet")

    def test_zero_padding(self) -> None:
        """A padding count of zero is refused."""
        data = bytes([0xA0]) + SIMPLE[1:12] + b"ab\x00"
        error = self.assertRaises(ValueError, RtpPacket.parse, data)
        self.assertEqual(str(error), "RTP padding count is 0")

    def test_padding_too_long(self) -> None:
        """A padding count larger than what follows the header is refused."""
        data = bytes([0xA0]) + SIMPLE[1:12] + b"ab\x09"
        error = self.assertRaises(ValueError, RtpPacket.parse, data)
        self.assertEqual(str(error), "RTP padding count 9 exceeds the 3 bytes after the header")

    def test_padding_without_bytes(self) -> None:
        """The P bit on a header-only packet is refused."""
        error = self.assertRaises(ValueError, RtpPacket.parse, bytes([0xA0]) + SIMPLE[1:12])
        self.assertEqual(str(error), "RTP packet has the padding bit set but no padding")

    def test_padding_only(self) -> None:
        """A packet made only of padding has an empty payload."""
        data = bytes([0xA0]) + SIMPLE[1:12] + b"\x00\x00\x00\x04"
        packet = RtpPacket.parse(data)
        self.assertEqual(packet.payload, b"")
        self.assertEqual(packet.padding_size, 4)


class RtpPacketBuildTests(SynchronousTestCase):
    def test_build_simple(self) -> None:
        """Building the fields of SIMPLE gives SIMPLE."""
        packet = RtpPacket(96, True, 0x1234, 0xDEADBEEF, 0x01020304, payload=b"abc")
        self.assertEqual(bytes(packet), SIMPLE)

    def test_bad_fields(self) -> None:
        """Out-of-range fields are refused when building, naming the field."""
        cases = [
            (RtpPacket(payload_type=128), "RTP payload type 128 is outside 0..127"),
            (RtpPacket(sequence_number=65536), "RTP sequence number 65536 is outside 0..65535"),
            (RtpPacket(timestamp=-1), "RTP timestamp -1 is outside 0..2**32-1"),
            (RtpPacket(ssrc=2**32), "RTP SSRC 4294967296 is outside 0..2**32-1"),
            (RtpPacket(csrc=list(range(16))), "RTP packet has 16 CSRCs, at most 15 fit"),
            (RtpPacket(padding_size=256), "RTP padding size 256 is outside 0..255"),
            (
                RtpPacket(extension=HeaderExtension(1, b"abc")),
                "RTP header extension data is 3 bytes, not a multiple of 4",
            ),
        ]
        for packet, message in cases:
            error = self.assertRaises(ValueError, bytes, packet)
            self.assertEqual(str(error), message)


class HelperTests(SynchronousTestCase):
    def test_is_rtcp(self) -> None:
        """Second bytes 192..223 are RTCP (SR 200, RR 201, PSFB 206); RTP with or without marker is not."""
        self.assertTrue(is_rtcp(b"\x80\xc8"))
        self.assertTrue(is_rtcp(b"\x81\xc9"))
        self.assertTrue(is_rtcp(b"\x81\xce"))
        self.assertTrue(is_rtcp(b"\x80\xc0"))
        self.assertTrue(is_rtcp(b"\x80\xdf"))
        self.assertFalse(is_rtcp(b"\x80\xbf"))
        self.assertFalse(is_rtcp(b"\x80\xe0"))  # marker + PT 96
        self.assertFalse(is_rtcp(b"\x80\x00"))
        self.assertFalse(is_rtcp(b"\x80"))

    def test_sequence_arithmetic(self) -> None:
        """Sequence numbers wrap at 65536 and their distance is signed."""
        self.assertEqual(sequence_add(65535, 1), 0)
        self.assertEqual(sequence_add(0, -1), 65535)
        self.assertEqual(sequence_delta(0, 65535), 1)
        self.assertEqual(sequence_delta(65535, 0), -1)
        self.assertEqual(sequence_delta(100, 90), 10)

    def test_timestamp_delta(self) -> None:
        """Timestamp distance is signed modulo 2**32."""
        self.assertEqual(timestamp_delta(10, 2**32 - 10), 20)
        self.assertEqual(timestamp_delta(2**32 - 10, 10), -20)


class FillRingTests(SynchronousTestCase):
    def test_same_as_one_by_one(self) -> None:
        """fill_ring leaves a ring as setting ``ring[n % size] = n`` one number at a time does, wrapping or not,
        for runs shorter and longer than the ring."""
        rng = random.Random(5)
        for _ in range(500):
            size = rng.choice((1, 2, 5, 16, 512))
            first = rng.randrange(100_000)
            count = rng.randrange(3 * size + 2)
            ring = [rng.randrange(-1, 5) for _ in range(size)]
            expected = list(ring)
            for n in range(first, first + count):
                expected[n % size] = n
            fill_ring(ring, first, count)
            self.assertEqual(ring, expected, (size, first, count))
