"""
The Stream of a call: media events from the RTP sessions in, FLV tags out to every RTMP destination.

One mechanism serves the call's own rtmpUrl and every ``push/startup``: each destination is an ``RtmpPublisher``
subscribed to the stream.  The stream keeps the latest metadata and sequence headers, so a destination that joins
late (or reconnects) gets them first; publishers start at the next keyframe and ask for one through
``request_keyframe``, which reaches the SIP side (RTCP PLI/FIR) or the H.264 encoder when video is re-encoded.

Timestamps: a ``MediaClock`` maps each track's RTP timestamps to call milliseconds, through the far end's RTCP
sender reports when it sends them (lip sync), by arrival time otherwise.  Transcoding (audio to AAC, VP8 to H.264)
runs in ``TranscodeWorker`` threads; H.264 and, when configured, G.711/Speex pass through on the reactor.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from wcsgw.media.clock import MediaClock
from wcsgw.media.transcoder import (
    AAC_FRAME_SIZE,
    AudioTranscoder,
    EncodedAudio,
    EncodedVideo,
    VideoTranscoder,
    source_sample_rate,
)
from wcsgw.media.worker import MediaInput, TranscodeWorker, WorkerPool
from wcsgw.model import RtmpStreamStatus
from wcsgw.rtmp import flv
from wcsgw.rtmp.flv import FlvTag
from wcsgw.rtmp.publisher import RtmpPublisher
from wcsgw.rtp.h264 import AccessUnit
from wcsgw.rtp.params import AudioFrame, MediaParams, SenderReportReceived, StreamRestarted
from wcsgw.rtp.vp8 import Vp8Frame

log = Logger()

AUDIO = "audio"
VIDEO = "video"
NAL_TYPE_SPS = 7
NAL_TYPE_PPS = 8
NAL_TYPE_AUD = 9
_OUT_OF_BAND = frozenset({NAL_TYPE_SPS, NAL_TYPE_PPS, NAL_TYPE_AUD})
# AAC sampling frequency index (ISO/IEC 14496-3, 1.6.3.4).
_AAC_RATE_INDEX = {96000: 0, 88200: 1, 64000: 2, 48000: 3, 44100: 4, 32000: 5, 24000: 6, 22050: 7, 16000: 8,
                   12000: 9, 11025: 10, 8000: 11}
_FLV_AUDIO_CODEC_ID = {"aac": 10, "PCMA": 7, "PCMU": 8, "speex": 11}
AAC_OBJECT_TYPE_LC = 2
MIN_AUDIO_JOB_MS = 60  # G.711 to AAC: the least audio one worker job carries
AUDIO_WANTED_MARGIN = 0.005  # s: audio_wanted_at's allowance for the network's jitter


def audio_specific_config(sample_rate: int, channels: int) -> bytes:
    """The two-byte AAC-LC AudioSpecificConfig for ``sample_rate`` and ``channels``."""
    value = (AAC_OBJECT_TYPE_LC << 11) | (_AAC_RATE_INDEX[sample_rate] << 7) | (channels << 3)
    return value.to_bytes(2, "big")


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a call's media becomes RTMP (from the settings)."""

    transcode_video: bool = False  # disable_streaming_proxy: re-encode H.264 too
    audio_output: str = "aac"  # "aac" or "passthrough" (G.711 and 16 kHz Speex only; others become AAC)
    aac_sample_rate: int = 44100  # 0: the input codec's own rate (no resampling)
    audio_bitrate: int = 0  # AAC bits per second; 0: by the sample rate (see transcoder.aac_bitrate)
    aac_coder: str = "fast"  # FFmpeg's aac_coder: fast or twoloop
    aac_narrowband_cutoff: int = 3400  # the AAC encoder's low-pass (Hz) for 8 kHz sources; 0: FFmpeg's own
    aac_frames_per_job: int = 2  # G.711: AAC frames of input per worker job (an encoder visit)
    video_bitrate: int = 1_500_000
    keyframe_interval_s: float = 2.0
    worker_queue: int = 50
    reconnect_delays: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 15.0)
    rtmp_chunk_size: int = 65536  # what each destination sends with (a frame in one chunk)
    connect_timeout: float = 10.0
    max_buffered_bytes: int = 2 * 1024 * 1024


@dataclasses.dataclass
class StreamStats:
    audio_frames_in: int = 0
    video_frames_in: int = 0
    tags_out: int = 0
    audio_dropped: int = 0
    video_dropped: int = 0
    keyframe_requests: int = 0


PublisherFactory = Callable[..., Any]


class CallStream:
    """One call's stream: media in, FLV tags out to its destinations."""

    # Slots: more than 30 attributes (see MediaStreamSession.__slots__).  '__dict__': tests' stand-ins.
    __slots__ = (
        '_reactor', 'name', '_options', '_audio', '_video', '_request_far_keyframe', '_publisher_factory', 'stats',
        'clock', '_destinations', '_publishers', '_metadata', '_video_header', '_audio_header', '_parameter_sets',
        '_video_encoder', '_audio_worker', '_video_worker', '_audio_passthrough', '_aac_sample_rate', '_audio_batch',
        '_audio_batch_ms', '_audio_batch_end', '_audio_batch_arrival', '_audio_batch_samples', '_audio_frame_in',
        '_stopped', '_pool', '_latency', '_on_first_keyframe', '_arrivals', '__dict__',
    )

    def __init__(
        self,
        reactor: Any,
        name: str,
        options: StreamOptions,
        *,
        audio: MediaParams | None,
        video: MediaParams | None,
        request_keyframe: Callable[[], None],
        publisher_factory: PublisherFactory = RtmpPublisher,
        latency: Any = None,
        on_first_keyframe: Callable[[float], None] | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        """``latency`` (``{"audio": Histogram, "video": Histogram}``, see ``wcsgw.metrics``) gets, for each tag
        written to an active destination, the seconds since the RTP packet that completed its frame arrived; ``on_first_keyframe(now)`` is called when
        the first keyframe is written to an active destination."""
        self._reactor = reactor
        self.name = name
        self._options = options
        self._audio = audio
        self._video = video
        self._request_far_keyframe = request_keyframe
        self._publisher_factory = publisher_factory
        self.stats = StreamStats()
        self.clock = MediaClock()
        self._destinations: dict[str, Any] = {}
        self._publishers: tuple[Any, ...] = ()  # the destinations' publishers, what each tag goes to
        self._metadata: FlvTag | None = None
        self._video_header: FlvTag | None = None
        self._audio_header: FlvTag | None = None
        self._parameter_sets: tuple[bytes, bytes] | None = None
        self._video_encoder: list[VideoTranscoder] = []  # filled in the worker thread once it made the encoder
        self._audio_worker: TranscodeWorker[EncodedAudio] | None = None
        self._video_worker: TranscodeWorker[EncodedVideo] | None = None
        self._audio_passthrough = False
        self._aac_sample_rate = 0
        # G.711 payloads waiting to go to the audio worker together (see _audio_in)
        self._audio_batch: list[bytes] = []
        self._audio_batch_ms = 0  # gateway time of its first sample
        self._audio_batch_end = 0  # RTP timestamp right after it
        self._audio_batch_arrival = 0.0  # when its last payload arrived
        self._audio_batch_samples = 0.0  # samples in it plus those the worker still holds (estimated)
        self._audio_frame_in = 0.0  # input samples per AAC frame; 0: no batching
        self._stopped = False
        self._pool = pool
        self._latency = latency
        self._on_first_keyframe = on_first_keyframe
        # (timestamp ms, arrival) of what went into each worker, to time what comes out of it
        self._arrivals: dict[str, collections.deque[tuple[int, float]]] = {
            AUDIO: collections.deque(maxlen=512), VIDEO: collections.deque(maxlen=512)}
        self._setup_audio()
        self._setup_video()
        self._metadata = flv.metadata_tag(self._metadata_fields())

    # -- set-up ---------------------------------------------------------------------------------------------

    def _setup_audio(self) -> None:
        params = self._audio
        if params is None:
            return
        self.clock.add_track(AUDIO, params.clock_rate)
        codec = params.codec.upper()
        passthrough_ok = codec in ("PCMU", "PCMA") or (codec == "SPEEX" and params.clock_rate == 16000)
        if self._options.audio_output == "passthrough" and passthrough_ok:
            self._audio_passthrough = True
            return
        rate = self._options.aac_sample_rate or source_sample_rate(params.codec, params.clock_rate)
        channels = 1
        self._aac_sample_rate = rate
        self._audio_header = flv.aac_sequence_header_tag(0, audio_specific_config(rate, channels))
        options = self._options
        if codec in ("PCMU", "PCMA") and params.channels == 1:
            # G.711 is one byte per sample and stateless: payloads that follow each other join into one job.
            # Sending the worker one job per AAC frame instead of one per packet costs far fewer thread hand-offs
            # (at 8 kHz, 1 instead of 6.4), and no latency: a frame cannot be encoded before its last sample.
            # At 44.1 kHz a frame is 186 input samples, about one packet: then gather at least 60 ms (3 packets),
            # a third of the hand-overs for at most 40 ms more audio latency.  ``aac_frames_per_job`` frames per
            # job: the encoder codes them one after the other while its state is in the caches (at 100 calls of
            # the bench two took the transcoding thread 11 % less CPU), and the first waits for the second.
            self._audio_frame_in = max(options.aac_frames_per_job * AAC_FRAME_SIZE * params.clock_rate / rate,
                                       MIN_AUDIO_JOB_MS * params.clock_rate / 1000)

        # A narrowband source (G.711, 8 kHz Speex) has nothing worth coding above the telephone band (G.712:
        # 300-3400 Hz); a lower cutoff leaves the encoder fewer bands to code, for less CPU at the same bit rate.
        narrowband = source_sample_rate(params.codec, params.clock_rate) <= 8000
        cutoff = options.aac_narrowband_cutoff if narrowband else 0

        def make() -> AudioTranscoder:
            return AudioTranscoder(params.codec, params.clock_rate, params.channels, output="aac",
                                   sample_rate=rate, bitrate=options.audio_bitrate, coder=options.aac_coder,
                                   cutoff=cutoff)

        self._audio_worker = TranscodeWorker(self._reactor, make, self._audio_out, max_queue=options.worker_queue,
                                             name=f"audio-{self.name}", pool=self._pool)

    def _setup_video(self) -> None:
        params = self._video
        if params is None:
            return
        self.clock.add_track(VIDEO, params.clock_rate)
        if params.codec.upper() == "H264" and not self._options.transcode_video:
            return
        options = self._options
        holder = self._video_encoder

        def make() -> VideoTranscoder:
            encoder = VideoTranscoder(params.codec.upper(), bitrate=options.video_bitrate,
                                      keyframe_interval_s=options.keyframe_interval_s)
            holder.append(encoder)
            return encoder

        self._video_worker = TranscodeWorker(self._reactor, make, self._video_out, max_queue=options.worker_queue,
                                             name=f"video-{self.name}", keyframe_gated=True,
                                             on_keyframe_needed=self._request_far_keyframe, pool=self._pool,
                                             prompt=True)  # video must not wait a read interval for RTMP

    def _metadata_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"duration": 0.0, "encoder": "wcsgw"}
        if self._video is not None:
            fields["videocodecid"] = 7
        if self._audio is not None:
            if self._audio_passthrough:
                codec = self._audio.codec.upper().replace("SPEEX", "speex")
                fields.update(audiocodecid=_FLV_AUDIO_CODEC_ID[codec],
                              audiosamplerate=16000 if codec == "speex" else 8000)
            else:
                fields.update(audiocodecid=10, audiosamplerate=self._aac_sample_rate)
            fields.update(audiosamplesize=16, stereo=False)
        return fields

    # -- destinations ---------------------------------------------------------------------------------------

    def add_destination(self, key: str, rtmp_url: str, rtmp_stream: str,
                        on_status: Callable[[RtmpStreamStatus, str], None]) -> Any:
        """Subscribe a new RTMP destination; it gets the headers now and media from the next keyframe."""
        options = self._options
        publisher = self._publisher_factory(
            self._reactor, rtmp_url, rtmp_stream, on_status=on_status, on_keyframe_needed=self.request_keyframe,
            reconnect_delays=options.reconnect_delays, connect_timeout=options.connect_timeout,
            max_buffered_bytes=options.max_buffered_bytes, chunk_size=options.rtmp_chunk_size)
        self._destinations[key] = publisher
        self._publishers = tuple(self._destinations.values())
        for header in (self._metadata, self._video_header, self._audio_header):
            if header is not None:
                publisher.write(header)
        publisher.start()
        return publisher

    def remove_destination(self, key: str) -> Deferred[None]:
        publisher = self._destinations.pop(key, None)
        self._publishers = tuple(self._destinations.values())
        if publisher is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        return publisher.stop()

    def destinations(self) -> dict[str, Any]:
        return dict(self._destinations)

    def publishers(self) -> list[Any]:
        return list(self._destinations.values())

    def workers(self) -> list[TranscodeWorker[Any]]:
        return [w for w in (self._audio_worker, self._video_worker) if w is not None]

    def request_keyframe(self) -> None:
        """A destination needs a keyframe: from the encoder when we re-encode, else from the far end."""
        self.stats.keyframe_requests += 1
        if self._video_worker is not None and self._video_encoder:
            self._video_encoder[0].request_keyframe()
            if not self._video_worker.waiting_for_keyframe:
                return
        self._request_far_keyframe()

    # -- media in -------------------------------------------------------------------------------------------

    def media_event(self, kind: str, event: Any, now: float) -> None:
        """An event of the audio or video RTP session (frames, sender reports, restarts); never raises."""
        if self._stopped:
            return
        try:
            kind_of_event = type(event)
            if kind_of_event is AudioFrame:
                self._audio_in(event, now)
            elif kind_of_event is AccessUnit:
                self._h264_in(event, now)
            elif isinstance(event, Vp8Frame):
                self._vp8_in(event, now)
            elif isinstance(event, SenderReportReceived):
                self.clock.on_sender_report(kind, event.report.ntp_seconds, event.extended_rtp_timestamp,
                                            event.report.arrival)
            elif isinstance(event, StreamRestarted):
                self.clock.reset_track(kind)
        except Exception:
            log.failure("stream {name}: dropped a {kind} event", name=self.name, kind=kind)

    def media_events(self, kind: str, events: list[Any], now: float) -> None:
        """``media_event`` for each of ``events`` in turn (a delivery's: every audio packet is one); never raises.

        An audio payload that continues the batch being gathered for the AAC worker (most of them) is added to it
        here, without the calls ``media_event`` makes for it: what ``_audio_in`` and ``_batch_audio`` do with it,
        written out."""
        if self._stopped:
            return
        params = self._audio
        batch = self._audio_batch
        stats = self.stats
        for event in events:
            if (type(event) is AudioFrame and batch and event.timestamp == self._audio_batch_end
                    and self._audio_frame_in and params is not None and event.payload_type == params.payload_type):
                payload = event.payload
                stats.audio_frames_in += 1
                batch.append(payload)
                self._audio_batch_end = event.timestamp + len(payload)
                self._audio_batch_arrival = event.arrival
                self._audio_batch_samples += len(payload)
                if self._audio_batch_samples >= self._audio_frame_in:
                    try:
                        self._flush_audio_batch()
                    except Exception:
                        log.failure("stream {name}: dropped an audio batch", name=self.name)
                    self._audio_batch_samples %= self._audio_frame_in
                continue
            self.media_event(kind, event, now)
            if self._stopped:
                return

    def audio_wanted_at(self) -> float | None:
        """When the audio the AAC job being gathered lacks will have come: the arrival of its last payload so far,
        plus the time of the samples it still needs, plus ``AUDIO_WANTED_MARGIN``; None when audio is not gathered
        into jobs or none has come.  Read then, the call's audio socket hands over a job's last packet an interval
        at most after it came, and the packets before it together (see ``MediaSockets.bind``)."""
        frame_in = self._audio_frame_in
        params = self._audio
        if not frame_in or params is None or self._stopped or not self._audio_batch_arrival:
            return None
        missing = frame_in - self._audio_batch_samples
        return self._audio_batch_arrival + missing / params.clock_rate + AUDIO_WANTED_MARGIN

    def _audio_in(self, frame: AudioFrame, now: float) -> None:
        params = self._audio
        if params is None or frame.payload_type != params.payload_type:
            return
        self.stats.audio_frames_in += 1
        if self._audio_frame_in and self._audio_batch and frame.timestamp == self._audio_batch_end:
            # the next payload of the batch being gathered: only the batch's first payload needs its FLV time
            self._batch_audio(frame, 0)
            return
        timestamp = self.clock.timestamp_ms(AUDIO, frame.timestamp, now)
        if self._audio_passthrough:
            codec = params.codec.upper()
            if codec == "PCMU":
                tag = flv.pcmu_audio_tag(timestamp, frame.payload)
            elif codec == "PCMA":
                tag = flv.pcma_audio_tag(timestamp, frame.payload)
            else:
                tag = flv.speex_audio_tag(timestamp, frame.payload)
            self._emit(tag, frame.arrival)
        elif self._audio_frame_in:
            self._batch_audio(frame, timestamp)
        elif self._audio_worker is not None:
            self._submit_audio(frame.payload, timestamp, frame.arrival)

    def _batch_audio(self, frame: AudioFrame, timestamp: int) -> None:
        """Gather G.711 payloads until the worker can complete an AAC frame with them; ``timestamp`` (FLV ms)
        matters for the first payload of a batch only."""
        batch = self._audio_batch
        if batch and frame.timestamp != self._audio_batch_end:
            # not contiguous (loss, a jump): what is gathered goes now, and the worker's fill level is unknown
            self._flush_audio_batch()
            self._audio_batch_samples = 0.0
        if not batch:
            self._audio_batch_ms = timestamp
        batch.append(frame.payload)
        self._audio_batch_end = frame.timestamp + len(frame.payload)
        self._audio_batch_arrival = frame.arrival
        self._audio_batch_samples += len(frame.payload)
        if self._audio_batch_samples >= self._audio_frame_in:
            self._flush_audio_batch()
            self._audio_batch_samples %= self._audio_frame_in

    def _flush_audio_batch(self) -> None:
        batch = self._audio_batch
        if not batch:
            return
        payload = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._submit_audio(payload, self._audio_batch_ms, self._audio_batch_arrival)

    def _submit_audio(self, payload: bytes, timestamp: int, arrival: float) -> None:
        assert self._audio_worker is not None
        if self._audio_worker.submit(MediaInput(payload, timestamp)):
            self._arrivals[AUDIO].append((timestamp, arrival))
        else:
            self.stats.audio_dropped += 1

    def _h264_in(self, unit: AccessUnit, now: float) -> None:
        if self._video is None:
            return
        self.stats.video_frames_in += 1
        timestamp = self.clock.timestamp_ms(VIDEO, unit.timestamp, now)
        if self._video_worker is not None:
            self._submit_video(MediaInput(list(unit.nal_units), timestamp, unit.keyframe), unit.arrival)
            return
        self._video_access_unit(timestamp, unit.nal_units, unit.keyframe, unit.arrival)

    def _vp8_in(self, frame: Vp8Frame, now: float) -> None:
        if self._video is None or self._video_worker is None:
            return
        self.stats.video_frames_in += 1
        timestamp = self.clock.timestamp_ms(VIDEO, frame.timestamp, now)
        self._submit_video(MediaInput(frame.data, timestamp, frame.keyframe), frame.arrival)

    def _submit_video(self, item: MediaInput, arrival: float) -> None:
        assert self._video_worker is not None
        if self._video_worker.submit(item):
            self._arrivals[VIDEO].append((int(item.timestamp_ms), arrival))
        else:
            self.stats.video_dropped += 1

    def _arrival_of(self, kind: str, end_ms: float) -> float:
        """When the last input that went into a worker output ending at ``end_ms`` arrived (0.0: unknown)."""
        arrivals = self._arrivals[kind]
        arrival = 0.0
        while arrivals and arrivals[0][0] < end_ms:
            arrival = arrivals.popleft()[1]
        return arrival

    # -- media out ------------------------------------------------------------------------------------------

    def _audio_out(self, encoded: EncodedAudio) -> None:
        if not self._stopped:
            end = encoded.timestamp_ms + 1024_000 / encoded.sample_rate  # an AAC frame is 1024 samples
            self._emit(flv.aac_audio_tag(encoded.timestamp_ms, encoded.data), self._arrival_of(AUDIO, end))

    def _video_out(self, encoded: EncodedVideo) -> None:
        if not self._stopped:
            arrival = self._arrival_of(VIDEO, encoded.timestamp_ms + 0.5)
            self._video_access_unit(encoded.timestamp_ms, encoded.nal_units, encoded.keyframe, arrival)

    def _video_access_unit(self, timestamp: int, nal_units: Sequence[bytes], keyframe: bool,
                           arrival: float = 0.0) -> None:
        """H.264 NAL units to FLV: parameter sets go into the sequence header (re-sent when they change)."""
        sps = pps = None  # the first of each
        body = []
        for nal in nal_units:  # one pass: this runs for every frame
            if not nal:
                continue
            nal_kind = nal[0] & 0x1F
            if nal_kind not in _OUT_OF_BAND:
                body.append(nal)
            elif nal_kind == NAL_TYPE_SPS:
                if sps is None:
                    sps = nal
            elif nal_kind == NAL_TYPE_PPS and pps is None:
                pps = nal
        if sps is not None and pps is not None and (sps, pps) != self._parameter_sets:
            self._parameter_sets = (sps, pps)
            self._video_header = flv.avc_sequence_header_tag(timestamp, [sps], [pps])
            self._emit(self._video_header)
        if self._video_header is None:
            self.stats.video_dropped += 1  # nothing can decode video before the first SPS/PPS
            self.request_keyframe()
            return
        if not body:
            return
        self._emit(flv.avc_video_tag(timestamp, body, keyframe), arrival)

    def _emit(self, tag: FlvTag, arrival: float = 0.0) -> None:
        self.stats.tags_out += 1
        active = False
        for publisher in self._publishers:  # a tuple: a write may end a destination
            publisher.write(tag)
            if not active and getattr(publisher, "active", False):
                active = True
        if tag.is_sequence_header or not active:
            return
        now = self._reactor.seconds()
        if arrival and self._latency is not None:
            self._latency[VIDEO if tag.tag_type == flv.TagType.VIDEO else AUDIO].observe(max(0.0, now - arrival))
        if tag.is_keyframe and self._on_first_keyframe is not None:
            callback, self._on_first_keyframe = self._on_first_keyframe, None
            callback(now)

    # -- end ------------------------------------------------------------------------------------------------

    def stop(self) -> Deferred[Any]:
        """Stop the workers (joined off the reactor) and every destination (unpublished cleanly)."""
        self._stopped = True
        waits: list[Deferred[Any]] = []
        for worker in (self._audio_worker, self._video_worker):
            if worker is not None:
                waits.append(worker.stop())
        for key in list(self._destinations):
            waits.append(self.remove_destination(key))
        return DeferredList(waits, consumeErrors=True)
