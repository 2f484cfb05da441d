"""Tests for wcsgw.rtmp.flv, including FLV files read back by PyAV (FFmpeg's demuxer and decoders)."""

from __future__ import annotations

import fractions
import io
import struct
from typing import Any

import av
import av.logging
from twisted.trial.unittest import SynchronousTestCase

from tests.rtmp_media import aac_tags, av_metadata, av_tags, h264_tags
from wcsgw.rtmp import amf0
from wcsgw.rtmp.flv import (
    FlvTag,
    FlvWriter,
    TagType,
    aac_audio_tag,
    aac_sequence_header_tag,
    avc_decoder_configuration_record,
    avc_end_of_sequence_tag,
    avc_sequence_header_tag,
    avc_video_tag,
    flv_file_bytes,
    metadata_tag,
    parse_flv,
    parse_metadata,
    pcma_audio_tag,
    pcmu_audio_tag,
    speex_audio_tag,
    split_annexb,
)

SPS = bytes.fromhex("6742c00bda0a11f961")
PPS = bytes.fromhex("68ce0fc8")


def decode_all(data: bytes) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """Demux and decode an FLV file with PyAV; return stream info, frame counts and error logs."""
    counts = {"video": 0, "audio": 0}
    previous_level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV silences FFmpeg's log by default
    try:
        with av.logging.Capture() as logs:
            with av.open(io.BytesIO(data), mode="r", format="flv") as container:
                info: dict[str, Any] = {
                    s.type: (s.codec_context.name, getattr(s.codec_context, "sample_rate", None))
                    for s in container.streams
                }
                for packet in container.demux():
                    for _frame in packet.decode():
                        counts[packet.stream.type] += 1
    finally:
        av.logging.set_level(previous_level)
    errors = [message for level, _name, message in logs if level <= av.logging.ERROR]
    return info, counts, errors


class TagTests(SynchronousTestCase):
    def test_tag_bytes(self) -> None:
        """A tag is TagType, DataSize (24), Timestamp (24) + TimestampExtended, StreamID 0, body."""
        tag = FlvTag(TagType.AUDIO, 0x12345678, b"abc")
        self.assertEqual(bytes(tag), b"\x08\x00\x00\x03\x34\x56\x78\x12\x00\x00\x00abc")

    def test_validation(self) -> None:
        """Unknown types, out-of-range timestamps and oversized bodies are refused."""
        with self.assertRaises(ValueError) as caught:
            FlvTag(7, 0, b"")  # type: ignore[arg-type]
        self.assertEqual(str(caught.exception), "FLV tag type 7 is not 8 (audio), 9 (video) or 18 (script)")
        with self.assertRaises(ValueError):
            FlvTag(TagType.VIDEO, -1, b"")
        with self.assertRaises(ValueError):
            FlvTag(TagType.VIDEO, 1 << 32, b"")

    def test_int_type_becomes_enum(self) -> None:
        """A plain int tag type is turned into TagType; the class exposes AUDIO/VIDEO/SCRIPT."""
        self.assertIs(FlvTag(9, 0, b"").tag_type, TagType.VIDEO)  # type: ignore[arg-type]
        self.assertEqual((FlvTag.AUDIO, FlvTag.VIDEO, FlvTag.SCRIPT), (8, 9, 18))

    def test_from_body_flags(self) -> None:
        """from_body derives keyframe and sequence-header flags from the body."""
        self.assertEqual(FlvTag.from_body(9, 0, b"\x17\x00\x00\x00\x00").is_sequence_header, True)
        self.assertEqual(FlvTag.from_body(9, 0, b"\x17\x01\x00\x00\x00").is_keyframe, True)
        self.assertEqual(FlvTag.from_body(9, 0, b"\x27\x01\x00\x00\x00").is_keyframe, False)
        self.assertEqual(FlvTag.from_body(8, 0, b"\xaf\x00\x12\x10").is_sequence_header, True)
        self.assertEqual(FlvTag.from_body(8, 0, b"\xaf\x01\x21").is_sequence_header, False)


class AvcTests(SynchronousTestCase):
    def test_split_annexb(self) -> None:
        """Both start code lengths split; trailing zero bytes are dropped."""
        data = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x00\x01\x65\xcc\xdd"
        self.assertEqual(split_annexb(data), [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc\xdd"])

    def test_split_annexb_requires_start_code(self) -> None:
        """Data not starting with a start code is refused."""
        with self.assertRaises(ValueError) as caught:
            split_annexb(b"\x67\xaa")
        self.assertEqual(str(caught.exception), "Annex B data does not start with a 00 00 01 start code")

    def test_decoder_configuration_record(self) -> None:
        """The record carries profile, compatibility and level from the SPS and 4-byte lengths."""
        record = avc_decoder_configuration_record([SPS], [PPS])
        expected = b"\x01\x42\xc0\x0b\xff\xe1" + struct.pack(">H", len(SPS)) + SPS + b"\x01"
        expected += struct.pack(">H", len(PPS)) + PPS
        self.assertEqual(record, expected)

    def test_record_validation(self) -> None:
        """SPS and PPS must be present and of the right NAL types."""
        with self.assertRaises(ValueError):
            avc_decoder_configuration_record([], [PPS])
        with self.assertRaises(ValueError):
            avc_decoder_configuration_record([SPS], [])
        with self.assertRaises(ValueError) as caught:
            avc_decoder_configuration_record([PPS], [PPS])
        self.assertEqual(str(caught.exception), "SPS must be a NAL unit of type 7 with at least 4 bytes")
        with self.assertRaises(ValueError):
            avc_decoder_configuration_record([SPS], [SPS])

    def test_sequence_header_tag(self) -> None:
        """The AVC sequence header is a keyframe with AVCPacketType 0 and the record."""
        tag = avc_sequence_header_tag(0, [SPS], [PPS])
        self.assertEqual(tag.body[:5], b"\x17\x00\x00\x00\x00")
        self.assertEqual((tag.is_keyframe, tag.is_sequence_header), (True, True))

    def test_video_tag(self) -> None:
        """NALU tags have frame type, AVCPacketType 1, composition time and length-prefixed NALs."""
        tag = avc_video_tag(40, [b"\x41\x01", b"\x41\x02\x03"], keyframe=False, composition_time_ms=-2)
        self.assertEqual(
            tag.body, b"\x27\x01\xff\xff\xfe\x00\x00\x00\x02\x41\x01\x00\x00\x00\x03\x41\x02\x03"
        )
        self.assertFalse(tag.is_keyframe)
        self.assertEqual(avc_video_tag(0, [b"\x65"], keyframe=True).body[0], 0x17)

    def test_video_tag_validation(self) -> None:
        """A video tag needs NAL units, none empty, and a 24-bit composition time."""
        with self.assertRaises(ValueError):
            avc_video_tag(0, [], keyframe=True)
        with self.assertRaises(ValueError):
            avc_video_tag(0, [b""], keyframe=True)
        with self.assertRaises(ValueError):
            avc_video_tag(0, [b"\x65"], keyframe=True, composition_time_ms=1 << 23)

    def test_media_tags_are_checked_tags(self) -> None:
        """The video and AAC builders make the tag ``FlvTag`` would (an enum type, both flags), and refuse what it
        refuses: a timestamp outside 32 bits, a body over 16 MiB."""
        for keyframe in (False, True):
            tag = avc_video_tag(40, [b"\x65\x01"], keyframe)
            self.assertEqual(tag, FlvTag(TagType.VIDEO, 40, tag.body, keyframe))
            self.assertIs(type(tag.tag_type), TagType)
            self.assertEqual((tag.is_keyframe, tag.is_sequence_header), (keyframe, False))
        audio = aac_audio_tag(23, b"\x21\x00")
        self.assertEqual(audio, FlvTag(TagType.AUDIO, 23, b"\xaf\x01\x21\x00"))
        for timestamp in (-1, 1 << 32):
            with self.assertRaises(ValueError):
                avc_video_tag(timestamp, [b"\x65"], keyframe=True)
            with self.assertRaises(ValueError):
                aac_audio_tag(timestamp, b"\x21")
        with self.assertRaises(ValueError):
            avc_video_tag(0, [bytes(0x1000000)], keyframe=True)

    def test_end_of_sequence(self) -> None:
        """The end-of-sequence tag is AVCPacketType 2."""
        self.assertEqual(avc_end_of_sequence_tag(5).body, b"\x17\x02\x00\x00\x00")


class AudioTests(SynchronousTestCase):
    def test_aac(self) -> None:
        """AAC tags start 0xAF, then AACPacketType 0 (config) or 1 (raw frame)."""
        header = aac_sequence_header_tag(0, b"\x12\x10")
        self.assertEqual(header.body, b"\xaf\x00\x12\x10")
        self.assertTrue(header.is_sequence_header)
        self.assertEqual(aac_audio_tag(23, b"\x21\x00").body, b"\xaf\x01\x21\x00")

    def test_aac_validation(self) -> None:
        """A too-short AudioSpecificConfig and ADTS-framed AAC are refused."""
        with self.assertRaises(ValueError):
            aac_sequence_header_tag(0, b"\x12")
        with self.assertRaises(ValueError) as caught:
            aac_audio_tag(0, b"\xff\xf1\x50\x80")
        self.assertEqual(
            str(caught.exception), "AAC frame starts with an ADTS header; FLV carries raw frames"
        )

    def test_g711_and_speex_flags(self) -> None:
        """G.711 is SoundFormat 8 (mu-law) / 7 (A-law), 16-bit mono; Speex is 11 with rate 0, mono."""
        self.assertEqual(pcmu_audio_tag(0, b"\xff").body, b"\x82\xff")
        self.assertEqual(pcma_audio_tag(0, b"\xd5").body, b"\x72\xd5")
        self.assertEqual(speex_audio_tag(0, b"\x01").body, b"\xb2\x01")


class ScriptTests(SynchronousTestCase):
    def test_rtmp_metadata(self) -> None:
        """For RTMP the script data is @setDataFrame, onMetaData and an ECMA array."""
        tag = metadata_tag({"width": 640.0})
        self.assertEqual(tag.tag_type, TagType.SCRIPT)
        values = amf0.decode(tag.body)
        self.assertEqual(values, ["@setDataFrame", "onMetaData", {"width": 640.0}])
        self.assertIsInstance(values[2], amf0.EcmaArray)

    def test_file_metadata(self) -> None:
        """For files the script data is plain onMetaData; parse_metadata reads both forms."""
        tag = metadata_tag({"duration": 3.0}, set_data_frame=False)
        self.assertEqual(amf0.decode(tag.body)[0], "onMetaData")
        self.assertEqual(parse_metadata(tag.body), ("onMetaData", {"duration": 3.0}))
        self.assertEqual(parse_metadata(metadata_tag({"a": 1.0}).body), ("onMetaData", {"a": 1.0}))


class FileTests(SynchronousTestCase):
    def test_header_and_previous_tag_sizes(self) -> None:
        """A file is the 9-byte header, PreviousTagSize0 = 0, then each tag and 11 + DataSize."""
        data = flv_file_bytes([FlvTag(TagType.AUDIO, 0, b"\x82\x00")])
        self.assertEqual(data[:13], b"FLV\x01\x04\x00\x00\x00\x09\x00\x00\x00\x00")
        self.assertEqual(data[-4:], struct.pack(">I", 13))

    def test_writer_flags(self) -> None:
        """FlvWriter sets the audio and video flags it is told."""
        self.assertEqual(FlvWriter(has_audio=False, has_video=True).getvalue()[4], 0x01)
        self.assertEqual(FlvWriter().getvalue()[4], 0x05)

    def test_parse_round_trip(self) -> None:
        """parse_flv reads back exactly the tags written, with derived flags."""
        tags = [
            metadata_tag({"a": 1.0}, set_data_frame=False),
            avc_sequence_header_tag(0, [SPS], [PPS]),
            avc_video_tag(0x01000000, [b"\x65\x88"], keyframe=True),
            aac_sequence_header_tag(0, b"\x12\x10"),
        ]
        parsed = parse_flv(flv_file_bytes(tags))
        self.assertEqual(parsed.tags, tags)
        self.assertEqual((parsed.has_audio, parsed.has_video), (True, True))

    def test_parse_errors(self) -> None:
        """parse_flv names what is wrong: signature, version, offset, sizes, truncation, stream id."""
        good = flv_file_bytes([FlvTag(TagType.AUDIO, 0, b"\x82\x00")])
        cases = [
            (b"FLV", "FLV file of 3 bytes is shorter than its 13-byte header"),
            (b"FLX" + good[3:], "FLV signature is b'FLX', expected b'FLV'"),
            (good[:3] + b"\x02" + good[4:], "FLV version 2 is not 1"),
            (good[:4] + b"\x08" + good[5:], "FLV header has reserved flag bits set: 0x08"),
            (good[:5] + b"\x00\x00\x00\x0a" + good[9:], "FLV DataOffset is 10, expected 9"),
            (good[:9] + b"\x00\x00\x00\x01" + good[13:], "PreviousTagSize0 is 1, expected 0"),
            (good[:-1], "FLV truncated: tag at offset 13 needs 2 body bytes and PreviousTagSize, 5 left"),
            (good[:-4] + b"\x00\x00\x00\x0c", "PreviousTagSize after tag at offset 13 is 12, expected 13"),
            (good[:13] + b"\x07" + good[14:], "FLV tag at offset 13 has unknown TagType 7"),
            (good[:13] + b"\x28" + good[14:], "FLV tag at offset 13 has reserved/filter bits set: 0x28"),
            (good[:21] + b"\x00\x00\x01" + good[24:], "FLV tag at offset 13 has StreamID 1, expected 0"),
            (good + b"\x08\x00", "FLV truncated: tag header at offset 30 needs 11 bytes, 2 left"),
        ]
        for data, message in cases:
            with self.assertRaises(ValueError) as caught:
                parse_flv(data)
            self.assertEqual(str(caught.exception), message)


class PyAvReadBackTests(SynchronousTestCase):
    def test_h264_and_aac_decode(self) -> None:
        """Real H.264 (libx264) and AAC in our FLV demux and decode in PyAV without errors."""
        tags = av_tags(2, set_data_frame=False)
        info, counts, errors = decode_all(flv_file_bytes(tags))
        self.assertEqual(info, {"video": ("h264", None), "audio": ("aac", 44100)})
        self.assertEqual(counts["video"], 50)
        self.assertGreaterEqual(counts["audio"], 85)
        self.assertEqual(errors, [])

    def test_metadata_read_by_demuxer(self) -> None:
        """FFmpeg's FLV demuxer picks up our onMetaData (string values become metadata)."""
        data = flv_file_bytes([metadata_tag(av_metadata(), set_data_frame=False)] + h264_tags(1)[:3])
        with av.open(io.BytesIO(data), format="flv") as container:
            self.assertEqual(container.metadata.get("encoder"), "wcsgw tests")
            self.assertEqual(
                (container.streams.video[0].width, container.streams.video[0].height), (160, 120)
            )

    def test_sequence_headers_configure_decoders(self) -> None:
        """The AVC and AAC sequence headers alone give PyAV the decoders' extradata."""
        video = h264_tags(1)
        audio = aac_tags(1)
        data = flv_file_bytes([video[0], audio[0]] + video[1:4] + audio[1:4])
        with av.open(io.BytesIO(data), format="flv") as container:
            video_extradata = bytes(container.streams.video[0].codec_context.extradata or b"")
            audio_extradata = bytes(container.streams.audio[0].codec_context.extradata or b"")
        self.assertEqual(video_extradata, video[0].body[5:])
        self.assertEqual(audio_extradata, audio[0].body[2:])

    def test_g711_decodes(self) -> None:
        """PCMU tags made from PyAV's mu-law encoder decode as 8 kHz mono."""
        encoder = av.CodecContext.create("pcm_mulaw", "w")
        encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
        encoder.time_base = fractions.Fraction(1, 8000)
        tags = []
        for index in range(10):
            frame = av.AudioFrame(format="s16", layout="mono", samples=160)
            frame.sample_rate, frame.pts = 8000, index * 160
            frame.planes[0].update(bytes(320))
            tags += [pcmu_audio_tag(index * 20, bytes(packet)) for packet in encoder.encode(frame)]
        info, counts, errors = decode_all(flv_file_bytes(tags))
        self.assertEqual(info, {"audio": ("pcm_mulaw", 8000)})
        self.assertEqual((counts["audio"], errors), (10, []))

    def test_alaw_and_speex_identified(self) -> None:
        """The demuxer reads A-law as 8 kHz pcm_alaw and Speex as 16 kHz speex."""
        for tag, expected in [
            (pcma_audio_tag(0, b"\xd5" * 160), ("pcm_alaw", 8000)),
            (speex_audio_tag(0, bytes(40)), ("speex", 16000)),
        ]:
            with av.open(io.BytesIO(flv_file_bytes([tag])), format="flv") as container:
                context = container.streams.audio[0].codec_context
                self.assertEqual((context.name, context.sample_rate), expected)
