"""FLV tags (Adobe "Video File Format Specification", version 10): builders, file writer and a strict reader.

An :class:`FlvTag` is what the media pipeline hands to the RTMP publisher: a tag type, a
timestamp in milliseconds and the tag body (``AUDIODATA``, ``VIDEODATA`` or ``SCRIPTDATA``),
which is also the payload of the RTMP audio (8), video (9) and AMF0 data (18) messages.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Final

from wcsgw.rtmp import amf0
from wcsgw.rtp import h264


class TagType(enum.IntEnum):
    """FLV ``TagType`` (equal to the RTMP message type ids of the same payloads)."""

    AUDIO = 8
    VIDEO = 9
    SCRIPT = 18


# VIDEODATA FrameType and CodecID.
FRAME_TYPE_KEY: Final = 1
FRAME_TYPE_INTER: Final = 2
CODEC_ID_AVC: Final = 7
# AVCVIDEOPACKET AVCPacketType.
AVC_SEQUENCE_HEADER: Final = 0
AVC_NALU: Final = 1
AVC_END_OF_SEQUENCE: Final = 2

# AUDIODATA SoundFormat.
SOUND_FORMAT_G711_A_LAW: Final = 7
SOUND_FORMAT_G711_MU_LAW: Final = 8
SOUND_FORMAT_AAC: Final = 10
SOUND_FORMAT_SPEEX: Final = 11
# AACAUDIODATA AACPacketType.
AAC_SEQUENCE_HEADER: Final = 0
AAC_RAW: Final = 1

# The fixed first byte of each kind of AUDIODATA we produce:
# SoundFormat(4) | SoundRate(2) | SoundSize(1) | SoundType(1).
_AAC_FLAGS: Final = (SOUND_FORMAT_AAC << 4) | (3 << 2) | (1 << 1) | 1  # spec: always 44 kHz, 16 bit, stereo
_G711_RATE_SIZE_TYPE: Final = (0 << 2) | (1 << 1) | 0  # 8 kHz is implied by the format; 16 bit; mono
_SPEEX_FLAGS: Final = (SOUND_FORMAT_SPEEX << 4) | (0 << 2) | (1 << 1) | 0  # spec: rate 0, 16 bit, mono
_AAC_RAW_HEADER: Final = bytes((_AAC_FLAGS, AAC_RAW))  # the first two bytes of every AAC frame's tag

NAL_TYPE_SPS: Final = 7
NAL_TYPE_PPS: Final = 8

FLV_HEADER_SIZE: Final = 9
TAG_HEADER_SIZE: Final = 11
_MAX_DATA_SIZE: Final = 0xFFFFFF
_MAX_TIMESTAMP: Final = 0xFFFFFFFF


@dataclasses.dataclass(slots=True)
class FlvTag:
    """One FLV tag: type, timestamp (ms, 32 bits) and body.  Treat it as immutable: it is shared by every
    destination of a stream.  (Not a frozen dataclass: one is made per frame, and frozen ones are slow to make.)"""

    AUDIO: ClassVar[TagType] = TagType.AUDIO
    VIDEO: ClassVar[TagType] = TagType.VIDEO
    SCRIPT: ClassVar[TagType] = TagType.SCRIPT

    tag_type: TagType
    timestamp_ms: int
    body: bytes
    is_keyframe: bool = False
    is_sequence_header: bool = False

    def __post_init__(self) -> None:
        if self.tag_type not in (8, 9, 18):
            raise ValueError(f"FLV tag type {self.tag_type} is not 8 (audio), 9 (video) or 18 (script)")
        if not 0 <= self.timestamp_ms <= _MAX_TIMESTAMP:
            raise ValueError(f"FLV timestamp {self.timestamp_ms} ms is outside 0..4294967295")
        if len(self.body) > _MAX_DATA_SIZE:
            raise ValueError(f"FLV tag body of {len(self.body)} bytes exceeds 16777215 bytes")
        if not isinstance(self.tag_type, TagType):
            object.__setattr__(self, "tag_type", TagType(self.tag_type))

    @classmethod
    def from_body(cls, tag_type: int, timestamp_ms: int, body: bytes) -> FlvTag:
        """Build a tag, deriving ``is_keyframe`` and ``is_sequence_header`` from the body."""
        keyframe = False
        header = False
        if tag_type == TagType.VIDEO and body:
            keyframe = body[0] >> 4 == FRAME_TYPE_KEY
            header = body[0] & 0x0F == CODEC_ID_AVC and len(body) > 1 and body[1] == AVC_SEQUENCE_HEADER
        elif tag_type == TagType.AUDIO and body:
            header = body[0] >> 4 == SOUND_FORMAT_AAC and len(body) > 1 and body[1] == AAC_SEQUENCE_HEADER
        return cls(TagType(tag_type), timestamp_ms, bytes(body), keyframe, header)

    def __bytes__(self) -> bytes:
        """The tag as it appears in a file: 11-byte header and body (without PreviousTagSize)."""
        ts = self.timestamp_ms
        header = (
            bytes([int(self.tag_type)])
            + len(self.body).to_bytes(3, "big")
            + (ts & 0xFFFFFF).to_bytes(3, "big")
            + bytes([ts >> 24])
            + b"\x00\x00\x00"  # StreamID, always 0
        )
        return header + self.body


# --------------------------------------------------------------------------- H.264 / AVC


def split_annexb(data: bytes) -> list[bytes]:
    """Split an H.264 Annex B byte stream into NAL units; ``ValueError`` unless it starts with a start code."""
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        raise ValueError("Annex B data does not start with a 00 00 01 start code")
    return h264.split_annexb(data)


def avc_decoder_configuration_record(sps_list: Sequence[bytes], pps_list: Sequence[bytes]) -> bytes:
    """An ISO/IEC 14496-15 AVCDecoderConfigurationRecord with 4-byte NAL lengths."""
    if not sps_list:
        raise ValueError("AVC configuration needs at least one SPS")
    if not pps_list:
        raise ValueError("AVC configuration needs at least one PPS")
    if len(sps_list) > 31:
        raise ValueError(f"AVC configuration holds at most 31 SPS, got {len(sps_list)}")
    if len(pps_list) > 255:
        raise ValueError(f"AVC configuration holds at most 255 PPS, got {len(pps_list)}")
    for sps in sps_list:
        if len(sps) < 4 or sps[0] & 0x1F != NAL_TYPE_SPS:
            raise ValueError("SPS must be a NAL unit of type 7 with at least 4 bytes")
    for pps in pps_list:
        if not pps or pps[0] & 0x1F != NAL_TYPE_PPS:
            raise ValueError("PPS must be a NAL unit of type 8")
    first = sps_list[0]
    out = bytearray([1, first[1], first[2], first[3], 0xFC | 3, 0xE0 | len(sps_list)])
    for sps in sps_list:
        out += struct.pack(">H", len(sps)) + sps
    out.append(len(pps_list))
    for pps in pps_list:
        out += struct.pack(">H", len(pps)) + pps
    return bytes(out)


def avc_sequence_header_tag(
    timestamp_ms: int, sps_list: Sequence[bytes], pps_list: Sequence[bytes]
) -> FlvTag:
    """The AVC sequence header video tag carrying the decoder configuration record."""
    record = avc_decoder_configuration_record(sps_list, pps_list)
    body = bytes([(FRAME_TYPE_KEY << 4) | CODEC_ID_AVC, AVC_SEQUENCE_HEADER, 0, 0, 0]) + record
    return FlvTag(TagType.VIDEO, timestamp_ms, body, is_keyframe=True, is_sequence_header=True)


_new_tag = object.__new__
# The first five bytes of AVC NALU video tags without a composition time offset, by keyframe.
_AVC_NALU_HEADERS = {
    keyframe: bytes((((FRAME_TYPE_KEY if keyframe else FRAME_TYPE_INTER) << 4) | CODEC_ID_AVC, AVC_NALU, 0, 0, 0))
    for keyframe in (False, True)}


def _media_tag(tag_type: TagType, timestamp_ms: int, body: bytes, keyframe: bool) -> FlvTag:
    """The tag of a builder below, which made its type and body itself: ``FlvTag``'s checks, in fewer steps (one
    tag is made per frame)."""
    if not 0 <= timestamp_ms <= _MAX_TIMESTAMP or len(body) > _MAX_DATA_SIZE:
        return FlvTag(tag_type, timestamp_ms, body, keyframe)  # raises, with the reason
    tag: FlvTag = _new_tag(FlvTag)
    tag.tag_type = tag_type
    tag.timestamp_ms = timestamp_ms
    tag.body = body
    tag.is_keyframe = keyframe
    tag.is_sequence_header = False
    return tag


def avc_video_tag(
    timestamp_ms: int, nal_units: Iterable[bytes], keyframe: bool, composition_time_ms: int = 0
) -> FlvTag:
    """An AVC NALU video tag: NAL units (without start codes) with 4-byte big-endian lengths."""
    if composition_time_ms:
        if not -0x800000 <= composition_time_ms <= 0x7FFFFF:
            raise ValueError(f"composition time {composition_time_ms} ms does not fit in 24 signed bits")
        frame_type = FRAME_TYPE_KEY if keyframe else FRAME_TYPE_INTER
        parts = [bytes(((frame_type << 4) | CODEC_ID_AVC, AVC_NALU))
                 + (composition_time_ms & 0xFFFFFF).to_bytes(3, "big")]
    else:
        parts = [_AVC_NALU_HEADERS[bool(keyframe)]]
    append = parts.append
    for unit in nal_units:  # one join: the NAL units are copied once
        if not unit:
            raise ValueError("empty NAL unit")
        append(len(unit).to_bytes(4, "big"))
        append(unit)
    if len(parts) == 1:
        raise ValueError("AVC video tag needs at least one NAL unit")
    return _media_tag(TagType.VIDEO, timestamp_ms, b"".join(parts), bool(keyframe))


def avc_end_of_sequence_tag(timestamp_ms: int) -> FlvTag:
    """The AVC end-of-sequence video tag."""
    body = bytes([(FRAME_TYPE_KEY << 4) | CODEC_ID_AVC, AVC_END_OF_SEQUENCE, 0, 0, 0])
    return FlvTag(TagType.VIDEO, timestamp_ms, body, is_keyframe=True)


# --------------------------------------------------------------------------- audio


def aac_sequence_header_tag(timestamp_ms: int, audio_specific_config: bytes) -> FlvTag:
    """The AAC sequence header audio tag (AudioSpecificConfig, ISO 14496-3)."""
    if len(audio_specific_config) < 2:
        raise ValueError(f"AudioSpecificConfig needs at least 2 bytes, got {len(audio_specific_config)}")
    body = bytes([_AAC_FLAGS, AAC_SEQUENCE_HEADER]) + audio_specific_config
    return FlvTag(TagType.AUDIO, timestamp_ms, body, is_sequence_header=True)


def aac_audio_tag(timestamp_ms: int, raw_aac_frame: bytes) -> FlvTag:
    """An AAC raw frame audio tag (no ADTS header)."""
    if raw_aac_frame[:2] == b"\xff\xf1" or raw_aac_frame[:2] == b"\xff\xf9":
        raise ValueError("AAC frame starts with an ADTS header; FLV carries raw frames")
    return _media_tag(TagType.AUDIO, timestamp_ms, _AAC_RAW_HEADER + raw_aac_frame, False)


def g711_audio_tag(timestamp_ms: int, payload: bytes, *, mu_law: bool) -> FlvTag:
    """A G.711 audio tag, 8 kHz mono: SoundFormat 8 (mu-law) or 7 (A-law)."""
    sound_format = SOUND_FORMAT_G711_MU_LAW if mu_law else SOUND_FORMAT_G711_A_LAW
    return FlvTag(TagType.AUDIO, timestamp_ms, bytes([(sound_format << 4) | _G711_RATE_SIZE_TYPE]) + payload)


def pcmu_audio_tag(timestamp_ms: int, payload: bytes) -> FlvTag:
    """A G.711 mu-law (PCMU) audio tag."""
    return g711_audio_tag(timestamp_ms, payload, mu_law=True)


def pcma_audio_tag(timestamp_ms: int, payload: bytes) -> FlvTag:
    """A G.711 A-law (PCMA) audio tag."""
    return g711_audio_tag(timestamp_ms, payload, mu_law=False)


def speex_audio_tag(timestamp_ms: int, payload: bytes) -> FlvTag:
    """A Speex audio tag (SoundFormat 11, 16 kHz mono as the spec requires)."""
    return FlvTag(TagType.AUDIO, timestamp_ms, bytes([_SPEEX_FLAGS]) + payload)


# --------------------------------------------------------------------------- script data


def metadata_tag(
    metadata: Mapping[str, Any], *, set_data_frame: bool = True, timestamp_ms: int = 0
) -> FlvTag:
    """An ``onMetaData`` script tag with the values as an ECMA array.

    With ``set_data_frame`` (the RTMP path) the body starts with ``@setDataFrame`` so the server
    stores it and replays it to players; files take the plain ``onMetaData`` form.
    """
    values: list[Any] = ["@setDataFrame"] if set_data_frame else []
    values += ["onMetaData", amf0.EcmaArray(metadata)]
    return FlvTag(TagType.SCRIPT, timestamp_ms, amf0.encode(*values))


# --------------------------------------------------------------------------- files


class FlvWriter:
    """Accumulates an FLV file: header, PreviousTagSize0, then each tag and its PreviousTagSize."""

    def __init__(self, *, has_audio: bool = True, has_video: bool = True) -> None:
        flags = (0x04 if has_audio else 0) | (0x01 if has_video else 0)
        self._parts: list[bytes] = [
            b"FLV" + struct.pack(">BBI", 1, flags, FLV_HEADER_SIZE) + b"\x00\x00\x00\x00"
        ]

    def write(self, tag: FlvTag) -> None:
        raw = bytes(tag)
        self._parts.append(raw)
        self._parts.append(struct.pack(">I", len(raw)))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def flv_file_bytes(
    tags: Iterable[FlvTag], *, has_audio: bool | None = None, has_video: bool | None = None
) -> bytes:
    """A whole FLV file; the header flags default to the tag types present."""
    tag_list = list(tags)
    if has_audio is None:
        has_audio = any(t.tag_type == TagType.AUDIO for t in tag_list)
    if has_video is None:
        has_video = any(t.tag_type == TagType.VIDEO for t in tag_list)
    writer = FlvWriter(has_audio=has_audio, has_video=has_video)
    for tag in tag_list:
        writer.write(tag)
    return writer.getvalue()


@dataclasses.dataclass(frozen=True)
class FlvFile:
    """A parsed FLV file."""

    has_audio: bool
    has_video: bool
    tags: list[FlvTag]


def parse_flv(data: bytes) -> FlvFile:
    """Parse a whole FLV file strictly; raise ``ValueError`` naming the first problem."""
    if len(data) < FLV_HEADER_SIZE + 4:
        raise ValueError(f"FLV file of {len(data)} bytes is shorter than its 13-byte header")
    if data[:3] != b"FLV":
        raise ValueError(f"FLV signature is {bytes(data[:3])!r}, expected b'FLV'")
    version, flags, data_offset = struct.unpack_from(">BBI", data, 3)
    if version != 1:
        raise ValueError(f"FLV version {version} is not 1")
    if flags & ~0x05:
        raise ValueError(f"FLV header has reserved flag bits set: 0x{flags:02x}")
    if data_offset != FLV_HEADER_SIZE:
        raise ValueError(f"FLV DataOffset is {data_offset}, expected 9")
    offset = FLV_HEADER_SIZE
    (previous,) = struct.unpack_from(">I", data, offset)
    if previous != 0:
        raise ValueError(f"PreviousTagSize0 is {previous}, expected 0")
    offset += 4
    tags: list[FlvTag] = []
    while offset < len(data):
        if len(data) - offset < TAG_HEADER_SIZE:
            raise ValueError(
                f"FLV truncated: tag header at offset {offset} needs 11 bytes, {len(data) - offset} left"
            )
        first = data[offset]
        if first & 0xE0:
            raise ValueError(f"FLV tag at offset {offset} has reserved/filter bits set: 0x{first:02x}")
        tag_type = first & 0x1F
        if tag_type not in (8, 9, 18):
            raise ValueError(f"FLV tag at offset {offset} has unknown TagType {tag_type}")
        size = int.from_bytes(data[offset + 1 : offset + 4], "big")
        timestamp = int.from_bytes(data[offset + 4 : offset + 7], "big") | (data[offset + 7] << 24)
        stream_id = int.from_bytes(data[offset + 8 : offset + 11], "big")
        if stream_id != 0:
            raise ValueError(f"FLV tag at offset {offset} has StreamID {stream_id}, expected 0")
        body_start = offset + TAG_HEADER_SIZE
        if len(data) - body_start < size + 4:
            raise ValueError(
                f"FLV truncated: tag at offset {offset} needs {size} body bytes and PreviousTagSize,"
                f" {len(data) - body_start} left"
            )
        body = bytes(data[body_start : body_start + size])
        (previous,) = struct.unpack_from(">I", data, body_start + size)
        if previous != TAG_HEADER_SIZE + size:
            raise ValueError(
                f"PreviousTagSize after tag at offset {offset} is {previous}, expected {TAG_HEADER_SIZE + size}"
            )
        tags.append(FlvTag.from_body(tag_type, timestamp, body))
        offset = body_start + size + 4
    return FlvFile(has_audio=bool(flags & 0x04), has_video=bool(flags & 0x01), tags=tags)


def parse_metadata(body: bytes) -> tuple[str, dict[str, Any]]:
    """Decode a script tag body into its name (``onMetaData``) and values, skipping ``@setDataFrame``."""
    values = amf0.decode(body)
    if values and values[0] == "@setDataFrame":
        values = values[1:]
    if len(values) < 2 or not isinstance(values[0], str) or not isinstance(values[1], dict):
        raise ValueError("script data is not a name followed by an object or ECMA array")
    return values[0], dict(values[1])
