"""Synthetic H.264 and AAC as FLV tags, made with PyAV, for the RTMP and FLV tests."""

from __future__ import annotations

import fractions
import math
import random
import struct
from typing import Any

import av

from wcsgw.rtmp.flv import (
    NAL_TYPE_PPS,
    NAL_TYPE_SPS,
    FlvTag,
    aac_audio_tag,
    aac_sequence_header_tag,
    avc_sequence_header_tag,
    avc_video_tag,
    metadata_tag,
    split_annexb,
)

NAL_TYPE_AUD = 9


def h264_tags(
    seconds: float, *, fps: int = 25, width: int = 160, height: int = 120, noisy_rows: int = 0
) -> list[FlvTag]:
    """An AVC sequence header, then ``seconds`` of video with a keyframe every second.

    ``noisy_rows`` rows of pseudo-random luma make frames large (several RTMP chunks each).
    """
    noise = random.Random(1)
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps)
    codec.gop_size = fps
    codec.thread_count = 1
    codec.options = {"preset": "ultrafast", "tune": "zerolatency", "keyint_min": str(fps), "scenecut": "0"}
    packets = []
    for index in range(int(seconds * fps)):
        frame = av.VideoFrame(width, height, "yuv420p")
        for number, plane in enumerate(frame.planes):
            # A moving gradient keeps the encoder busy enough to produce real P-frames.
            row = bytes((x + index * 3 + number * 40) & 0xFF for x in range(plane.line_size))
            rows = plane.buffer_size // plane.line_size
            if number == 0 and noisy_rows:
                plane.update(noise.randbytes(plane.line_size * noisy_rows) + row * (rows - noisy_rows))
            else:
                plane.update(row * rows)
        frame.pts = index
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))

    tags: list[FlvTag] = []
    for packet in packets:
        units = split_annexb(bytes(packet))
        assert packet.pts is not None
        timestamp = int(packet.pts * 1000 / fps)
        if packet.is_keyframe and not tags:
            sps = [u for u in units if u[0] & 0x1F == NAL_TYPE_SPS]
            pps = [u for u in units if u[0] & 0x1F == NAL_TYPE_PPS]
            tags.append(avc_sequence_header_tag(0, sps, pps))
        body = [u for u in units if u[0] & 0x1F not in (NAL_TYPE_SPS, NAL_TYPE_PPS, NAL_TYPE_AUD)]
        tags.append(avc_video_tag(timestamp, body, keyframe=packet.is_keyframe))
    return tags


def aac_tags(seconds: float, *, sample_rate: int = 44100, frequency: float = 440.0) -> list[FlvTag]:
    """An AAC sequence header, then ``seconds`` of a mono sine tone as raw AAC frames."""
    codec = av.CodecContext.create("aac", "w")
    codec.sample_rate = sample_rate
    codec.layout = "mono"
    codec.format = "fltp"
    codec.time_base = fractions.Fraction(1, sample_rate)
    codec.open()
    samples = codec.frame_size
    assert codec.extradata is not None
    tags = [aac_sequence_header_tag(0, bytes(codec.extradata))]
    packets = []
    for index in range(int(seconds * sample_rate / samples)):
        frame = av.AudioFrame(format="fltp", layout="mono", samples=samples)
        frame.sample_rate = sample_rate
        start = index * samples
        pcm = b"".join(
            struct.pack("<f", 0.3 * math.sin(2 * math.pi * frequency * (start + n) / sample_rate))
            for n in range(samples)
        )
        frame.planes[0].update(pcm + b"\x00" * (frame.planes[0].buffer_size - len(pcm)))
        frame.pts = start
        packets.extend(codec.encode(frame))
    packets.extend(codec.encode(None))
    for packet in packets:
        if packet.pts is None or packet.pts < 0:
            continue
        tags.append(aac_audio_tag(int(packet.pts * 1000 / sample_rate), bytes(packet)))
    return tags


def av_metadata(width: int = 160, height: int = 120, fps: int = 25) -> dict[str, Any]:
    return {
        "width": float(width),
        "height": float(height),
        "framerate": float(fps),
        "videocodecid": 7.0,
        "audiocodecid": 10.0,
        "audiosamplerate": 44100.0,
        "stereo": False,
        "encoder": "wcsgw tests",
    }


def av_tags(seconds: float, *, set_data_frame: bool = True, **video_options: Any) -> list[FlvTag]:
    """Metadata, both sequence headers, then audio and video interleaved by timestamp."""
    video = h264_tags(seconds, **video_options)
    audio = aac_tags(seconds)
    size = av_metadata(video_options.get("width", 160), video_options.get("height", 120))
    headers = [metadata_tag(size, set_data_frame=set_data_frame), video[0], audio[0]]
    media = sorted(video[1:] + audio[1:], key=lambda tag: (tag.timestamp_ms, tag.tag_type))
    return headers + media
