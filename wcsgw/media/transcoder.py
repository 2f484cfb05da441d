"""Synchronous PyAV transcoders: RTP audio to AAC (or passthrough), VP8/H.264 to H.264.

These classes know nothing about threads or the reactor: `wcsgw.media.worker` runs them in a worker thread,
tests call them directly.  Every method is synchronous and CPU-bound.

Timestamps in and out are gateway milliseconds (the FLV timeline that `wcsgw.media.clock.MediaClock` produces).
Outputs never go backwards and never go below zero.

Thread counts: every PyAV codec context here gets an explicit ``thread_count`` (1 by default).  FFmpeg's
default (0, one thread per CPU) would give each of 100 calls its own pool of threads fighting over 2 cores, and
frame threading in decoders adds one frame of delay per thread.  One thread per codec keeps CPU per call
predictable; parallelism comes from running many calls at once.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Literal, Sequence, cast

import av
import av.filter
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame
from av.codec.context import Flags, ThreadType
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame
from twisted.logger import Logger

from wcsgw.rtp.h264 import split_annexb

__all__ = [
    "AAC_FRAME_SIZE",
    "AudioTranscoder",
    "EncodedAudio",
    "EncodedVideo",
    "TranscoderCounters",
    "VideoTranscoder",
    "aac_bitrate",
    "source_sample_rate",
    "split_annexb",
]

log = Logger()

AAC_FRAME_SIZE = 1024  # samples per AAC-LC frame
AAC_CODERS = ("fast", "twoloop")  # FFmpeg aac encoder's aac_coder choices we offer
AAC_SAMPLE_RATES = frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000})

# SDP encoding name (lower case) -> (FFmpeg decoder, sample rate of the decoder or None for the SDP clock rate)
_AUDIO_DECODERS: dict[str, tuple[str, int | None]] = {
    "pcmu": ("pcm_mulaw", 8000),
    "pcma": ("pcm_alaw", 8000),
    "opus": ("opus", 48000),
    "speex": ("speex", None),
}
# Codecs FLV carries as they are (SoundFormat 7 = G.711 A-law, 8 = G.711 mu-law, 11 = Speex) and their rate.
_PASSTHROUGH_RATES: dict[str, int] = {"pcmu": 8000, "pcma": 8000, "speex": 16000}
_CANONICAL_NAMES = {"pcmu": "PCMU", "pcma": "PCMA", "opus": "opus", "speex": "speex"}

NAL_TYPE_IDR = 5
NAL_TYPE_SEI = 6
NAL_TYPE_SPS = 7
NAL_TYPE_PPS = 8
NAL_TYPE_AUD = 9
ANNEXB_START_CODE = b"\x00\x00\x00\x01"

_MS = Fraction(1, 1000)


def _ulaw_to_linear(code: int) -> int:
    """G.711 mu-law code to a 16-bit sample (ITU-T G.711 table 2: bias 0x84, segment shift)."""
    code = ~code & 0xFF
    magnitude = ((code & 0x0F) << 3) + 0x84
    magnitude <<= (code & 0x70) >> 4
    return 0x84 - magnitude if code & 0x80 else magnitude - 0x84


def _alaw_to_linear(code: int) -> int:
    """G.711 A-law code to a 16-bit sample (ITU-T G.711 table 1: even bits inverted, segment shift)."""
    code ^= 0x55
    magnitude = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        magnitude += 8
    elif segment == 1:
        magnitude += 0x108
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if code & 0x80 else -magnitude


def _float_byte_tables(decode: Callable[[int], int]) -> tuple[tuple[int, bytes], ...]:
    """``bytes.translate`` tables for the bytes of each G.711 code's float32 sample (native order, as PyAV's "flt"
    planes hold it): ``(k, table of byte k)`` for each byte that is not zero in every sample.  The samples are
    integers of 14 bits at most over 32768, so the low bytes of their mantissas are zero: A-law needs two tables,
    mu-law three."""
    samples = [struct.pack("=f", decode(code) / 32768.0) for code in range(256)]
    tables = [(k, bytes(sample[k] for sample in samples)) for k in range(4)]
    return tuple((k, table) for k, table in tables if any(table))


_G711_FLOAT = {"pcmu": _float_byte_tables(_ulaw_to_linear), "pcma": _float_byte_tables(_alaw_to_linear)}


def g711_to_float(payload: bytes, tables: tuple[tuple[int, bytes], ...]) -> bytearray:
    """G.711 bytes to float32 samples, in C loops only: each byte of the floats that is not always zero by one
    ``translate``, then laid side by side with extended slices (a Python loop over the samples costs 15 times
    more); the zero bytes are the new buffer's."""
    out = bytearray(4 * len(payload))
    for k, table in tables:
        out[k::4] = payload.translate(table)
    return out


def source_sample_rate(codec: str, clock_rate: int) -> int:
    """The sample rate ``codec`` decodes to (8000 for G.711, 48000 for Opus, the RTP clock rate for Speex):
    AAC at this rate needs no resampling."""
    key = codec.lower()
    if key not in _AUDIO_DECODERS:
        raise ValueError(f"unsupported audio codec {codec!r}: expected PCMU, PCMA, opus or speex")
    return _AUDIO_DECODERS[key][1] or clock_rate


def aac_bitrate(requested: int, sample_rate: int, channels: int = 1) -> int:
    """The AAC bit rate to ask for: ``requested`` (0: by the sample rate, per channel 24 kbit/s up to 8 kHz,
    32 up to 16 kHz, 48 up to 32 kHz, else 64), capped at what AAC-LC carries at ``sample_rate`` (6144 bits per
    channel in a 1024-sample frame), where FFmpeg would clamp it with a warning on every encoder it opens.

    Narrowband audio needs few bits, and asking for more costs CPU: FFmpeg's AAC encoder takes 1.3 ms per 8 kHz
    frame at 48 kbit/s and 0.3 ms at 24 kbit/s here."""
    if requested <= 0:
        per_channel = 24000 if sample_rate <= 8000 else 32000 if sample_rate <= 16000 else (
            48000 if sample_rate <= 32000 else 64000)
        requested = per_channel * channels
    return min(requested, 6144 * channels * sample_rate // AAC_FRAME_SIZE)


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    """One audio frame for an FLV audio tag.

    ``codec`` is ``"aac"`` (``data`` is a raw AAC-LC frame, no ADTS header) or, in passthrough, the input codec
    (``"PCMU"``, ``"PCMA"``, ``"speex"``) with ``data`` the RTP payload unchanged.
    """

    timestamp_ms: int
    data: bytes
    codec: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class EncodedVideo:
    """One H.264 access unit for an FLV video tag (dts == pts: no B-frames).

    ``nal_units`` are in decode order without start codes or length prefixes; a keyframe starts with its SPS and
    PPS (in-band, as a SIP device sends them), so the FLV side treats transcoded and passed-through H.264 alike.
    """

    timestamp_ms: int
    nal_units: list[bytes]
    keyframe: bool


@dataclass(slots=True)
class TranscoderCounters:
    """Counters for metrics; plain ints written by the thread running the transcoder."""

    frames_in: int = 0  # payloads / access units fed
    frames_out: int = 0  # EncodedAudio / EncodedVideo produced
    decode_errors: int = 0  # inputs the decoder rejected (dropped)
    drops: int = 0  # inputs dropped for other reasons (late audio, video before a keyframe)
    encode_errors: int = 0  # frames the encoder rejected (dropped)
    gaps_filled: int = 0  # audio gaps filled with silence
    trims: int = 0  # audio that overlapped the stream (late, or the input timeline slowed): head cut off
    discontinuities: int = 0  # audio gaps too long to fill: the AAC timeline restarted
    encoder_reopens: int = 0  # video encoder re-opened after a resolution change


# --------------------------------------------------------------------------------------------------------------
# audio


def _layout_name(channels: int) -> str:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ValueError(f"channels must be 1 or 2, not {channels}")


def _silence(format_name: str, layout: str, sample_rate: int, samples: int) -> AudioFrame:
    frame = AudioFrame(format=format_name, layout=layout, samples=samples)
    frame.sample_rate = sample_rate
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    return frame


def _drop_head(frame: AudioFrame, samples: int) -> AudioFrame | None:
    """The frame without its first ``samples`` samples (None when nothing is left)."""
    if samples >= frame.samples:
        return None
    fifo = av.AudioFifo()
    fifo.write(frame)
    fifo.read(samples)
    return fifo.read()


def encoder_sender(encoder: AudioCodecContext) -> Callable[[AudioFrame | None], list[Packet[Any]]]:
    """What to hand ``encoder``'s frames to (None: flush): straight to ``avcodec_send_frame``, past PyAV's
    ``encode``, when ``encoder`` is open and cuts frames of ``AAC_FRAME_SIZE`` samples.

    PyAV's ``AudioCodecContext.encode`` runs every frame through an ``AudioResampler`` of its own, which, for an
    encoder with a fixed frame size (AAC), never passes a frame through: per frame a filter graph push and two
    pulls, each a ``nogil`` section after which the thread takes the GIL again (and each pulled frame is
    allocated and freed, two more), and a graph that starts two idle libavfilter threads per encoder.  The frames
    given here (from our FIFO, or the G.711 lane's buffer) are already in the encoder's sample format, layout,
    rate, frame size and time base, so that graph changes nothing (``tests/test_media_transcoder.py`` checks the
    bytes are the same).  ``_send_frame_and_recv`` is the
    step of PyAV's ``encode`` after the resampler (a Python-visible method of its Cython class); a PyAV without it
    gets ``encode``."""
    direct = getattr(encoder, "_send_frame_and_recv", None)
    if direct is None or not encoder.is_open or encoder.frame_size != AAC_FRAME_SIZE:
        return cast("Callable[[AudioFrame | None], list[Packet[Any]]]", encoder.encode)

    def send(frame: AudioFrame | None) -> list[Packet[Any]]:
        return list(direct(frame))

    return send


class AudioTranscoder:
    """RTP audio payloads (G.711, Opus, Speex) to AAC-LC frames, or passed through for G.711 and Speex.

    ``feed(payload, timestamp_ms)`` takes one RTP payload and the gateway time of its first sample.  Decoded
    audio goes through a resampler to ``sample_rate`` and a FIFO that cuts full 1024-sample AAC frames.  The
    sample stream is kept on the input timeline: a gap up to ``max_fill_ms`` (lost packets) is filled with
    silence, a longer one ends the segment (the last frame is padded) and the next frame starts at the new
    input time; audio that arrives behind the stream is trimmed or dropped.  So output timestamps follow the
    input timeline and are never stretched.

    Output timestamps are the encoder's pts: packet *n* decodes to the audio of input time *t(n)*; the
    encoder's priming frame (pts 1024 samples before the first input) is clamped to the first timestamp.
    """

    # Slots: more than 30 attributes (see MediaStreamSession.__slots__).  '__dict__': tests' stand-ins.
    __slots__ = (
        'codec', 'clock_rate', 'channels', 'output', 'counters', '_last_out_ms', 'sample_rate', 'output_channels',
        'audio_specific_config', '_coder', 'cutoff', '_out_layout', '_bitrate', '_thread_count', '_max_fill_ms',
        '_resync_ms', '_in_rate', '_decoder', '_encoder', '_resampler', '_g711_table', '_pcm', '_pcm_frame', '_fifo',
        '_segment_start_ms', '_segment_in_samples', '_segment_pts', '_segment_consumed', '_next_pts', '_rebase_ms',
        '_send', '_time_base', '__dict__',
    )

    def __init__(
        self,
        codec: str,
        clock_rate: int,
        channels: int = 1,
        *,
        output: Literal["aac", "passthrough"] = "aac",
        sample_rate: int = 44100,
        bitrate: int = 0,
        output_channels: int = 1,
        max_fill_ms: float = 1000.0,
        resync_threshold_ms: float = 15.0,
        thread_count: int = 1,
        coder: str = "fast",
        cutoff: int = 0,
    ) -> None:
        """``coder``: FFmpeg's ``aac_coder``, ``fast`` or ``twoloop`` (FFmpeg's default, about twice the CPU).
        ``cutoff``: the encoder's low-pass in Hz (FFmpeg's ``cutoff``), taken when it is below half the AAC sample
        rate; 0: FFmpeg's own (at the bit rates of `aac_bitrate`, half the sample rate up to 16 kHz)."""
        key = codec.lower()
        if key not in _AUDIO_DECODERS:
            raise ValueError(f"unsupported audio codec {codec!r}: expected PCMU, PCMA, opus or speex")
        if output not in ("aac", "passthrough"):
            raise ValueError(f"output must be 'aac' or 'passthrough', not {output!r}")
        in_layout = _layout_name(channels)
        self.codec = _CANONICAL_NAMES[key]
        self.clock_rate = clock_rate
        self.channels = channels
        self.output = output
        self.counters = TranscoderCounters()
        self._last_out_ms = 0
        if output == "passthrough":
            if key not in _PASSTHROUGH_RATES:
                raise ValueError(f"{self.codec} cannot be passed through to FLV: transcode it to AAC")
            if clock_rate != _PASSTHROUGH_RATES[key]:
                raise ValueError(
                    f"FLV carries {self.codec} at {_PASSTHROUGH_RATES[key]} Hz only, not {clock_rate} Hz"
                )
            if channels != 1:
                raise ValueError(f"FLV carries {self.codec} in mono only, not {channels} channels")
            self.sample_rate = clock_rate
            self.output_channels = 1
            self.audio_specific_config: bytes | None = None
            return

        if sample_rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"unsupported AAC sample rate {sample_rate}")
        if coder not in AAC_CODERS:
            raise ValueError(f"AAC coder must be one of {', '.join(AAC_CODERS)}, not {coder!r}")
        self._coder = coder
        if cutoff < 0:
            raise ValueError(f"cutoff must not be negative, not {cutoff}")
        self.cutoff = cutoff if 0 < cutoff < sample_rate // 2 else 0  # 0: FFmpeg's own
        if max_fill_ms < resync_threshold_ms:
            raise ValueError("max_fill_ms must not be smaller than resync_threshold_ms")
        self.sample_rate = sample_rate
        self.output_channels = output_channels
        self._out_layout = _layout_name(output_channels)
        self._time_base = Fraction(1, sample_rate)  # the encoder's
        self._bitrate = bitrate
        self._thread_count = thread_count
        self._max_fill_ms = max_fill_ms
        self._resync_ms = resync_threshold_ms

        decoder_name, decoder_rate = _AUDIO_DECODERS[key]
        self._in_rate = decoder_rate or clock_rate
        self._decoder = cast(AudioCodecContext, av.CodecContext.create(decoder_name, "r"))
        self._decoder.sample_rate = self._in_rate
        self._decoder.layout = in_layout
        self._decoder.thread_count = thread_count
        self._decoder.open()
        self._encoder = self._open_encoder()
        self.audio_specific_config = bytes(self._encoder.extradata or b"")
        self._resampler = self._new_resampler()
        # G.711 to AAC at 8 kHz mono: samples straight from a table into ``_pcm`` (float32 bytes, the encoder's
        # format), no decoder call, no resampler (half the worker's time outside the encoder, all of it holding
        # the GIL), and no PyAV frame per payload nor FIFO: AAC frames are cut from ``_pcm`` into one frame, used
        # again and again (PyAV lets go of the GIL to allocate and to free every frame, and every such time the
        # thread must take it back from the reactor).  Safe: the encoder copies a frame that, like PyAV's, does
        # not count references (``avcodec_send_frame``: the frame stays the caller's).
        self._g711_table = (_G711_FLOAT[key] if key in _G711_FLOAT and channels == 1 and output_channels == 1
                            and sample_rate == self._in_rate else None)
        self._pcm = bytearray()
        self._pcm_frame: AudioFrame | None = None
        self._fifo = av.AudioFifo()
        # The current segment: a run of samples without a discontinuity.
        self._segment_start_ms: float | None = None  # input time of the segment's first sample
        self._segment_in_samples = 0  # input-rate samples written to the resampler in this segment
        self._segment_pts = 0  # encoder pts (1/sample_rate) of the segment's first sample
        self._segment_consumed = 0  # output-rate samples taken out of the FIFO in this segment
        self._next_pts = 0  # smallest pts the next segment may start at (no overlap with the last frame)
        self._rebase_ms = 0.0  # added to input times after a large backwards jump

    # -- public ------------------------------------------------------------------------------------------------

    def feed(self, payload: bytes, timestamp_ms: float) -> list[EncodedAudio]:
        """Take one RTP payload whose first sample is at ``timestamp_ms``; return the frames now complete."""
        self.counters.frames_in += 1
        if not payload:  # an empty packet would put the decoder into draining mode
            self.counters.drops += 1
            return []
        if self.output == "passthrough":
            return [self._emit(timestamp_ms, bytes(payload))]
        if self._g711_table is not None:
            return self._accept(g711_to_float(payload, self._g711_table), timestamp_ms + self._rebase_ms)
        try:
            frames = self._decoder.decode(av.Packet(bytes(payload)))
        except av.FFmpegError as exc:
            self.counters.decode_errors += 1
            log.debug("audio decode error ({codec}): {exc}", codec=self.codec, exc=exc)
            return []
        out: list[EncodedAudio] = []
        offset_ms = 0.0
        for frame in frames:
            out.extend(self._accept(frame, timestamp_ms + self._rebase_ms + offset_ms))
            offset_ms += frame.samples * 1000.0 / frame.sample_rate
        return out

    def flush(self) -> list[EncodedAudio]:
        """Encode what is buffered (the last frame padded with silence) and drain the encoder."""
        if self.output == "passthrough":
            return []
        out = self._end_segment()
        out.extend(self._packets(self._send(None)))
        # The encoder cannot take frames after a flush: a later feed starts a fresh one (same extradata).
        self._encoder = self._open_encoder()
        return out

    # -- internals ---------------------------------------------------------------------------------------------

    def _open_encoder(self) -> AudioCodecContext:
        """A fresh AAC encoder, open, and ``_send`` set to feed it (see `encoder_sender`)."""
        encoder = av.CodecContext.create("aac", "w")
        encoder.sample_rate = self.sample_rate
        encoder.layout = self._out_layout
        encoder.format = "fltp"
        encoder.bit_rate = aac_bitrate(self._bitrate, self.sample_rate, self.output_channels)
        encoder.time_base = self._time_base
        encoder.thread_count = self._thread_count
        options = {"aac_coder": self._coder}
        if self.cutoff:
            options["cutoff"] = str(self.cutoff)
        encoder.options = options
        encoder.open()
        self._send = encoder_sender(encoder)
        return encoder

    def _new_resampler(self) -> _Resampler:
        return _Resampler("fltp", self._out_layout, self.sample_rate)

    def _stream_end_ms(self) -> float:
        assert self._segment_start_ms is not None
        return self._segment_start_ms + self._segment_in_samples * 1000.0 / self._in_rate

    def _accept(self, frame: AudioFrame | bytearray, start_ms: float) -> list[EncodedAudio]:
        """Put audio starting at input time ``start_ms`` on the stream's timeline: a decoded frame, or float32
        samples of the G.711 lane."""
        out: list[EncodedAudio] = []
        if self._segment_start_ms is None:
            self._start_segment(start_ms)
        else:
            delta_ms = start_ms - self._stream_end_ms()
            if delta_ms > self._max_fill_ms:
                self.counters.discontinuities += 1
                out.extend(self._end_segment())
                self._start_segment(start_ms)
            elif delta_ms > self._resync_ms:
                self.counters.gaps_filled += 1
                fill = round(delta_ms * self._in_rate / 1000.0)
                if isinstance(frame, bytearray):
                    self._write(bytearray(4 * fill))
                else:
                    self._write(_silence(frame.format.name, frame.layout.name, self._in_rate, fill))
            elif delta_ms < -self._max_fill_ms:
                # A large jump backwards (a reset timeline upstream): carry on from where the stream is.
                self._rebase_ms -= delta_ms
                self.counters.discontinuities += 1
            elif delta_ms < -self._resync_ms:
                head = round(-delta_ms * self._in_rate / 1000.0)
                trimmed = (frame[4 * head:] or None) if isinstance(frame, bytearray) else _drop_head(frame, head)
                if trimmed is None:
                    self.counters.drops += 1
                    return out
                self.counters.trims += 1
                frame = trimmed
        self._write(frame)
        out.extend(self._drain(final=False))
        return out

    def _start_segment(self, start_ms: float) -> None:
        self._segment_start_ms = start_ms
        self._segment_in_samples = 0
        self._segment_consumed = 0
        self._segment_pts = max(self._next_pts, round(start_ms * self.sample_rate / 1000.0))

    def _write(self, frame: AudioFrame | bytearray | None) -> None:
        """Resample ``frame`` into the FIFO (None drains the resampler); the G.711 lane's samples go to ``_pcm``."""
        if isinstance(frame, bytearray):  # already the encoder's format, rate and layout
            self._segment_in_samples += len(frame) >> 2
            self._pcm += frame
            return
        if frame is None:
            if self._g711_table is not None:
                return
        else:
            self._segment_in_samples += frame.samples
            frame.pts = None  # the timeline is ours; PyAV's FIFO would reject pts jumps
        for resampled in self._resampler.resample(frame):
            resampled.pts = None  # the FIFO would insist on continuous pts; the timeline is ours
            self._fifo.write(resampled)

    def _end_segment(self) -> list[EncodedAudio]:
        if self._segment_start_ms is None:
            return []
        self._write(None)
        self._resampler = self._new_resampler()
        out = self._drain(final=True)
        self._segment_start_ms = None
        return out

    def _drain(self, *, final: bool) -> list[EncodedAudio]:
        out: list[EncodedAudio] = []
        lane = self._g711_table is not None
        pending = len(self._pcm) >> 2 if lane else self._fifo.samples
        if final and pending % AAC_FRAME_SIZE:
            pad = AAC_FRAME_SIZE - pending % AAC_FRAME_SIZE
            pending += pad
            if lane:
                self._pcm += bytes(4 * pad)
            else:
                self._fifo.write(_silence("fltp", self._out_layout, self.sample_rate, pad))
        while pending >= AAC_FRAME_SIZE:
            pending -= AAC_FRAME_SIZE
            frame = self._pcm_frame_next() if lane else self._fifo.read(AAC_FRAME_SIZE)
            assert frame is not None
            frame.pts = self._segment_pts + self._segment_consumed
            frame.time_base = self._time_base  # (the encoder's: reading it there makes a Fraction each time)
            self._segment_consumed += AAC_FRAME_SIZE
            self._next_pts = frame.pts + AAC_FRAME_SIZE
            try:
                packets = self._send(frame)
            except av.FFmpegError as exc:
                self.counters.encode_errors += 1
                log.warn("AAC encode error: {exc}", exc=exc)
                continue
            out.extend(self._packets(packets))
        return out

    def _pcm_frame_next(self) -> AudioFrame:
        """The G.711 lane's next AAC frame of samples, taken out of ``_pcm`` into the lane's one frame."""
        frame = self._pcm_frame
        if frame is None:
            frame = self._pcm_frame = AudioFrame(format="fltp", layout=self._out_layout, samples=AAC_FRAME_SIZE)
            frame.sample_rate = self.sample_rate
        size = 4 * AAC_FRAME_SIZE
        frame.planes[0].update(self._pcm[:size])
        del self._pcm[:size]
        return frame

    def _packets(self, packets: Sequence[Packet[Any]]) -> list[EncodedAudio]:
        out = []
        for packet in packets:
            pts = packet.pts if packet.pts is not None else self._next_pts
            out.append(self._emit(pts * 1000.0 / self.sample_rate, bytes(packet)))
        return out

    def _emit(self, timestamp_ms: float, data: bytes) -> EncodedAudio:
        timestamp = max(self._last_out_ms, round(timestamp_ms))
        self._last_out_ms = timestamp
        self.counters.frames_out += 1
        codec = "aac" if self.output == "aac" else self.codec
        return EncodedAudio(timestamp, data, codec, self.sample_rate, self.output_channels)


class _Resampler:
    """Sample rate, format and layout conversion (libswresample through an ``aformat`` filter graph) on the
    caller's thread: PyAV's ``AudioResampler`` leaves the graph's thread count at FFmpeg's default, which starts
    threads per CPU for every call; here the graph gets one."""

    def __init__(self, format: str, layout: str, rate: int) -> None:
        self.format = format
        self.layout = layout
        self.rate = rate
        self._graph: av.filter.Graph | None = None

    def resample(self, frame: AudioFrame | None) -> list[AudioFrame]:
        if self._graph is None:
            if frame is None:
                return []
            graph = av.filter.Graph()
            graph.threads = 1
            source = graph.add("abuffer", sample_rate=str(frame.sample_rate), sample_fmt=frame.format.name,
                               channel_layout=frame.layout.name)
            convert = graph.add("aformat", sample_rates=str(self.rate), sample_fmts=self.format,
                                channel_layouts=self.layout)
            sink = graph.add("abuffersink")
            source.link_to(convert)
            convert.link_to(sink)
            graph.configure()
            self._graph = graph
        self._graph.push(frame)
        out: list[AudioFrame] = []
        while True:
            try:
                out.append(cast(AudioFrame, self._graph.pull()))
            except EOFError:
                return out
            except av.FFmpegError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                return out


# --------------------------------------------------------------------------------------------------------------
# video


def _is_vp8_keyframe(frame: bytes) -> bool:
    # RFC 6386 9.1: frame tag bit 0 is 0 for a key frame, followed at byte 3 by the start code 9d 01 2a.
    return len(frame) >= 10 and not frame[0] & 0x01 and frame[3:6] == b"\x9d\x01\x2a"


class VideoTranscoder:
    """VP8 frames (or H.264 access units) to H.264 with libx264.

    Output: H.264 ``profile`` (baseline by default: no B-frames, no CABAC; dts == pts), tuned for zero latency
    (one packet out per frame in), ``bitrate`` with a one-second VBV, an IDR at least every
    ``keyframe_interval_s`` of media time and whenever `request_keyframe` was called.  Outputs are
    `EncodedVideo` access units (NAL units without start codes); `sps`/`pps` hold the latest parameter sets.

    The encoder follows the input's size: a new size re-opens it, and the next output is an IDR with the new
    SPS/PPS.  An input the decoder rejects is dropped and counted, and the decoder then waits for the next
    key frame (`wants_keyframe` tells the caller to ask the far end for one).
    """

    def __init__(
        self,
        codec: str,
        *,
        bitrate: int = 1_500_000,
        keyframe_interval_s: float = 2.0,
        thread_count: int = 1,
        preset: str = "veryfast",
        tune: str = "zerolatency",
        profile: str = "baseline",
    ) -> None:
        key = codec.upper()
        if key not in ("VP8", "H264"):
            raise ValueError(f"unsupported video codec {codec!r}: expected VP8 or H264")
        if keyframe_interval_s <= 0:
            raise ValueError(f"keyframe_interval_s must be positive, not {keyframe_interval_s}")
        if thread_count < 1:
            raise ValueError(f"thread_count must be at least 1, not {thread_count}")
        self.codec = key
        self.counters = TranscoderCounters()
        self._bitrate = bitrate
        self._interval_ms = keyframe_interval_s * 1000.0
        self._thread_count = thread_count
        self._options = {
            "preset": preset,
            "tune": tune,
            "profile": profile,
            "forced-idr": "1",  # a forced key frame is an IDR, so a joining player can start there
            "x264-params": "scenecut=0",  # IDRs only where we put them
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
        self._decoder = av.CodecContext.create("vp8" if key == "VP8" else "h264", "r")
        # Slice threads only: frame threads would hold back one frame per thread.
        self._decoder.thread_type = ThreadType.SLICE
        self._decoder.thread_count = thread_count
        self._decoder.flags = self._decoder.flags | Flags.low_delay
        self._decoder.open()
        self._encoder: VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        self._waiting_for_keyframe = True
        self._keyframe_requested = False
        self._last_keyframe_ms: float | None = None
        self._last_pts: int | None = None
        self._frame_delta_ms = 0.0
        self._last_out_ms = 0
        self.sps: bytes | None = None
        self.pps: bytes | None = None

    # -- public ------------------------------------------------------------------------------------------------

    @property
    def width(self) -> int | None:
        return self._size[0] if self._size else None

    @property
    def height(self) -> int | None:
        return self._size[1] if self._size else None

    @property
    def wants_keyframe(self) -> bool:
        """True while inputs are dropped until a key frame: ask the far end for one (RTCP PLI/FIR)."""
        return self._waiting_for_keyframe

    def request_keyframe(self) -> None:
        """Make the next output an IDR (a new RTMP destination joined).  A single flag write: safe anywhere."""
        self._keyframe_requested = True

    def feed(self, data: bytes | Sequence[bytes], timestamp_ms: float) -> list[EncodedVideo]:
        """Take one VP8 frame, or one H.264 access unit (NAL units or Annex-B bytes); return the outputs.

        Never raises for bad media: a rejected input is counted in ``counters.decode_errors`` and dropped.
        """
        self.counters.frames_in += 1
        if isinstance(data, (bytes, bytearray, memoryview)):
            payload = bytes(data)
            keyframe = _is_vp8_keyframe(payload) if self.codec == "VP8" else self._h264_keyframe(
                split_annexb(payload)
            )
        else:
            units = [bytes(unit) for unit in data]
            payload = b"".join(ANNEXB_START_CODE + unit for unit in units)
            keyframe = self._h264_keyframe(units)
        if not payload or (self._waiting_for_keyframe and not keyframe):
            self.counters.drops += 1
            return []
        packet = av.Packet(payload)
        packet.pts = round(timestamp_ms)
        packet.time_base = _MS
        try:
            frames = self._decoder.decode(packet)
        except av.FFmpegError as exc:
            self.counters.decode_errors += 1
            self._waiting_for_keyframe = True
            log.debug("video decode error ({codec}): {exc}", codec=self.codec, exc=exc)
            return []
        self._waiting_for_keyframe = False
        out: list[EncodedVideo] = []
        for frame in frames:
            pts = frame.pts if frame.pts is not None else round(timestamp_ms)
            try:
                out.extend(self._encode(frame, pts))
            except av.FFmpegError as exc:
                self.counters.encode_errors += 1
                log.warn("H.264 encode error: {exc}", exc=exc)
        return out

    def flush(self) -> list[EncodedVideo]:
        """Drain the decoder and the encoder."""
        out: list[EncodedVideo] = []
        try:
            frames = self._decoder.decode(None)
        except av.FFmpegError:
            frames = []
        for frame in frames:
            if frame.pts is not None:
                out.extend(self._encode(frame, frame.pts))
        out.extend(self._close_encoder())
        # Ready for more input: the decoder leaves draining mode and starts again at a key frame.
        self._decoder.flush_buffers()
        self._waiting_for_keyframe = True
        self._last_pts = None
        return out

    # -- internals ---------------------------------------------------------------------------------------------

    def _h264_keyframe(self, units: list[bytes]) -> bool:
        # An IDR, or parameter sets (devices send SPS/PPS with every intra picture).
        return any(unit and (unit[0] & 0x1F) in (NAL_TYPE_IDR, NAL_TYPE_SPS) for unit in units)

    def _open_encoder(self, width: int, height: int) -> VideoCodecContext:
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width = width
        encoder.height = height
        encoder.pix_fmt = "yuv420p"
        encoder.time_base = _MS
        encoder.framerate = Fraction(30, 1)  # nominal; rate control follows the real timestamps
        encoder.bit_rate = self._bitrate
        encoder.max_b_frames = 0
        encoder.gop_size = 600  # backstop only: key frames are forced by media time below
        encoder.thread_count = self._thread_count
        encoder.options = dict(self._options)
        encoder.open()
        return encoder

    def _close_encoder(self) -> list[EncodedVideo]:
        if self._encoder is None:
            return []
        encoder, self._encoder = self._encoder, None
        return self._outputs(encoder.encode(None))

    def _encode(self, frame: VideoFrame, pts: int) -> list[EncodedVideo]:
        out: list[EncodedVideo] = []
        width, height = frame.width & ~1, frame.height & ~1  # 4:2:0 needs even sizes
        if width == 0 or height == 0:
            self.counters.drops += 1
            return out
        if (width, height) != (frame.width, frame.height) or frame.format.name != "yuv420p":
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        if self._encoder is None or self._size != (width, height):
            if self._encoder is not None:
                self.counters.encoder_reopens += 1
                log.info(
                    "video size {old} -> {new}: re-opening the encoder", old=self._size, new=(width, height)
                )
                out.extend(self._close_encoder())
            self._encoder = self._open_encoder(width, height)
            self._size = (width, height)
            self._last_keyframe_ms = None
        assert self._encoder is not None
        if self._last_pts is not None:
            if pts <= self._last_pts:
                pts = self._last_pts + 1  # x264 wants strictly increasing pts
            else:
                self._frame_delta_ms = float(pts - self._last_pts)
        self._last_pts = pts
        if self._keyframe_due(pts):
            frame.pict_type = PictureType.I
            self._keyframe_requested = False
            self._last_keyframe_ms = pts
        else:
            frame.pict_type = PictureType.NONE  # decoded frames carry their own type: do not let x264 obey it
        frame.pts = pts
        frame.time_base = _MS
        out.extend(self._outputs(self._encoder.encode(frame)))
        return out

    def _keyframe_due(self, pts: int) -> bool:
        if self._keyframe_requested or self._last_keyframe_ms is None:
            return True
        # Force it now if waiting for the next frame would make the distance exceed the interval.
        return pts - self._last_keyframe_ms + self._frame_delta_ms > self._interval_ms

    def _outputs(self, packets: Sequence[Packet[Any]]) -> list[EncodedVideo]:
        out = []
        for packet in packets:
            units = [u for u in split_annexb(bytes(packet)) if (u[0] & 0x1F) not in (NAL_TYPE_AUD, NAL_TYPE_SEI)]
            if not units:
                continue
            for unit in units:
                kind = unit[0] & 0x1F
                if kind == NAL_TYPE_SPS:
                    self.sps = unit
                elif kind == NAL_TYPE_PPS:
                    self.pps = unit
            timestamp = max(self._last_out_ms, packet.pts if packet.pts is not None else self._last_out_ms)
            self._last_out_ms = timestamp
            self.counters.frames_out += 1
            out.append(EncodedVideo(timestamp, units, bool(packet.is_keyframe)))
        return out

