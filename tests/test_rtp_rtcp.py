"""Tests for wcsgw.rtp.rtcp: every packet type, compound packets, strict errors, NTP helpers."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.rtcp import (
    SDES_CNAME,
    ReportBlock,
    RtcpBye,
    RtcpCompound,
    RtcpFir,
    RtcpNack,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSenderReport,
    RtcpSourceDescription,
    SdesChunk,
    ntp_from_seconds,
    ntp_middle,
    ntp_to_seconds,
)

BLOCK = ReportBlock(
    ssrc=0x11223344, fraction_lost=25, packets_lost=-3, highest_sequence=70000, jitter=42, lsr=9, dlsr=65536
)


def round_trip(test: SynchronousTestCase, packet: object) -> bytes:
    data = bytes(packet)  # type: ignore[call-overload]
    compound = RtcpCompound.parse(data)
    test.assertEqual(compound.packets, [packet])
    test.assertEqual(compound.skipped, 0)
    test.assertEqual(bytes(compound), data)
    return data


class RoundTripTests(SynchronousTestCase):
    def test_sender_report(self) -> None:
        """An SR with two report blocks survives build and parse; the header counts the blocks."""
        sr = RtcpSenderReport(1, 0x0123456789ABCDEF, 12345, 10, 1000, [BLOCK, BLOCK])
        data = round_trip(self, sr)
        self.assertEqual(data[:4], bytes([0x82, 200]) + struct.pack("!H", (24 + 48) // 4))

    def test_receiver_report(self) -> None:
        """An RR, empty or with a block, survives build and parse."""
        round_trip(self, RtcpReceiverReport(5))
        data = round_trip(self, RtcpReceiverReport(5, [BLOCK]))
        self.assertEqual(len(data), 8 + 24)

    def test_report_block_negative_loss(self) -> None:
        """The cumulative loss is a signed 24-bit field."""
        data = bytes(BLOCK)
        self.assertEqual(data[5:8], b"\xff\xff\xfd")
        self.assertEqual(ReportBlock.parse(data).packets_lost, -3)

    def test_sdes(self) -> None:
        """SDES chunks with a CNAME (and none) survive build and parse, padded to 32 bits."""
        sdes = RtcpSourceDescription([SdesChunk(7, [(SDES_CNAME, b"wcsgw@host")]), SdesChunk(8, [])])
        data = round_trip(self, sdes)
        self.assertEqual(len(data) % 4, 0)
        self.assertEqual(RtcpCompound.parse(data).packets[0].chunks[0].cname, b"wcsgw@host")  # type: ignore[union-attr]

    def test_sdes_exact_boundary(self) -> None:
        """An item ending on a 32-bit boundary still gets its terminating null octet (and padding)."""
        sdes = RtcpSourceDescription([SdesChunk(7, [(SDES_CNAME, b"ab")])])
        data = round_trip(self, sdes)
        self.assertEqual(len(data), 4 + 4 + 4 + 4)

    def test_bye(self) -> None:
        """BYE with and without a reason survives build and parse."""
        round_trip(self, RtcpBye([1, 2]))
        round_trip(self, RtcpBye([3], b"call ended"))

    def test_nack(self) -> None:
        """A generic NACK packs nearby losses into PID + BLP and unpacks them."""
        nack = RtcpNack(1, 2, [100, 101, 116, 117, 65535])
        data = bytes(nack)
        self.assertEqual(data[1], 205)
        self.assertEqual(data[0] & 0x1F, 1)
        parsed = RtcpCompound.parse(data).packets[0]
        self.assertEqual(sorted(parsed.lost), sorted([100, 101, 116, 117, 65535]))  # type: ignore[union-attr]
        self.assertEqual(len(data), 12 + 4 * 3)  # 100 (+101, +116), 117, 65535

    def test_pli(self) -> None:
        """A PLI is 12 bytes: PSFB FMT 1 with the two SSRCs."""
        data = round_trip(self, RtcpPli(0xAAAA, 0xBBBB))
        self.assertEqual(data, bytes([0x81, 206, 0, 2]) + struct.pack("!II", 0xAAAA, 0xBBBB))

    def test_fir(self) -> None:
        """A FIR carries (SSRC, sequence number) entries with a zero media SSRC."""
        data = round_trip(self, RtcpFir(0xAAAA, [(0xBBBB, 7), (0xCCCC, 255)]))
        self.assertEqual(data[0], 0x84)
        self.assertEqual(data[8:12], b"\x00\x00\x00\x00")
        self.assertEqual(data[12:20], struct.pack("!IB3x", 0xBBBB, 7))

    def test_compound(self) -> None:
        """A compound RR + SDES + PLI parses into the three packets in order."""
        packets = [RtcpReceiverReport(1, [BLOCK]), RtcpSourceDescription([SdesChunk(1, [(1, b"x")])]), RtcpPli(1, 2)]
        compound = RtcpCompound.parse(bytes(RtcpCompound(packets)))
        self.assertEqual(compound.packets, packets)


class SkippedTests(SynchronousTestCase):
    def test_unknown_types_skipped(self) -> None:
        """APP, XR and unknown feedback formats (REMB) are skipped and counted; the rest is parsed."""
        app = bytes([0x80, 204, 0, 2]) + b"\x00\x00\x00\x01" + b"name"
        xr = bytes([0x80, 207, 0, 1]) + b"\x00\x00\x00\x01"
        remb = bytes([0x8F, 206, 0, 2]) + b"\x00" * 8
        tmmbr = bytes([0x83, 205, 0, 2]) + b"\x00" * 8
        data = bytes(RtcpReceiverReport(9)) + app + xr + remb + tmmbr + bytes(RtcpBye([9]))
        compound = RtcpCompound.parse(data)
        self.assertEqual(compound.packets, [RtcpReceiverReport(9), RtcpBye([9])])
        self.assertEqual(compound.skipped, 4)

    def test_padding(self) -> None:
        """A padded packet parses without its padding."""
        body = struct.pack("!I", 5) + b"\x00\x00\x00\x04"
        data = bytes([0xA0, 201, 0, 2]) + body
        self.assertEqual(RtcpCompound.parse(data).packets, [RtcpReceiverReport(5)])


class ErrorTests(SynchronousTestCase):
    def check(self, data: bytes, message: str) -> None:
        error = self.assertRaises(ValueError, RtcpCompound.parse, data)
        self.assertEqual(str(error), message)

    def test_empty(self) -> None:
        """An empty datagram is refused."""
        self.check(b"", "RTCP packet is empty")

    def test_truncated_header(self) -> None:
        """A trailing partial header is refused with its offset."""
        self.check(bytes(RtcpReceiverReport(1)) + b"\x80\xc9", "RTCP header at offset 8 is truncated: 2 bytes")

    def test_version(self) -> None:
        """Version 1 is refused."""
        self.check(b"\x40\xc9\x00\x01\x00\x00\x00\x01", "RTCP version at offset 0 is 1, expected 2")

    def test_length_beyond(self) -> None:
        """A length field beyond the datagram is refused."""
        self.check(b"\x80\xc9\x00\x05\x00\x00\x00\x01", "RTCP length at offset 0 says 24 bytes but 8 remain")

    def test_bad_padding(self) -> None:
        """A padding count of 0 or larger than the body is refused."""
        self.check(b"\xa0\xc9\x00\x01\x00\x00\x00\x00", "RTCP padding count 0 at offset 0 is invalid")
        self.check(b"\xa0\xc9\x00\x01\x00\x00\x00\x09", "RTCP padding count 9 at offset 0 is invalid")

    def test_short_sr(self) -> None:
        """An SR whose blocks do not fit is refused."""
        data = bytes([0x81, 200, 0, 6]) + b"\x00" * 24
        self.check(data, "RTCP SR with 1 report blocks needs 48 bytes, got 24")

    def test_short_rr(self) -> None:
        """An RR whose blocks do not fit is refused."""
        self.check(bytes([0x82, 201, 0, 1]) + b"\x00" * 4, "RTCP RR with 2 report blocks needs 52 bytes, got 4")

    def test_sdes_errors(self) -> None:
        """SDES without end item or with an item overflowing the packet is refused."""
        self.check(bytes([0x81, 202, 0, 2]) + struct.pack("!I", 1) + b"\x01\x02ab", "RTCP SDES chunk 0 has no end item")
        self.check(
            bytes([0x81, 202, 0, 2]) + struct.pack("!I", 1) + b"\x01\x09ab",
            "RTCP SDES chunk 0 item of length 9 exceeds the packet",
        )
        self.check(
            bytes([0x82, 202, 0, 2]) + struct.pack("!I", 1) + b"\x00\x00\x00\x00",
            "RTCP SDES chunk 1 is truncated before its SSRC",
        )

    def test_bye_errors(self) -> None:
        """BYE with too few SSRCs or an overlong reason is refused."""
        self.check(bytes([0x82, 203, 0, 1]) + b"\x00" * 4, "RTCP BYE with 2 sources needs 8 bytes, got 4")
        self.check(
            bytes([0x81, 203, 0, 2]) + b"\x00" * 4 + b"\x09abc", "RTCP BYE reason of length 9 exceeds the packet"
        )

    def test_feedback_errors(self) -> None:
        """Feedback packets with bad sizes are refused."""
        self.check(bytes([0x81, 206, 0, 1]) + b"\x00" * 4, "RTCP PSFB needs 8 bytes of SSRCs, got 4")
        self.check(bytes([0x81, 206, 0, 3]) + b"\x00" * 12, "RTCP PLI must have no FCI, got 4 bytes")
        self.check(bytes([0x84, 206, 0, 3]) + b"\x00" * 12, "RTCP FIR FCI length 4 is not a positive multiple of 8")
        self.check(bytes([0x81, 205, 0, 2]) + b"\x00" * 8, "RTCP NACK FCI length 0 is not a positive multiple of 4")

    def test_build_errors(self) -> None:
        """Unencodable values are refused when building."""
        bad = ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0)
        self.assertEqual(
            str(self.assertRaises(ValueError, bytes, bad)), "RTCP cumulative lost 8388608 does not fit 24 signed bits"
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, bytes, RtcpNack(1, 2))),
            "RTCP NACK needs at least one lost sequence number",
        )
        self.assertEqual(str(self.assertRaises(ValueError, bytes, RtcpFir(1))), "RTCP FIR needs at least one entry")
        self.assertEqual(
            str(self.assertRaises(ValueError, bytes, RtcpReceiverReport(1, [BLOCK] * 32))),
            "RTCP count 32 is outside 0..31",
        )


class NtpTests(SynchronousTestCase):
    def test_ntp_round_trip(self) -> None:
        """Unix seconds convert to NTP and back within a microsecond; LSR is the middle 32 bits."""
        ntp = ntp_from_seconds(1700000000.25)
        self.assertEqual(ntp >> 32, 1700000000 + 2208988800)
        self.assertEqual(ntp & 0xFFFFFFFF, 1 << 30)
        self.assertAlmostEqual(ntp_to_seconds(ntp), 1700000000.25, places=6)
        self.assertEqual(ntp_middle(0x1122334455667788), 0x33445566)
