"""Tests for wcsgw.rtp.vp8: RFC 7741 payload descriptor, frame assembly and loss handling against libvpx output
sent by ffmpeg's RTP muxer (tests/fixtures/vp8_160x120.rtp), and the packetizer."""

from __future__ import annotations

import os
import struct

import av
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.vp8 import Vp8Depacketizer, Vp8Frame, Vp8Packetizer, Vp8PayloadDescriptor, parse_keyframe_size

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load_rtp(name: str) -> list[RtpPacket]:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        data = f.read()
    packets, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("!H", data, pos)
        packets.append(RtpPacket.parse(data[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return packets


def depacketize(packets: list[RtpPacket], depacketizer: Vp8Depacketizer | None = None) -> list[Vp8Frame]:
    depacketizer = depacketizer or Vp8Depacketizer()
    frames: list[Vp8Frame] = []
    previous = None
    for packet in packets:
        if previous is not None and (packet.sequence_number - previous - 1) % 65536:
            depacketizer.lost((packet.sequence_number - previous - 1) % 65536)
        previous = packet.sequence_number
        frames.extend(depacketizer.push(packet))
    return frames


def decode(frames: list[Vp8Frame]) -> int:
    codec = av.CodecContext.create("vp8", "r")
    count = 0
    for frame in frames:
        count += len(codec.decode(av.Packet(frame.data)))
    return count + len(codec.decode(None))


class DescriptorTests(SynchronousTestCase):
    def test_minimal(self) -> None:
        """A one-byte descriptor: S bit and partition index, payload right after."""
        descriptor, offset = Vp8PayloadDescriptor.parse(b"\x13payload")
        self.assertEqual(descriptor, Vp8PayloadDescriptor(start_of_partition=True, partition_index=3))
        self.assertEqual(offset, 1)
        self.assertEqual(bytes(descriptor), b"\x13")

    def test_all_extensions(self) -> None:
        """I (15-bit), L, T and K are read in order and rebuilt identically."""
        data = bytes([0xB0, 0xF0, 0x80 | 0x12, 0x34, 0x56, 0b10_1_00111]) + b"vp8"
        descriptor, offset = Vp8PayloadDescriptor.parse(data)
        self.assertEqual(offset, 6)
        self.assertEqual(descriptor.picture_id, 0x1234)
        self.assertTrue(descriptor.picture_id_long)
        self.assertTrue(descriptor.non_reference)
        self.assertEqual(descriptor.tl0_pic_idx, 0x56)
        self.assertEqual((descriptor.tid, descriptor.layer_sync, descriptor.key_idx), (2, True, 7))
        self.assertEqual(bytes(descriptor), data[:6])

    def test_seven_bit_picture_id(self) -> None:
        """A PictureID without the M bit is 7 bits long."""
        descriptor, offset = Vp8PayloadDescriptor.parse(bytes([0x90, 0x80, 0x7F]) + b"x")
        self.assertEqual((descriptor.picture_id, descriptor.picture_id_long, offset), (0x7F, False, 3))
        self.assertEqual(bytes(descriptor), bytes([0x90, 0x80, 0x7F]))

    def test_key_index_only(self) -> None:
        """K without T still carries the TID/Y/KEYIDX byte; TID is then absent."""
        descriptor, offset = Vp8PayloadDescriptor.parse(bytes([0x90, 0x10, 0xC5]) + b"x")
        self.assertEqual((descriptor.tid, descriptor.key_idx, offset), (None, 5, 3))

    def test_errors(self) -> None:
        """Truncated descriptors are refused naming the missing field."""
        cases = [
            (b"", "VP8 payload descriptor is empty"),
            (b"\x90", "VP8 payload descriptor is truncated: X bit set but no extension byte"),
            (b"\x90\x80", "VP8 payload descriptor is truncated before the PictureID"),
            (b"\x90\x80\x80", "VP8 payload descriptor is truncated inside the 15-bit PictureID"),
            (b"\x90\x40", "VP8 payload descriptor is truncated before TL0PICIDX"),
            (b"\x90\x20", "VP8 payload descriptor is truncated before TID/Y/KEYIDX"),
            (b"\x18", "VP8 partition index 8 is above 7"),
        ]
        for data, message in cases:
            self.assertEqual(str(self.assertRaises(ValueError, Vp8PayloadDescriptor.parse, data)), message)

    def test_build_errors(self) -> None:
        """PictureIDs that do not fit their size are refused."""
        error = self.assertRaises(ValueError, bytes, Vp8PayloadDescriptor(True, picture_id=128))
        self.assertEqual(str(error), "VP8 PictureID 128 does not fit 7 bits")
        error = self.assertRaises(
            ValueError, bytes, Vp8PayloadDescriptor(True, picture_id=0x8000, picture_id_long=True)
        )
        self.assertEqual(str(error), "VP8 PictureID 32768 does not fit 15 bits")


class FrameTests(SynchronousTestCase):
    def test_whole_stream(self) -> None:
        """The fixture gives 12 frames, keyframes 0 and 6 with their size, consecutive PictureIDs; all decode."""
        frames = depacketize(load_rtp("vp8_160x120.rtp"))
        self.assertEqual(len(frames), 12)
        self.assertEqual([f.keyframe for f in frames], [True] + [False] * 5 + [True] + [False] * 5)
        self.assertEqual((frames[0].width, frames[0].height), (160, 120))
        self.assertEqual([f.picture_id for f in frames], list(range(12)))
        self.assertEqual(decode(frames), 12)

    def test_lost_partition_packet(self) -> None:
        """Losing a packet inside a keyframe drops it and every frame until the next keyframe."""
        packets = load_rtp("vp8_160x120.rtp")
        del packets[3]
        depacketizer = Vp8Depacketizer()
        frames = depacketize(packets, depacketizer)
        self.assertEqual([f.picture_id for f in frames], list(range(6, 12)))
        self.assertEqual((depacketizer.dropped_broken, depacketizer.dropped_waiting_keyframe), (1, 5))
        self.assertEqual(decode(frames), 6)

    def test_keyframe_needed(self) -> None:
        """keyframe_needed holds from the start until a keyframe, and from a broken frame to the next one."""
        packets = load_rtp("vp8_160x120.rtp")
        depacketizer = Vp8Depacketizer()
        self.assertTrue(depacketizer.keyframe_needed)
        for packet in packets[:10]:
            depacketizer.push(packet)
        self.assertFalse(depacketizer.keyframe_needed)
        depacketizer.lost(1)  # packet 10 (start of frame 2) lost
        for packet in packets[11:14]:
            depacketizer.push(packet)
        self.assertTrue(depacketizer.keyframe_needed)
        for packet in packets[18:26]:
            depacketizer.push(packet)
        self.assertFalse(depacketizer.keyframe_needed)

    def test_lost_whole_frame(self) -> None:
        """A whole inter frame lost: the PictureID jumps, so the chain is broken until the next keyframe."""
        packets = load_rtp("vp8_160x120.rtp")
        del packets[10:12]  # frame 2
        frames = depacketize(packets)
        self.assertEqual([f.picture_id for f in frames], [0, 1, 6, 7, 8, 9, 10, 11])

    def test_gap_with_consecutive_picture_ids(self) -> None:
        """A gap between frames whose PictureIDs are consecutive breaks nothing."""
        packets = load_rtp("vp8_160x120.rtp")
        for packet in packets[10:]:
            packet.sequence_number = (packet.sequence_number + 1) % 65536  # a lost packet that carried no frame
        frames = depacketize(packets)
        self.assertEqual(len(frames), 12)

    def test_without_drop_until_keyframe(self) -> None:
        """With drop_until_keyframe off, only the broken frame is dropped."""
        packets = load_rtp("vp8_160x120.rtp")
        del packets[11]
        frames = depacketize(packets, Vp8Depacketizer(drop_until_keyframe=False))
        self.assertEqual(len(frames), 11)

    def test_malformed_descriptor(self) -> None:
        """A malformed descriptor breaks the frame, counted with its message."""
        depacketizer = Vp8Depacketizer(drop_until_keyframe=False)
        self.assertEqual(depacketizer.push(RtpPacket(97, True, 1, 0, 1, payload=b"\x90")), [])
        self.assertEqual(
            depacketizer.last_error, "VP8 payload descriptor is truncated: X bit set but no extension byte"
        )
        self.assertEqual((depacketizer.errors, depacketizer.dropped_broken), (1, 1))
        depacketizer.push(RtpPacket(97, True, 2, 0, 1, payload=b"\x10"))
        self.assertEqual(depacketizer.last_error, "VP8 payload is empty after the descriptor")

    def test_keyframe_size(self) -> None:
        """Keyframe headers give width and height; inter frames give None."""
        header = b"\x50\x42\x00\x9d\x01\x2a" + struct.pack("<HH", 640 | 0x4000, 360)
        self.assertEqual(parse_keyframe_size(header), (640, 360))
        self.assertIsNone(parse_keyframe_size(b"\x51" + header[1:]))


class PacketizerTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Packetizing the fixture's frames with a small MTU and depacketizing gives the same frames back."""
        original = depacketize(load_rtp("vp8_160x120.rtp"))
        packetizer = Vp8Packetizer(ssrc=3, sequence_number=65500, mtu=200, picture_id=0x7FFA)
        packets = [p for f in original for p in packetizer.packetize(f.data, f.timestamp)]
        self.assertTrue(all(len(p.payload) <= 200 for p in packets))
        frames = depacketize(packets)
        self.assertEqual([f.data for f in frames], [f.data for f in original])
        self.assertEqual(frames[6].picture_id, 0)  # 15-bit PictureID wrapped
        self.assertEqual(decode(frames), 12)
