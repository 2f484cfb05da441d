"""Tests for wcsgw.media.transcoder: real PyAV codecs, inputs made in the test.

G.711 and Opus payloads are encoded here with PyAV.  PyAV has no Speex encoder, so the Speex inputs are
fixtures: ``tests/fixtures/speex-nb-440hz.spx`` and ``speex-wb-440hz.spx``, one second of a 440 Hz sine made
with ``speexenc -n --rate 8000`` / ``speexenc -w --rate 16000`` (Debian package ``speex``) from raw s16 PCM; the
test reads their packets (one 20 ms Speex frame each, as in an RTP payload) with PyAV's Ogg demuxer.
"""

from __future__ import annotations

import array
import math
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import av.filter
from av.video.frame import PictureType
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from wcsgw.media.transcoder import (
    AudioTranscoder,
    EncodedAudio,
    EncodedVideo,
    VideoTranscoder,
    aac_bitrate,
    g711_to_float,
    source_sample_rate,
    split_annexb,
)
from wcsgw.media.transcoder import _G711_FLOAT

FIXTURES = Path(__file__).parent / "fixtures"
TONE_HZ = 440.0


# -- making inputs ---------------------------------------------------------------------------------------------


def sine(rate: int, seconds: float, frequency: float = TONE_HZ) -> array.array[int]:
    return array.array(
        "h", (int(12000 * math.sin(2 * math.pi * frequency * i / rate)) for i in range(int(rate * seconds)))
    )


def g711_payloads(encoder_name: str, seconds: float) -> list[bytes]:
    """20 ms RTP payloads of a sine in mu-law or A-law."""
    encoder = cast(av.AudioCodecContext, av.CodecContext.create(encoder_name, "w"))
    encoder.sample_rate = 8000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.open()
    samples = sine(8000, seconds)
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
    frame.sample_rate = 8000
    frame.planes[0].update(samples.tobytes())
    data = b"".join(bytes(packet) for packet in encoder.encode(frame))
    return [data[i : i + 160] for i in range(0, len(data), 160)]


def opus_payloads(seconds: float) -> list[bytes]:
    """20 ms Opus packets (48 kHz) of a sine, as RTP payloads."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.open()
    samples = sine(48000, seconds)
    payloads: list[bytes] = []
    for start in range(0, len(samples), 960):
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.sample_rate = 48000
        frame.pts = start
        frame.planes[0].update(samples[start : start + 960].tobytes())
        payloads.extend(bytes(packet) for packet in encoder.encode(frame))
    return payloads


def speex_payloads(name: str) -> list[bytes]:
    with av.open(str(FIXTURES / name)) as container:
        stream = container.streams.audio[0]
        return [bytes(packet) for packet in container.demux(stream) if packet.size]


def test_pattern(width: int, height: int, count: int) -> list[av.VideoFrame]:
    graph = av.filter.Graph()
    source = graph.add("testsrc2", f"size={width}x{height}:rate=30")
    sink = graph.add("buffersink")
    source.link_to(sink)
    graph.configure()
    return [cast(av.VideoFrame, graph.pull()) for _ in range(count)]


def vp8_frames(
    width: int, height: int, count: int, *, start_ms: int = 0, keyframes: tuple[int, ...] = ()
) -> list[tuple[bytes, int]]:
    """(VP8 frame, timestamp ms) at 30 fps; the first frame and the ``keyframes`` indexes are key frames."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.bit_rate = 500_000
    encoder.thread_count = 1
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "g": "1000"}
    out: list[tuple[bytes, int]] = []
    for i, frame in enumerate(test_pattern(width, height, count)):
        frame.pts = start_ms + round(i * 1000 / 30)
        frame.time_base = Fraction(1, 1000)
        frame.pict_type = PictureType.I if i in keyframes else PictureType.NONE
        out.extend((bytes(packet), packet.pts or 0) for packet in encoder.encode(frame))
    return out


def h264_access_units(width: int, height: int, count: int) -> list[tuple[list[bytes], int]]:
    """(NAL units, timestamp ms) as the RTP depacketizer gives them."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 1000)
    encoder.thread_count = 1
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "15"}
    out: list[tuple[list[bytes], int]] = []
    for i, frame in enumerate(test_pattern(width, height, count)):
        frame.pts = round(i * 1000 / 30)
        frame.time_base = Fraction(1, 1000)
        frame.pict_type = PictureType.NONE  # test frames say I: x264 would make them all IDRs
        out.extend((split_annexb(bytes(packet)), packet.pts or 0) for packet in encoder.encode(frame))
    return out


# -- checking outputs ------------------------------------------------------------------------------------------


def decode_aac(config: bytes, outputs: list[EncodedAudio], rate: int) -> array.array[float]:
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = config
    decoder.sample_rate = rate
    decoder.layout = "mono"
    decoder.open()
    samples: array.array[float] = array.array("f")
    for output in outputs:
        for frame in decoder.decode(av.Packet(output.data)):
            samples.frombytes(bytes(frame.planes[0])[: frame.samples * 4])
    return samples


def frequency(samples: array.array[float], rate: int) -> float:
    crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate)


def decode_h264(outputs: list[EncodedVideo]) -> list[av.VideoFrame]:
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for output in outputs:
        data = b"".join(b"\x00\x00\x00\x01" + unit for unit in output.nal_units)
        frames.extend(decoder.decode(av.Packet(data)))
    frames.extend(decoder.decode(None))
    return frames


def nal_types(output: EncodedVideo) -> list[int]:
    return [unit[0] & 0x1F for unit in output.nal_units]


def transcode_audio(transcoder: AudioTranscoder, payloads: list[bytes], start_ms: float = 0.0) -> list[EncodedAudio]:
    outputs: list[EncodedAudio] = []
    for i, payload in enumerate(payloads):
        outputs.extend(transcoder.feed(payload, start_ms + 20 * i))
    outputs.extend(transcoder.flush())
    return outputs


# -- audio -----------------------------------------------------------------------------------------------------


class AudioToAacTests(SynchronousTestCase):
    def test_every_attribute_is_a_slot(self) -> None:
        """The transcoder keeps its attributes in ``__slots__`` (more than 30, see MediaStreamSession's): after
        G.711 in and AAC out, its ``__dict__`` is still empty."""
        transcoder = AudioTranscoder("PCMU", 8000, 1, sample_rate=8000)
        self.assertTrue(transcode_audio(transcoder, g711_payloads("pcm_mulaw", 0.5)))
        self.assertEqual(vars(transcoder), {})

    def assert_tone(self, transcoder: AudioTranscoder, outputs: list[EncodedAudio], seconds: float) -> None:
        self.assertEqual(transcoder.counters.decode_errors, 0)
        self.assertEqual({output.codec for output in outputs}, {"aac"})
        rate = transcoder.sample_rate
        decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, rate)
        self.assertApproximates(len(decoded) / rate, seconds, 3 * 1024 / rate)
        self.assertApproximates(frequency(decoded[2048:-2048], rate), TONE_HZ, 5.0)
        self.assertGreater(max(decoded), 0.2)

    def test_pcmu_to_aac(self) -> None:
        """PCMU payloads become AAC-LC that decodes to the same tone and duration at 44.1 kHz."""
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        outputs = transcode_audio(transcoder, g711_payloads("pcm_mulaw", 2.0))
        self.assert_tone(transcoder, outputs, 2.0)
        # AudioSpecificConfig: AAC LC (2), 44.1 kHz (index 4), mono.
        self.assertEqual((transcoder.audio_specific_config or b"")[:2], bytes([0x12, 0x08]))
        self.assertEqual((outputs[0].sample_rate, outputs[0].channels), (44100, 1))

    def test_pcma_to_aac(self) -> None:
        """PCMA payloads become AAC-LC that decodes to the same tone and duration."""
        transcoder = AudioTranscoder("PCMA", 8000, 1)
        self.assert_tone(transcoder, transcode_audio(transcoder, g711_payloads("pcm_alaw", 2.0)), 2.0)

    def test_opus_to_aac_48k(self) -> None:
        """Opus payloads (48 kHz RTP clock, two channels declared) become mono AAC at 48 kHz."""
        transcoder = AudioTranscoder("opus", 48000, 2, sample_rate=48000)
        self.assert_tone(transcoder, transcode_audio(transcoder, opus_payloads(2.0)), 2.0)
        # 48 kHz is sampling frequency index 3.
        self.assertEqual((transcoder.audio_specific_config or b"")[:2], bytes([0x11, 0x88]))

    def test_speex_narrowband_to_aac(self) -> None:
        """Speex 8 kHz payloads (no Speex header needed) become AAC."""
        transcoder = AudioTranscoder("speex", 8000, 1)
        payloads = speex_payloads("speex-nb-440hz.spx")
        self.assert_tone(transcoder, transcode_audio(transcoder, payloads), len(payloads) * 0.02)

    def test_speex_wideband_to_aac(self) -> None:
        """Speex 16 kHz payloads become AAC."""
        transcoder = AudioTranscoder("speex", 16000, 1)
        payloads = speex_payloads("speex-wb-440hz.spx")
        self.assert_tone(transcoder, transcode_audio(transcoder, payloads), len(payloads) * 0.02)

    def test_timestamps_follow_input(self) -> None:
        """AAC frames are 1024 samples apart on the input's timeline; the first real frame is at the input start."""
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        outputs = transcode_audio(transcoder, g711_payloads("pcm_mulaw", 1.0), start_ms=1000.0)
        stamps = [output.timestamp_ms for output in outputs]
        # The first packet is the encoder's priming frame, one frame before the input starts.
        self.assertEqual(stamps[:3], [977, 1000, 1023])
        for k, stamp in enumerate(stamps[1:]):
            self.assertApproximates(stamp, 1000 + k * 1024 * 1000 / 44100, 1)

    def test_first_output_not_negative(self) -> None:
        """At timeline 0 the priming frame is clamped to 0: outputs are never negative nor decreasing."""
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        stamps = [output.timestamp_ms for output in transcode_audio(transcoder, g711_payloads("pcm_mulaw", 0.5))]
        self.assertEqual(stamps[:3], [0, 0, 23])
        self.assertEqual(stamps, sorted(stamps))

    def test_lost_packets_do_not_stretch_the_timeline(self) -> None:
        """200 ms of lost packets are filled with silence: later frames keep their timeline positions."""
        payloads = g711_payloads("pcm_mulaw", 2.0)
        reference = transcode_audio(AudioTranscoder("PCMU", 8000, 1), payloads)
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        outputs: list[EncodedAudio] = []
        for i, payload in enumerate(payloads):
            if not 40 <= i < 50:
                outputs.extend(transcoder.feed(payload, 20 * i))
        outputs.extend(transcoder.flush())
        self.assertEqual(transcoder.counters.gaps_filled, 1)
        self.assertEqual([o.timestamp_ms for o in outputs], [o.timestamp_ms for o in reference])
        decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, 44100)
        self.assertApproximates(len(decoded) / 44100, 2.0, 3 * 1024 / 44100)

    def test_long_gap_restarts_at_input_time(self) -> None:
        """After a gap longer than max_fill_ms, output resumes at the input's time, without 5 s of silence."""
        payloads = g711_payloads("pcm_mulaw", 1.0)
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        outputs: list[EncodedAudio] = []
        for i, payload in enumerate(payloads):
            outputs.extend(transcoder.feed(payload, 20 * i + (5000 if i >= 25 else 0)))
        outputs.extend(transcoder.flush())
        self.assertEqual(transcoder.counters.discontinuities, 1)
        stamps = [output.timestamp_ms for output in outputs]
        self.assertEqual(stamps, sorted(stamps))
        after = [stamp for stamp in stamps if stamp >= 1000]
        self.assertApproximates(after[0], 5500, 1)
        self.assertApproximates(stamps[-1], 6000, 2 * 1024 / 44.1)
        decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, 44100)
        self.assertLess(len(decoded) / 44100, 1.2)

    def test_slewed_input_timeline_is_followed(self) -> None:
        """When input times run 10 % slow or fast (a clock correction), output stays on the input timeline."""
        payloads = g711_payloads("pcm_mulaw", 2.0)
        for step, counter in ((18, "trims"), (22, "gaps_filled")):
            transcoder = AudioTranscoder("PCMU", 8000, 1)
            outputs = [out for i, p in enumerate(payloads) for out in transcoder.feed(p, step * i)]
            self.assertGreater(getattr(transcoder.counters, counter), 5)
            # The last output lags the last input by what the FIFO and the encoder hold, plus the resync slack.
            lag = step * (len(payloads) - 1) - outputs[-1].timestamp_ms
            self.assertTrue(0 <= lag <= 3 * 1024 * 1000 / 44100 + 15, (step, lag))
            outputs.extend(transcoder.flush())
            decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, 44100)
            self.assertApproximates(len(decoded) / 44100, step * len(payloads) / 1000, 0.05)

    def test_late_duplicate_dropped(self) -> None:
        """A payload whose time is already covered (a duplicate) is dropped and counted."""
        payloads = g711_payloads("pcm_mulaw", 0.5)
        transcoder = AudioTranscoder("PCMU", 8000, 1)
        outputs: list[EncodedAudio] = []
        for i, payload in enumerate(payloads):
            outputs.extend(transcoder.feed(payload, 20 * i))
            if i == 10:
                outputs.extend(transcoder.feed(payload, 20 * i))
        outputs.extend(transcoder.flush())
        self.assertEqual(transcoder.counters.drops, 1)
        self.assertEqual(len(outputs), len(transcode_audio(AudioTranscoder("PCMU", 8000, 1), payloads)))

    def test_corrupt_payload_counted_not_raised(self) -> None:
        """Garbage that the Opus decoder rejects and empty payloads are counted, never raised."""
        transcoder = AudioTranscoder("opus", 48000, 2)
        self.assertEqual(transcoder.feed(b"\xff\xff\xff", 0), [])
        self.assertEqual(transcoder.feed(b"", 20), [])
        self.assertEqual(transcoder.counters.decode_errors, 1)
        self.assertEqual(transcoder.counters.drops, 1)
        outputs = [out for i, p in enumerate(opus_payloads(0.5)) for out in transcoder.feed(p, 40 + 20 * i)]
        self.assertGreater(len(outputs), 10)

    def test_unknown_codec(self) -> None:
        """An audio codec other than PCMU, PCMA, opus or speex is refused."""
        with self.assertRaises(ValueError) as caught:
            AudioTranscoder("G722", 8000, 1)
        self.assertEqual(str(caught.exception), "unsupported audio codec 'G722': expected PCMU, PCMA, opus or speex")


class ThreadTests(SynchronousTestCase):
    def test_resampling_starts_no_threads(self) -> None:
        """Our resampler's filter graph runs on the caller's thread: three of them, used, add no OS thread (PyAV's
        AudioResampler starts two libavfilter threads each)."""
        import os

        from wcsgw.media.transcoder import _Resampler

        frame = av.AudioFrame(format="s16", layout="mono", samples=160)
        frame.sample_rate = 8000
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        before = len(os.listdir("/proc/self/task"))
        resamplers = [_Resampler("fltp", "mono", 44100) for _ in range(3)]
        for resampler in resamplers:
            self.assertTrue(resampler.resample(frame))
        self.assertEqual(len(os.listdir("/proc/self/task")), before)


    def test_aac_encoding_starts_no_threads(self) -> None:
        """AAC frames go to the encoder past PyAV's own resampler: three 8 kHz transcoders, encoding, add no OS
        thread (PyAV's ``encode`` would build a filter graph per encoder, with two libavfilter threads that live
        as long as the encoder)."""
        import os

        payloads = g711_payloads("pcm_mulaw", 0.5)
        before = len(os.listdir("/proc/self/task"))
        transcoders = [AudioTranscoder("PCMU", 8000, 1, sample_rate=8000) for _ in range(3)]
        for transcoder in transcoders:
            out = []
            for i, payload in enumerate(payloads):
                out.extend(transcoder.feed(payload, 20 * i))
            self.assertTrue(out)
        self.assertEqual(len(os.listdir("/proc/self/task")), before)


class EncoderSenderTests(SynchronousTestCase):
    def test_direct_sending_gives_what_encode_gives(self) -> None:
        """Frames sent straight to the AAC encoder come out as the same packets, byte for byte and pts for pts,
        as through PyAV's ``encode`` (whose resampler has nothing to change in them), flush included."""
        from wcsgw.media.transcoder import encoder_sender

        payloads = g711_payloads("pcm_mulaw", 1.0)
        results = []
        for direct in (True, False):
            transcoder = AudioTranscoder("PCMU", 8000, 1, sample_rate=8000)
            if not direct:
                transcoder._send = transcoder._encoder.encode
            else:
                self.assertIsNot(transcoder._send, transcoder._encoder.encode)
            out = transcode_audio(transcoder, payloads[:20] + payloads[26:])  # a gap, filled with silence
            results.append([(o.timestamp_ms, o.data) for o in out])
        self.assertGreater(len(results[0]), 5)
        self.assertEqual(results[0], results[1])
        encoder = av.CodecContext.create("aac", "w")
        self.assertEqual(encoder_sender(encoder), encoder.encode)  # not open: PyAV's encode opens it

    def test_another_frame_size_takes_encode(self) -> None:
        """An encoder whose frame size is not AAC's gets PyAV's ``encode`` (which would cut frames to it)."""
        from wcsgw.media.transcoder import encoder_sender

        encoder = av.CodecContext.create("libopus" if "libopus" in av.codecs_available else "aac", "w")
        encoder.sample_rate = 48000
        encoder.layout = "mono"
        encoder.format = encoder.codec.audio_formats[0].name
        encoder.time_base = Fraction(1, 48000)
        encoder.open()
        if encoder.frame_size == 1024:
            raise SkipTest("no encoder with another frame size here")
        self.assertEqual(encoder_sender(encoder), encoder.encode)


class AudioPassthroughTests(SynchronousTestCase):
    def test_g711_passthrough(self) -> None:
        """In passthrough G.711 payloads come back unchanged with their timestamps."""
        transcoder = AudioTranscoder("PCMA", 8000, 1, output="passthrough")
        payloads = g711_payloads("pcm_alaw", 0.1)
        outputs = [out for i, p in enumerate(payloads) for out in transcoder.feed(p, 500 + 20 * i)]
        self.assertEqual([o.data for o in outputs], payloads)
        self.assertEqual([o.timestamp_ms for o in outputs], [500 + 20 * i for i in range(len(payloads))])
        self.assertEqual({(o.codec, o.sample_rate, o.channels) for o in outputs}, {("PCMA", 8000, 1)})
        self.assertIsNone(transcoder.audio_specific_config)
        self.assertEqual(transcoder.flush(), [])

    def test_speex_wideband_passthrough(self) -> None:
        """Speex at 16 kHz (what FLV carries) passes through."""
        transcoder = AudioTranscoder("speex", 16000, 1, output="passthrough")
        self.assertEqual(transcoder.feed(b"\x01\x02", 0)[0].codec, "speex")

    def test_opus_passthrough_refused(self) -> None:
        """FLV has no Opus: asking to pass it through is an error."""
        with self.assertRaises(ValueError) as caught:
            AudioTranscoder("opus", 48000, 2, output="passthrough")
        self.assertEqual(str(caught.exception), "opus cannot be passed through to FLV: transcode it to AAC")

    def test_speex_narrowband_passthrough_refused(self) -> None:
        """FLV carries Speex at 16 kHz only."""
        with self.assertRaises(ValueError) as caught:
            AudioTranscoder("speex", 8000, 1, output="passthrough")
        self.assertEqual(str(caught.exception), "FLV carries speex at 16000 Hz only, not 8000 Hz")


# -- video -----------------------------------------------------------------------------------------------------


class VideoTranscoderTests(SynchronousTestCase):
    def transcode(self, transcoder: VideoTranscoder, inputs: list[tuple[Any, int]]) -> list[EncodedVideo]:
        outputs: list[EncodedVideo] = []
        for data, timestamp in inputs:
            outputs.extend(transcoder.feed(data, timestamp))
        outputs.extend(transcoder.flush())
        return outputs

    def test_vp8_to_h264(self) -> None:
        """VP8 frames become H.264 that PyAV's h264 decoder decodes, frame for frame, same timestamps."""
        inputs = vp8_frames(320, 180, 30)
        transcoder = VideoTranscoder("VP8")
        outputs = self.transcode(transcoder, inputs)
        self.assertEqual([o.timestamp_ms for o in outputs], [ts for _, ts in inputs])
        frames = decode_h264(outputs)
        self.assertEqual(len(frames), 30)
        self.assertEqual({(f.width, f.height) for f in frames}, {(320, 180)})
        self.assertEqual((transcoder.width, transcoder.height), (320, 180))
        self.assertEqual(transcoder.counters.frames_in, 30)
        self.assertEqual(transcoder.counters.frames_out, 30)
        self.assertEqual(transcoder.counters.decode_errors, 0)

    def test_keyframe_flags_and_parameter_sets(self) -> None:
        """Keyframes, and only they, hold an IDR, led by SPS and PPS that match the sps/pps properties."""
        outputs = self.transcode(transcoder := VideoTranscoder("VP8"), vp8_frames(160, 96, 20))
        self.assertTrue(outputs[0].keyframe)
        self.assertEqual(nal_types(outputs[0])[:3], [7, 8, 5])
        self.assertEqual(outputs[0].nal_units[:2], [transcoder.sps, transcoder.pps])
        for output in outputs:
            self.assertEqual(output.keyframe, 5 in nal_types(output))
            self.assertTrue(all(unit[:3] not in (b"\x00\x00\x01", b"\x00\x00\x00") for unit in output.nal_units))
        assert transcoder.sps is not None
        self.assertEqual(transcoder.sps[1], 66)  # profile_idc: baseline

    def test_keyframe_interval_at_most_two_seconds(self) -> None:
        """Keyframes come at most keyframe_interval_s apart in media time (and not much closer)."""
        outputs = self.transcode(VideoTranscoder("VP8"), vp8_frames(160, 96, 200))
        keys = [o.timestamp_ms for o in outputs if o.keyframe]
        gaps = [b - a for a, b in zip(keys, keys[1:])]
        self.assertEqual(len(keys), 4)
        self.assertTrue(all(1900 <= gap <= 2000 for gap in gaps), gaps)

    def test_request_keyframe(self) -> None:
        """After request_keyframe the next output is an IDR with SPS/PPS."""
        inputs = vp8_frames(160, 96, 20)
        transcoder = VideoTranscoder("VP8")
        outputs = [out for data, ts in inputs[:10] for out in transcoder.feed(data, ts)]
        self.assertEqual([o.keyframe for o in outputs], [True] + [False] * 9)
        transcoder.request_keyframe()
        after = transcoder.feed(*inputs[10]) + transcoder.feed(*inputs[11])
        self.assertEqual([o.keyframe for o in after], [True, False])
        self.assertEqual(nal_types(after[0])[:3], [7, 8, 5])

    def test_corrupt_input_counted_not_raised(self) -> None:
        """A frame the decoder rejects is dropped and counted; inter frames wait for the next key frame."""
        inputs = vp8_frames(160, 96, 40, keyframes=(30,))
        transcoder = VideoTranscoder("VP8")
        outputs = [out for data, ts in inputs[:10] for out in transcoder.feed(data, ts)]
        broken = b"\x10\x02\x00\x9d\x01\x2a" + b"\xff" * 4  # a key frame header with an impossible size
        self.assertEqual(transcoder.feed(broken, 334), [])
        self.assertEqual(transcoder.counters.decode_errors, 1)
        self.assertTrue(transcoder.wants_keyframe)
        dropped = [out for data, ts in inputs[10:30] for out in transcoder.feed(data, ts)]
        self.assertEqual(dropped, [])
        self.assertEqual(transcoder.counters.drops, 20)
        resumed = [out for data, ts in inputs[30:] for out in transcoder.feed(data, ts)]
        self.assertFalse(transcoder.wants_keyframe)
        self.assertEqual(len(resumed), 10)
        self.assertEqual(len(decode_h264(outputs + resumed)), 20)

    def test_feed_after_flush(self) -> None:
        """After flush the transcoder takes a new stream, starting at its key frame."""
        transcoder = VideoTranscoder("VP8")
        first = self.transcode(transcoder, vp8_frames(160, 96, 5))
        second = self.transcode(transcoder, vp8_frames(160, 96, 5, start_ms=500))
        self.assertEqual([o.keyframe for o in second], [True, False, False, False, False])
        self.assertEqual(len(decode_h264(first + second)), 10)

    def test_garbage_and_empty_input(self) -> None:
        """Random bytes and empty frames never raise out of feed."""
        transcoder = VideoTranscoder("VP8")
        for data in (b"", b"\x00" * 3, bytes(range(256)), b"\x00\x00\x00\x9d\x01\x2a\x00\x00\x00\x00"):
            self.assertEqual(transcoder.feed(data, 0), [])
        self.assertGreaterEqual(transcoder.counters.decode_errors, 1)
        self.assertEqual(transcoder.counters.frames_in, 4)

    def test_resolution_change(self) -> None:
        """A new input size re-opens the encoder: the next output is an IDR with a new SPS."""
        first = vp8_frames(160, 96, 10)
        second = vp8_frames(320, 180, 10, start_ms=400)
        transcoder = VideoTranscoder("VP8")
        outputs = [out for data, ts in first for out in transcoder.feed(data, ts)]
        old_sps = transcoder.sps
        outputs_after = self.transcode(transcoder, second)
        self.assertEqual(transcoder.counters.encoder_reopens, 1)
        self.assertTrue(outputs_after[0].keyframe)
        self.assertNotEqual(transcoder.sps, old_sps)
        sizes = [(f.width, f.height) for f in decode_h264(outputs + outputs_after)]
        self.assertEqual(sizes, [(160, 96)] * 10 + [(320, 180)] * 10)

    def test_h264_reencode(self) -> None:
        """H.264 access units (NAL unit lists) are decoded and re-encoded (disable_streaming_proxy)."""
        inputs = h264_access_units(320, 180, 20)
        transcoder = VideoTranscoder("H264", bitrate=300_000)
        # Start mid-stream: inter frames before the first IDR are dropped until one arrives.
        outputs = self.transcode(transcoder, inputs[3:])
        self.assertEqual(transcoder.counters.drops, 12)
        self.assertEqual(len(decode_h264(outputs)), 5)
        self.assertTrue(outputs[0].keyframe)

    def test_duplicate_timestamps_stay_monotonic(self) -> None:
        """Frames with equal or decreasing timestamps still yield non-decreasing output timestamps."""
        inputs = vp8_frames(160, 96, 6)
        stamps = [0, 33, 33, 20, 100, 133]
        transcoder = VideoTranscoder("VP8")
        outputs = [out for (data, _), ts in zip(inputs, stamps) for out in transcoder.feed(data, ts)]
        got = [o.timestamp_ms for o in outputs]
        self.assertEqual(got, sorted(got))
        self.assertEqual(len(got), 6)

    def test_unknown_codec(self) -> None:
        """A video codec other than VP8 or H264 is refused."""
        with self.assertRaises(ValueError) as caught:
            VideoTranscoder("VP9")
        self.assertEqual(str(caught.exception), "unsupported video codec 'VP9': expected VP8 or H264")


class SplitAnnexbTests(SynchronousTestCase):
    def test_split(self) -> None:
        """Three- and four-byte start codes are removed, trailing zero bytes dropped."""
        data = b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce\x00\x00\x00\x00\x01\x65\x88"
        self.assertEqual(split_annexb(data), [b"\x67\x42", b"\x68\xce", b"\x65\x88"])

    def test_no_start_code(self) -> None:
        """Bytes without a start code hold no NAL unit."""
        self.assertEqual(split_annexb(b"\x65\x88"), [])


class RateTests(SynchronousTestCase):
    def test_source_sample_rate(self) -> None:
        """The rate each codec decodes to: G.711 8 kHz, Opus 48 kHz whatever it carries, Speex its clock rate."""
        self.assertEqual(source_sample_rate("PCMU", 8000), 8000)
        self.assertEqual(source_sample_rate("pcma", 8000), 8000)
        self.assertEqual(source_sample_rate("opus", 48000), 48000)
        self.assertEqual(source_sample_rate("speex", 16000), 16000)
        with self.assertRaises(ValueError) as caught:
            source_sample_rate("G729", 8000)
        self.assertEqual(str(caught.exception), "unsupported audio codec 'G729': expected PCMU, PCMA, opus or speex")

    def test_aac_bitrate_is_capped_at_what_the_rate_carries(self) -> None:
        """6144 bits per channel per 1024-sample frame: 48 kbit/s mono at 8 kHz, the request when it fits."""
        self.assertEqual(aac_bitrate(64000, 8000), 48000)
        self.assertEqual(aac_bitrate(64000, 44100), 64000)
        self.assertEqual(aac_bitrate(256000, 16000, 2), 192000)

    def test_aac_bitrate_by_rate(self) -> None:
        """0 asks for a bit rate that suits the sample rate, per channel."""
        self.assertEqual([aac_bitrate(0, r) for r in (8000, 16000, 22050, 32000, 44100, 48000)],
                         [24000, 32000, 48000, 48000, 64000, 64000])
        self.assertEqual(aac_bitrate(0, 8000, 2), 48000)

    def test_an_8khz_encoder_opens_at_the_capped_rate(self) -> None:
        """An 8 kHz AAC transcoder asks the encoder for the capped bit rate (or by default 24 kbit/s), and its
        AAC says 8 kHz mono."""
        transcoder = AudioTranscoder("PCMU", 8000, sample_rate=8000, bitrate=64000)
        self.assertEqual(transcoder._encoder.bit_rate, 48000)
        self.assertEqual(AudioTranscoder("PCMU", 8000, sample_rate=8000)._encoder.bit_rate, 24000)
        self.assertEqual(transcoder.audio_specific_config[:2], b"\x15\x88")


class G711TableTests(SynchronousTestCase):
    def test_tables_match_ffmpeg(self) -> None:
        """Every mu-law and A-law code becomes the sample FFmpeg's decoder gives, as a float (s16 / 32768)."""
        codes = bytes(range(256))
        for name, decoder_name in (("pcmu", "pcm_mulaw"), ("pcma", "pcm_alaw")):
            decoder = cast(av.AudioCodecContext, av.CodecContext.create(decoder_name, "r"))
            decoder.sample_rate = 8000
            decoder.layout = "mono"
            decoder.open()
            (frame,) = decoder.decode(av.Packet(codes))
            expected = array.array("h", bytes(frame.planes[0])[: 2 * 256])
            got = array.array("f", bytes(g711_to_float(codes, _G711_FLOAT[name])))
            self.assertEqual(list(got), [sample / 32768.0 for sample in expected], name)

    def test_only_the_bytes_that_are_not_always_zero_are_translated(self) -> None:
        """G.711 samples are integers of 14 bits at most over 32768: the low bytes of their floats' mantissas are
        zero for every code, and the conversion leaves them as the new buffer has them (A-law: bytes 0 and 1,
        mu-law: byte 0)."""
        for name, kept in (("pcma", [2, 3]), ("pcmu", [1, 2, 3])):
            self.assertEqual([k for k, _ in _G711_FLOAT[name]], kept, name)
            samples = bytes(g711_to_float(bytes(range(256)), _G711_FLOAT[name]))
            for k in range(4):
                self.assertEqual(any(samples[k::4]), k in kept, (name, k))

    def test_8khz_g711_skips_the_decoder_and_gives_the_same_aac(self) -> None:
        """G.711 to 8 kHz AAC goes through the tables (no decoder, no resampler), and the AAC is the same, byte
        for byte, as through FFmpeg's decoder and libswresample, lost packets and all."""
        payloads = g711_payloads("pcm_alaw", 2.0)
        fast = AudioTranscoder("PCMA", 8000, 1, sample_rate=8000)
        slow = AudioTranscoder("PCMA", 8000, 1, sample_rate=8000)
        self.assertIsNotNone(fast._g711_table)
        slow._g711_table = None  # the general path
        outputs = []
        for transcoder in (fast, slow):
            out: list[EncodedAudio] = []
            for i, payload in enumerate(payloads):
                if not 30 <= i < 36:
                    out.extend(transcoder.feed(payload, 20 * i))
            out.extend(transcoder.flush())
            outputs.append([(o.timestamp_ms, o.data) for o in out])
        self.assertEqual(outputs[0], outputs[1])
        self.assertEqual(fast.counters.gaps_filled, 1)
        self.assertIsNone(AudioTranscoder("PCMU", 8000, 1)._g711_table)  # 44.1 kHz: resampled as before


    def test_g711_lane_follows_the_timeline_as_the_general_path(self) -> None:
        """The G.711 lane (float samples gathered in a buffer, cut into one frame used again) gives the AAC of the
        general path, byte for byte, through every turn of the timeline: a gap filled, audio behind the stream
        trimmed, a late duplicate dropped, a long gap that ends the segment, a jump backwards, and the flush."""
        payloads = g711_payloads("pcm_mulaw", 4.0)
        times = [20.0 * i for i in range(len(payloads))]
        times[40:] = [t + 60 for t in times[40:]]  # a 60 ms gap: filled with silence
        times[70:] = [t - 18 for t in times[70:]]  # 18 ms behind the stream: trimmed
        times[100:] = [t + 1500 for t in times[100:]]  # 1.5 s: a new segment
        times[150:] = [t - 5000 for t in times[150:]]  # a jump back: rebased
        order = list(range(len(payloads)))
        order.insert(120, 110)  # a late duplicate: dropped
        results = []
        for lane in (True, False):
            transcoder = AudioTranscoder("PCMU", 8000, 1, sample_rate=8000)
            if not lane:
                transcoder._g711_table = None
            out: list[EncodedAudio] = []
            for i in order:
                out.extend(transcoder.feed(payloads[i], times[i]))
            out.extend(transcoder.flush())
            out.extend(transcoder.feed(payloads[0], 20000.0))  # after a flush: a fresh encoder
            out.extend(transcoder.flush())
            counters = transcoder.counters
            results.append(([(o.timestamp_ms, o.data) for o in out],
                            (counters.gaps_filled, counters.trims, counters.drops, counters.discontinuities)))
        self.assertEqual(results[0][1], (1, 1, 1, 2))
        self.assertEqual(results[0], results[1])

    def test_g711_lane_uses_one_frame(self) -> None:
        """Every AAC frame of the G.711 lane is cut into the same PyAV frame (each frame PyAV makes or frees lets
        go of the GIL and takes it back)."""
        transcoder = AudioTranscoder("PCMU", 8000, 1, sample_rate=8000)
        sent: list[Any] = []
        send = transcoder._send

        def spy(frame: Any) -> Any:
            sent.append(frame)
            return send(frame)

        transcoder._send = spy
        self.assertTrue(transcode_audio(transcoder, g711_payloads("pcm_mulaw", 1.0)))
        frames = [frame for frame in sent if frame is not None]
        self.assertGreater(len(frames), 5)
        self.assertEqual({id(frame) for frame in frames}, {id(frames[0])})


class CoderTests(SynchronousTestCase):
    def test_coder_reaches_the_encoder(self) -> None:
        """The AAC coder is FFmpeg's aac_coder option (fast by default): fast and twoloop encode the same input
        to different AAC, both decoding to the tone; an unknown coder is refused."""
        payloads = g711_payloads("pcm_mulaw", 1.0)
        fast = AudioTranscoder("PCMU", 8000, sample_rate=8000)
        twoloop = AudioTranscoder("PCMU", 8000, sample_rate=8000, coder="twoloop")
        by_fast = transcode_audio(fast, payloads)
        by_twoloop = transcode_audio(twoloop, payloads)
        self.assertEqual(fast._coder, "fast")
        self.assertEqual(len(by_fast), len(by_twoloop))
        self.assertNotEqual([o.data for o in by_fast], [o.data for o in by_twoloop])
        for transcoder, outputs in ((fast, by_fast), (twoloop, by_twoloop)):
            decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, 8000)
            self.assertApproximates(frequency(decoded[2048:-2048], 8000), TONE_HZ, 5.0)
        with self.assertRaises(ValueError) as caught:
            AudioTranscoder("PCMU", 8000, coder="anmr")
        self.assertEqual(str(caught.exception), "AAC coder must be one of fast, twoloop, not 'anmr'")


def tone_energy(samples: array.array[float]) -> float:
    """The mean square of ``samples``."""
    return sum(x * x for x in samples) / len(samples)


class CutoffTests(SynchronousTestCase):
    def _energy(self, tone_hz: float, cutoff: int, rate: int = 8000) -> float:
        """The energy of a PCMU tone of ``tone_hz`` after AAC at ``rate`` with ``cutoff``, decoded."""
        encoder = cast(av.AudioCodecContext, av.CodecContext.create("pcm_mulaw", "w"))
        encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
        encoder.open()
        samples = sine(8000, 1.0, tone_hz)
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(samples))
        frame.sample_rate = 8000
        frame.planes[0].update(samples.tobytes())
        data = b"".join(bytes(packet) for packet in encoder.encode(frame))
        transcoder = AudioTranscoder("PCMU", 8000, sample_rate=rate, cutoff=cutoff)
        outputs = transcode_audio(transcoder, [data[i : i + 160] for i in range(0, len(data), 160)])
        decoded = decode_aac(transcoder.audio_specific_config or b"", outputs, rate)
        return tone_energy(decoded[rate // 4 : -rate // 4])

    def test_cutoff_takes_what_is_above_it_away(self) -> None:
        """The cutoff reaches the encoder: a 3800 Hz tone keeps its energy without one and loses nearly all of it
        with 3400 Hz, at 8 kHz and at 16 kHz AAC; a 440 Hz tone keeps its energy either way."""
        for rate in (8000, 16000):
            full = self._energy(3800.0, 0, rate)
            cut = self._energy(3800.0, 3400, rate)
            self.assertGreater(full, 0.01)  # a tone of amplitude 0.37: about 0.07
            self.assertLess(cut, full / 20)
        low_full, low_cut = self._energy(440.0, 0), self._energy(440.0, 3400)
        self.assertGreater(low_cut, low_full * 0.8)

    def test_cutoff_at_or_above_half_the_rate_is_ffmpegs(self) -> None:
        """A cutoff the sample rate cannot carry leaves FFmpeg's own (0); a negative one is refused."""
        self.assertEqual(AudioTranscoder("PCMU", 8000, sample_rate=8000, cutoff=3400).cutoff, 3400)
        self.assertEqual(AudioTranscoder("PCMU", 8000, sample_rate=8000, cutoff=4000).cutoff, 0)
        self.assertEqual(AudioTranscoder("PCMU", 8000, sample_rate=8000).cutoff, 0)
        with self.assertRaises(ValueError):
            AudioTranscoder("PCMU", 8000, cutoff=-1)
