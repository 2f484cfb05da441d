"""Tests for wcsgw.rtp.h264: RFC 6184 depacketizing (STAP-A, FU-A, mode 0, loss, reordering, parameter sets)
against libx264 output sent by ffmpeg's RTP muxer (tests/fixtures/h264_160x120.*), and the packetizer."""

from __future__ import annotations

import os
import struct

import av
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.h264 import (
    NAL_TYPE_FU_A,
    NAL_TYPE_IDR,
    NAL_TYPE_PPS,
    NAL_TYPE_SPS,
    NAL_TYPE_STAP_A,
    AccessUnit,
    H264Depacketizer,
    H264Packetizer,
    nal_type,
    parse_sprop_parameter_sets,
    split_annexb,
    unpack_stap_a,
)
from wcsgw.rtp.jitterbuffer import JitterBuffer
from wcsgw.rtp.packet import RtpPacket

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# what ffmpeg announced for the fixture stream
SPROP = "Z2QACqy0FCPy4CIAAAMAAgAAAwAoHiRNQA==,aO8Pyw=="


def load_rtp(name: str) -> list[RtpPacket]:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        data = f.read()
    packets, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("!H", data, pos)
        packets.append(RtpPacket.parse(data[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return packets


def elementary_nals() -> list[bytes]:
    with open(os.path.join(FIXTURES, "h264_160x120.h264"), "rb") as f:
        return split_annexb(f.read())


def depacketize(packets: list[RtpPacket], depacketizer: H264Depacketizer | None = None) -> list[AccessUnit]:
    depacketizer = depacketizer or H264Depacketizer()
    units: list[AccessUnit] = []
    previous = None
    for packet in packets:
        if previous is not None:
            gap = (packet.sequence_number - previous - 1) % 65536
            if gap:
                depacketizer.lost(gap)
        previous = packet.sequence_number
        units.extend(depacketizer.push(packet))
    return units


def decode(units: list[AccessUnit]) -> int:
    codec = av.CodecContext.create("h264", "r")
    frames = 0
    for unit in units:
        frames += len(codec.decode(av.Packet(unit.to_annexb())))
    frames += len(codec.decode(None))
    return frames


class FixtureTests(SynchronousTestCase):
    def test_fixture_shape(self) -> None:
        """The fixture holds STAP-A (SPS+PPS), FU-A (SEI, IDR) and single NAL unit packets."""
        types = {p.payload[0] & 0x1F for p in load_rtp("h264_160x120.rtp")}
        self.assertEqual(types, {NAL_TYPE_STAP_A, NAL_TYPE_FU_A, 1})

    def test_whole_stream(self) -> None:
        """All 12 access units come out, keyframes first in each GOP, with exactly the encoder's NAL units; they
        decode with PyAV."""
        units = depacketize(load_rtp("h264_160x120.rtp"))
        self.assertEqual(len(units), 12)
        self.assertEqual([u.keyframe for u in units], [True] + [False] * 5 + [True] + [False] * 5)
        self.assertEqual([n for u in units for n in u.nal_units], elementary_nals())
        self.assertEqual([nal_type(n) for n in units[0].nal_units], [7, 8, 6, 5])
        self.assertEqual(nal_type(units[0].sps or b"\x00"), NAL_TYPE_SPS)
        self.assertEqual(nal_type(units[0].pps or b"\x00"), NAL_TYPE_PPS)
        timestamps = [u.timestamp for u in units]
        self.assertEqual([b - a for a, b in zip(timestamps, timestamps[1:])], [9000] * 11)
        self.assertEqual(decode(units), 12)

    def test_sprop_parameter_sets(self) -> None:
        """sprop-parameter-sets decode to the stream's SPS and PPS."""
        sps, pps = parse_sprop_parameter_sets(SPROP)
        nals = elementary_nals()
        self.assertEqual((sps, pps), (nals[0], nals[1]))

    def test_sprop_used_without_inband(self) -> None:
        """Without in-band SPS/PPS, keyframes get the sprop ones prepended; without sprop they are dropped."""
        packets = [p for p in load_rtp("h264_160x120.rtp") if p.payload[0] & 0x1F != NAL_TYPE_STAP_A]
        for index, packet in enumerate(packets):
            packet.sequence_number = index
        units = depacketize(packets, H264Depacketizer(SPROP))
        self.assertEqual(len(units), 12)
        self.assertEqual([nal_type(n) for n in units[6].nal_units], [7, 8, 5])
        self.assertEqual(decode(units), 12)
        bare = H264Depacketizer()
        self.assertEqual(depacketize(packets, bare), [])
        self.assertEqual(bare.dropped_no_parameter_sets, 2)
        self.assertTrue(bare.keyframe_needed)

    def test_bad_sprop(self) -> None:
        """Invalid sprop-parameter-sets entries are refused with their index."""
        error = self.assertRaises(ValueError, parse_sprop_parameter_sets, "Z2QA,!!!")
        self.assertEqual(str(error), "sprop-parameter-sets entry 1 is not valid base64: '!!!'")
        error = self.assertRaises(ValueError, parse_sprop_parameter_sets, "Z2QA,")
        self.assertEqual(str(error), "sprop-parameter-sets entry 1 is empty")


class LossTests(SynchronousTestCase):
    def test_lost_fu_a_fragment(self) -> None:
        """Losing a middle FU-A fragment of the first IDR drops that unit and the P frames after it until the
        next IDR; what comes out decodes."""
        packets = load_rtp("h264_160x120.rtp")
        del packets[4]  # a middle fragment of the first IDR
        depacketizer = H264Depacketizer()
        units = depacketize(packets, depacketizer)
        self.assertEqual(len(units), 6)
        self.assertTrue(units[0].keyframe)
        self.assertEqual(depacketizer.dropped_broken, 1)
        self.assertEqual(depacketizer.dropped_waiting_keyframe, 5)
        self.assertFalse(depacketizer.keyframe_needed)
        self.assertEqual(decode(units), 6)

    def test_keyframe_needed_after_loss(self) -> None:
        """keyframe_needed turns on at a loss and off at the next IDR."""
        packets = load_rtp("h264_160x120.rtp")
        depacketizer = H264Depacketizer()
        for packet in packets[:12]:
            depacketizer.push(packet)
        self.assertFalse(depacketizer.keyframe_needed)
        depacketizer.lost(1)
        self.assertTrue(depacketizer.keyframe_needed)
        for packet in packets[13:]:
            depacketizer.push(packet)
        self.assertFalse(depacketizer.keyframe_needed)

    def test_lost_last_fragment_without_marker(self) -> None:
        """A unit whose end fragment (with the marker) is lost ends at the timestamp change and is dropped."""
        packets = load_rtp("h264_160x120.rtp")
        del packets[8]  # the end fragment of the first IDR
        depacketizer = H264Depacketizer(drop_until_keyframe=False)
        units = depacketize(packets, depacketizer)
        self.assertEqual(depacketizer.dropped_broken, 1)
        self.assertEqual(len(units), 11)

    def test_gap_before_keyframe_slice_keeps_it(self) -> None:
        """Losing the STAP-A before an IDR's first slice keeps the IDR (first_mb_in_slice is 0) and prepends the
        known SPS/PPS."""
        packets = load_rtp("h264_160x120.rtp")
        self.assertEqual(packets[14].payload[0] & 0x1F, NAL_TYPE_STAP_A)
        del packets[14]
        depacketizer = H264Depacketizer()
        units = depacketize(packets, depacketizer)
        self.assertEqual(len(units), 12)
        self.assertEqual([nal_type(n) for n in units[6].nal_units], [7, 8, 5])
        self.assertEqual(decode(units), 12)

    def test_without_drop_until_keyframe(self) -> None:
        """With drop_until_keyframe off, a lost P frame (single NAL packet) costs only that frame."""
        packets = load_rtp("h264_160x120.rtp")
        del packets[10]
        depacketizer = H264Depacketizer(drop_until_keyframe=False)
        units = depacketize(packets, depacketizer)
        self.assertEqual(len(units), 11)
        self.assertFalse(depacketizer.keyframe_needed)

    def test_gap_inside_unit_continuation(self) -> None:
        """After a gap, a unit whose first packet is a middle FU-A fragment is dropped."""
        packets = load_rtp("h264_160x120.rtp")[:9]
        depacketizer = H264Depacketizer(drop_until_keyframe=False)
        depacketizer.lost(4)
        for packet in packets[4:]:
            self.assertEqual(depacketizer.push(packet), [])
        self.assertEqual(depacketizer.dropped_broken, 1)

    def test_reordering_through_jitter_buffer(self) -> None:
        """FU-A fragments reordered on the way come out whole after the jitter buffer."""
        packets = load_rtp("h264_160x120.rtp")
        order = list(range(len(packets)))
        order[3], order[5] = order[5], order[3]
        order[16], order[17] = order[17], order[16]
        order[20], order[23] = order[23], order[20]
        buffer = JitterBuffer(90000, depth_ms=400)  # the 10 fps fixture is sent 10 times faster than real time
        depacketizer = H264Depacketizer()
        units: list[AccessUnit] = []
        now = 0.0
        for index in order:
            now += 0.01
            for released in buffer.push(packets[index], now):
                units.extend(depacketizer.push(released.packet))
            for released in buffer.poll(now):
                units.extend(depacketizer.push(released.packet))
        for released in buffer.poll(now + 1):
            units.extend(depacketizer.push(released.packet))
        self.assertEqual(len(units), 12)
        self.assertEqual(buffer.lost, 0)
        self.assertEqual([n for u in units for n in u.nal_units], elementary_nals())


class PayloadErrorTests(SynchronousTestCase):
    def push_payloads(self, *payloads: bytes) -> H264Depacketizer:
        depacketizer = H264Depacketizer(drop_until_keyframe=False)
        for index, payload in enumerate(payloads):
            depacketizer.push(RtpPacket(96, index == len(payloads) - 1, index, 1000, 1, payload=payload))
        return depacketizer

    def test_fu_a_without_start(self) -> None:
        """An FU-A continuation without its start fragment breaks the unit."""
        depacketizer = self.push_payloads(bytes([0x7C, 0x05]) + b"abc")
        self.assertEqual(depacketizer.last_error, "FU-A fragment without its start fragment")
        self.assertEqual((depacketizer.errors, depacketizer.dropped_broken, depacketizer.emitted), (1, 1, 0))

    def test_fu_a_restart(self) -> None:
        """A second start fragment before the end breaks the unit."""
        depacketizer = self.push_payloads(bytes([0x7C, 0x85]) + b"a", bytes([0x7C, 0x85]) + b"b")
        self.assertEqual(depacketizer.last_error, "FU-A start fragment arrived before the previous NAL unit ended")

    def test_fu_a_type_change(self) -> None:
        """Fragments of one FU-A must carry the same NAL type."""
        depacketizer = self.push_payloads(bytes([0x7C, 0x85]) + b"a", bytes([0x7C, 0x41]) + b"b")
        self.assertEqual(depacketizer.last_error, "FU-A fragment NAL type differs from its start fragment")

    def test_fu_a_unfinished(self) -> None:
        """A single NAL unit arriving while an FU-A is unfinished breaks the unit."""
        depacketizer = self.push_payloads(bytes([0x7C, 0x85]) + b"a", b"\x41abc")
        self.assertEqual(depacketizer.last_error, "H.264 fragmented NAL unit ended without its end fragment")

    def test_short_fu_a(self) -> None:
        """An FU-A needs at least one payload byte after its two header bytes."""
        depacketizer = self.push_payloads(bytes([0x7C, 0x85]))
        self.assertEqual(depacketizer.last_error, "FU-A payload of 2 bytes is shorter than 3")

    def test_unsupported_types(self) -> None:
        """STAP-B, MTAP and FU-B are refused by name; an empty payload too."""
        for kind, name in ((25, "STAP-B"), (26, "MTAP16"), (27, "MTAP24"), (29, "FU-B"), (0, "reserved type 0")):
            depacketizer = self.push_payloads(bytes([0x60 | kind]) + b"abcd")
            self.assertEqual(depacketizer.last_error, f"H.264 NAL unit type {kind} ({name}) is not supported")
        self.assertEqual(self.push_payloads(b"").last_error, "H.264 RTP payload is empty")

    def test_stap_a_errors(self) -> None:
        """STAP-A framing errors name the offset."""
        cases = [
            (b"\x78", "STAP-A has no aggregation units"),
            (b"\x78\x00", "STAP-A size field at offset 1 is truncated"),
            (b"\x78\x00\x00", "STAP-A aggregation unit at offset 1 has size 0"),
            (b"\x78\x00\x05abc", "STAP-A aggregation unit of size 5 at offset 1 exceeds the payload"),
        ]
        for payload, message in cases:
            self.assertEqual(str(self.assertRaises(ValueError, unpack_stap_a, payload)), message)

    def test_timestamp_change_ends_unit(self) -> None:
        """A unit without marker ends when the next timestamp starts (mode 0 sender without markers)."""
        depacketizer = H264Depacketizer(drop_until_keyframe=False)
        self.assertEqual(depacketizer.push(RtpPacket(96, False, 1, 1000, 1, payload=b"\x41\x80a")), [])
        units = depacketizer.push(RtpPacket(96, False, 2, 4000, 1, payload=b"\x41\x80b"))
        self.assertEqual([(u.timestamp, u.nal_units) for u in units], [(1000, [b"\x41\x80a"])])
        self.assertEqual([u.nal_units for u in depacketizer.flush()], [[b"\x41\x80b"]])


class PacketizerTests(SynchronousTestCase):
    def units(self) -> list[AccessUnit]:
        return depacketize(load_rtp("h264_160x120.rtp"))

    def test_round_trip_mode_1(self) -> None:
        """Packetizing the fixture's units with a small MTU (FU-A and STAP-A) and depacketizing gives them back."""
        packetizer = H264Packetizer(payload_type=96, ssrc=5, sequence_number=65530, mtu=300)
        packets = [p for u in self.units() for p in packetizer.packetize(u.nal_units, u.timestamp)]
        self.assertTrue(all(len(p.payload) <= 300 for p in packets))
        kinds = {p.payload[0] & 0x1F for p in packets}
        self.assertIn(NAL_TYPE_FU_A, kinds)
        self.assertIn(NAL_TYPE_STAP_A, kinds)
        units = depacketize(packets)
        self.assertEqual([u.nal_units for u in units], [u.nal_units for u in self.units()])
        self.assertEqual(decode(units), 12)

    def test_round_trip_mode_0(self) -> None:
        """Mode 0 sends one NAL unit per packet; the depacketizer reassembles the units."""
        packetizer = H264Packetizer(mtu=4000, packetization_mode=0)
        packets = [p for u in self.units() for p in packetizer.packetize(u.nal_units, u.timestamp)]
        self.assertEqual(len(packets), 17)
        self.assertTrue(all(p.payload[0] & 0x1F < 24 for p in packets))
        self.assertEqual([u.nal_units for u in depacketize(packets)], [u.nal_units for u in self.units()])

    def test_mode_0_too_big(self) -> None:
        """Mode 0 cannot send a NAL unit above the MTU."""
        packetizer = H264Packetizer(mtu=100, packetization_mode=0)
        error = self.assertRaises(ValueError, packetizer.packetize, [b"\x65" + b"x" * 200], 0)
        self.assertEqual(str(error), "NAL unit of 201 bytes exceeds the MTU 100 in mode 0")

    def test_fu_a_headers(self) -> None:
        """FU-A fragments carry the NRI in the indicator, S on the first, E on the last, the type in each."""
        packetizer = H264Packetizer(mtu=10)
        packets = packetizer.packetize([b"\x65" + bytes(range(20))], 0)
        self.assertEqual([p.payload[:2] for p in packets], [b"\x7c\x85", b"\x7c\x05", b"\x7c\x45"])
        self.assertEqual([p.marker for p in packets], [False, False, True])

    def test_stap_a_header(self) -> None:
        """STAP-A takes the highest NRI of its units."""
        payloads = H264Packetizer().payloads([b"\x67abc", b"\x08d"])
        self.assertEqual(payloads, [b"\x78\x00\x04\x67abc\x00\x02\x08d"])
        self.assertEqual(unpack_stap_a(payloads[0]), [b"\x67abc", b"\x08d"])

    def test_split_annexb(self) -> None:
        """Annex B splitting handles 3- and 4-byte start codes and trailing zeros."""
        data = b"\x00\x00\x00\x01\x67ab\x00\x00\x01\x68c\x00\x00\x00\x00\x01\x65d"
        self.assertEqual(split_annexb(data), [b"\x67ab", b"\x68c", b"\x65d"])
        unit = AccessUnit(0, [b"\x67ab", b"\x65d"], True, None, None)
        self.assertEqual(split_annexb(unit.to_annexb()), unit.nal_units)
        self.assertEqual(nal_type(b"\x65"), NAL_TYPE_IDR)
