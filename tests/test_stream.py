"""Tests for wcsgw.stream: media events to FLV tags, fan-out, headers for late joiners, keyframe requests."""

from __future__ import annotations

import io
from typing import Any

import av
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e.gateway import wait_for
from wcsgw.media.worker import MediaInput
from wcsgw.model import RtmpStreamStatus
from wcsgw.rtmp import flv
from wcsgw.rtp.h264 import AccessUnit
from wcsgw.rtp.params import AudioFrame, MediaParams
from wcsgw.stream import CallStream, StreamOptions, audio_specific_config

SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0x8C, 0x8D, 0x40])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00])
P_SLICE = bytes([0x41, 0x9A, 0x02])
AUDIO_PCMU = MediaParams(kind="audio", codec="PCMU", payload_type=0, clock_rate=8000,
                         remote_rtp_addr="127.0.0.1", remote_rtp_port=4000)
VIDEO_H264 = MediaParams(kind="video", codec="H264", payload_type=96, clock_rate=90000,
                         remote_rtp_addr="127.0.0.1", remote_rtp_port=4002)


class FakePublisher:
    def __init__(self, reactor: Any, url: str, stream: str, **kw: Any) -> None:
        self.url, self.stream, self.kw = url, stream, kw
        self.tags: list[flv.FlvTag] = []
        self.started = False
        self.stopped = False

    def write(self, tag: flv.FlvTag) -> None:
        self.tags.append(tag)

    def start(self) -> None:
        self.started = True

    def stop(self) -> Any:
        from twisted.internet.defer import succeed

        self.stopped = True
        return succeed(None)


class PassthroughTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.keyframe_requests = 0
        self.publishers: list[FakePublisher] = []

        def factory(*args: Any, **kw: Any) -> FakePublisher:
            publisher = FakePublisher(*args, **kw)
            self.publishers.append(publisher)
            return publisher

        def ask() -> None:
            self.keyframe_requests += 1

        self.stream = CallStream(self.clock, "s1", StreamOptions(audio_output="passthrough"), audio=AUDIO_PCMU,
                                 video=VIDEO_H264, request_keyframe=ask, publisher_factory=factory)

    def statuses(self, status: RtmpStreamStatus, reason: str) -> None:
        pass

    def test_h264_and_g711_pass_through(self) -> None:
        """H.264 access units become an AVC sequence header and AVCC video tags; PCMU becomes FLV G.711 tags."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.media_event("video", AccessUnit(90000, [SPS, PPS, IDR], True, SPS, PPS), 10.0)
        self.stream.media_event("audio", AudioFrame(8000, b"\xff" * 160, 0), 10.0)
        self.stream.media_event("video", AccessUnit(93000, [P_SLICE], False, SPS, PPS), 10.033)
        self.stream.media_event("audio", AudioFrame(8000, b"\xff" * 160, 8), 10.0)  # other payload type: ignored
        tags = self.publishers[0].tags
        kinds = [(t.tag_type, t.is_sequence_header, t.is_keyframe) for t in tags]
        self.assertEqual(kinds, [(flv.TagType.SCRIPT, False, False), (flv.TagType.VIDEO, True, True),
                                 (flv.TagType.VIDEO, False, True), (flv.TagType.AUDIO, False, False),
                                 (flv.TagType.VIDEO, False, False)])
        self.assertEqual(tags[1].body[5:], flv.avc_decoder_configuration_record([SPS], [PPS]))
        self.assertEqual(tags[2].body[5:], len(IDR).to_bytes(4, "big") + IDR)  # SPS/PPS only in the header
        self.assertEqual(tags[3].body[0] >> 4, 8)  # SoundFormat 8: G.711 mu-law
        self.assertEqual([t.timestamp_ms for t in tags[2:]], [0, 0, 33])
        _, metadata = flv.parse_metadata(tags[0].body)
        self.assertEqual((metadata["videocodecid"], metadata["audiocodecid"]), (7, 8))

    def test_every_attribute_is_a_slot(self) -> None:
        """The stream keeps its attributes in ``__slots__`` (more than 30, see MediaStreamSession's): after media
        to a destination, its ``__dict__`` is still empty."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.media_events("video", [AccessUnit(90000, [SPS, PPS, IDR], True, SPS, PPS)], 10.0)
        self.stream.media_events("audio", [AudioFrame(8000, b"\xff" * 160, 0)], 10.0)
        self.assertEqual(len(self.publishers[0].tags), 4)
        self.assertEqual(vars(self.stream), {})

    def test_late_joiner_gets_headers(self) -> None:
        """A destination added later gets metadata and the current sequence header before any media."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.media_event("video", AccessUnit(0, [SPS, PPS, IDR], True, SPS, PPS), 1.0)
        late = self.stream.add_destination("d2", "rtmp://127.0.0.1/live", "y", self.statuses)
        self.assertTrue(late.started)
        self.assertEqual([(t.tag_type, t.is_sequence_header) for t in late.tags],
                         [(flv.TagType.SCRIPT, False), (flv.TagType.VIDEO, True)])
        self.stream.media_event("video", AccessUnit(3000, [P_SLICE], False, SPS, PPS), 1.033)
        self.assertEqual(len(late.tags), 3)
        self.assertEqual(len(self.publishers[0].tags), 4)

    def test_changed_parameter_sets_resend_header(self) -> None:
        """New SPS/PPS mid-call produce a new sequence header."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.media_event("video", AccessUnit(0, [SPS, PPS, IDR], True, SPS, PPS), 1.0)
        sps2 = SPS[:-1] + b"\x41"
        self.stream.media_event("video", AccessUnit(3000, [sps2, PPS, IDR], True, sps2, PPS), 1.033)
        headers = [t for t in self.publishers[0].tags if t.is_sequence_header]
        self.assertEqual(len(headers), 2)

    def test_video_before_parameter_sets_asks_keyframe(self) -> None:
        """Video before any SPS/PPS cannot be decoded: dropped, and a keyframe is asked for."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.media_event("video", AccessUnit(0, [P_SLICE], False, None, None), 1.0)
        self.assertEqual((self.stream.stats.video_dropped, self.keyframe_requests), (1, 1))
        self.assertEqual([t.tag_type for t in self.publishers[0].tags], [flv.TagType.SCRIPT])

    def test_publisher_keyframe_request_reaches_far_end(self) -> None:
        """A destination's keyframe request goes to the far end when video passes through."""
        publisher = self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        publisher.kw["on_keyframe_needed"]()
        self.assertEqual(self.keyframe_requests, 1)

    def test_remove_and_stop(self) -> None:
        """remove_destination stops one destination; stop stops the rest."""
        self.stream.add_destination("d1", "rtmp://127.0.0.1/live", "x", self.statuses)
        self.stream.add_destination("d2", "rtmp://127.0.0.1/live", "y", self.statuses)
        self.successResultOf(self.stream.remove_destination("d1"))
        self.assertEqual([p.stopped for p in self.publishers], [True, False])
        self.successResultOf(self.stream.stop())
        self.assertEqual([p.stopped for p in self.publishers], [True, True])
        self.stream.media_event("video", AccessUnit(0, [SPS, PPS, IDR], True, SPS, PPS), 1.0)
        self.assertEqual(self.stream.stats.tags_out, 0)

    def test_audio_specific_config(self) -> None:
        """The AAC-LC AudioSpecificConfig: object type 2, rate index, channels."""
        self.assertEqual(audio_specific_config(44100, 1), b"\x12\x08")
        self.assertEqual(audio_specific_config(48000, 2), b"\x11\x90")


class PromptTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_re_encoded_video_is_prompt_and_audio_is_not(self) -> Any:
        """The transcoding lane of re-encoded video gives its results at once even while the pool collects
        results for the media drains (video would wait a read interval); the AAC lane's wait."""
        stream = CallStream(reactor, "s-prompt", StreamOptions(transcode_video=True), audio=AUDIO_PCMU,
                            video=VIDEO_H264, request_keyframe=lambda: None, publisher_factory=FakePublisher)
        assert stream._video_worker is not None and stream._audio_worker is not None
        self.assertTrue(stream._video_worker.prompt)
        self.assertFalse(stream._audio_worker.prompt)
        yield stream.stop()


class DestinationOptionsTests(TestCase):
    def test_destinations_send_with_the_chunk_size_of_the_options(self) -> None:
        """Each destination's publisher gets ``rtmp_chunk_size`` (65536 unless told: a frame in one chunk)."""
        for options, size in ((StreamOptions(), 65536), (StreamOptions(rtmp_chunk_size=4096), 4096)):
            publishers: list[FakePublisher] = []

            def factory(*args: Any, **kw: Any) -> FakePublisher:
                publishers.append(FakePublisher(*args, **kw))
                return publishers[-1]

            stream = CallStream(reactor, "s-chunk", options, audio=None, video=VIDEO_H264,
                                request_keyframe=lambda: None, publisher_factory=factory)
            stream.add_destination("a", "rtmp://127.0.0.1/live", "x", lambda *a: None)
            stream.add_destination("b", "rtmp://127.0.0.1/live", "y", lambda *a: None)
            self.assertEqual([p.kw["chunk_size"] for p in publishers], [size, size])


class AacTranscodeTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_pcmu_becomes_aac_decodable(self) -> Any:
        """PCMU is transcoded to AAC in a worker thread; the FLV made from the tags decodes with PyAV."""
        publishers: list[FakePublisher] = []

        def factory(*args: Any, **kw: Any) -> FakePublisher:
            publishers.append(FakePublisher(*args, **kw))
            return publishers[-1]

        stream = CallStream(reactor, "s2", StreamOptions(), audio=AUDIO_PCMU, video=None,
                            request_keyframe=lambda: None, publisher_factory=factory)
        stream.add_destination("d", "rtmp://127.0.0.1/live", "x", lambda *a: None)
        now = reactor.seconds()
        for n in range(100):  # two seconds of 20 ms packets, fed as the network would: a few at a time
            stream.media_event("audio", AudioFrame(n * 160, bytes([0x7F + (n % 3)]) * 160, 0), now + n * 0.02)
            if n % 10 == 9:
                yield wait_for(lambda: stream._audio_worker.queue_depth == 0, what="the audio worker")
        yield wait_for(lambda: sum(t.tag_type == flv.TagType.AUDIO for t in publishers[0].tags) >= 85,
                       what="AAC tags")
        self.assertEqual(stream.stats.audio_dropped, 0)
        data = flv.flv_file_bytes(publishers[0].tags, has_audio=True, has_video=False)
        container = av.open(io.BytesIO(data), format="flv")
        frames = list(container.decode(audio=0))
        self.assertGreaterEqual(len(frames), 80)
        self.assertEqual(frames[0].sample_rate, 44100)
        yield stream.stop()

    @inlineCallbacks
    def test_pcmu_at_its_own_rate_reaches_the_worker_a_frame_at_a_time(self) -> Any:
        """With ``aac_sample_rate`` 0 (source) PCMU becomes 8 kHz AAC, no resampling; contiguous payloads reach
        the worker about one job per ``aac_frames_per_job`` AAC frames (1024 samples, 6.4 packets, each) instead
        of one per packet, and no audio is lost on the way: 2 s of packets give 2 s of AAC, in order, 128 ms
        apart."""
        # 16000 samples: 15 full frames; one job per frame (the last 640 samples wait for more), or 7 jobs of two
        # (the last 1664 wait)
        for per_job, jobs in ((1, 15), (2, 7)):
            publishers: list[FakePublisher] = []

            def factory(*args: Any, **kw: Any) -> FakePublisher:
                publishers.append(FakePublisher(*args, **kw))
                return publishers[-1]

            stream = CallStream(reactor, f"s3-{per_job}", StreamOptions(aac_sample_rate=0, aac_frames_per_job=per_job),
                                audio=AUDIO_PCMU, video=None, request_keyframe=lambda: None,
                                publisher_factory=factory)
            stream.add_destination("d", "rtmp://127.0.0.1/live", "x", lambda *a: None)
            now = reactor.seconds()
            for n in range(100):
                stream.media_event("audio", AudioFrame(n * 160, bytes([0x10 + (n * 7) % 90]) * 160, 0,
                                                       now + n * 0.02), now + n * 0.02)
            worker = stream._audio_worker
            yield wait_for(lambda: worker.counters.processed == worker.counters.submitted, what="the audio worker")
            self.assertEqual(worker.counters.submitted, jobs)
            # the sequence header, and every frame in but the one the encoder holds back
            yield wait_for(lambda: len([t for t in publishers[0].tags if t.tag_type == flv.TagType.AUDIO])
                           >= jobs * per_job, what="AAC tags")
            audio = [t for t in publishers[0].tags if t.tag_type == flv.TagType.AUDIO and not t.is_sequence_header]
            steps = {b.timestamp_ms - a.timestamp_ms for a, b in zip(audio[1:], audio[2:])}
            self.assertEqual(steps, {128})
            data = flv.flv_file_bytes(publishers[0].tags, has_audio=True, has_video=False)
            frames = list(av.open(io.BytesIO(data), format="flv").decode(audio=0))
            self.assertEqual(frames[0].sample_rate, 8000)
            self.assertGreaterEqual(sum(f.samples for f in frames), 13 * 1024)
            self.assertEqual(stream._metadata_fields()["audiosamplerate"], 8000)
            yield stream.stop()

    @inlineCallbacks
    def test_narrowband_sources_get_the_cutoff(self) -> Any:
        """``aac_narrowband_cutoff`` (3400 Hz by default) reaches the AAC encoder of a G.711 call, at any AAC
        rate, and not that of a wideband one (Opus); 0 leaves FFmpeg's own."""
        opus = MediaParams(kind="audio", codec="opus", payload_type=111, clock_rate=48000, channels=2,
                           remote_rtp_addr="127.0.0.1", remote_rtp_port=4000)
        cases = [(StreamOptions(), AUDIO_PCMU, 3400), (StreamOptions(aac_sample_rate=0), AUDIO_PCMU, 3400),
                 (StreamOptions(aac_narrowband_cutoff=0), AUDIO_PCMU, 0), (StreamOptions(), opus, 0)]
        for n, (options, params, cutoff) in enumerate(cases):
            stream = CallStream(reactor, f"c{n}", options, audio=params, video=None,
                                request_keyframe=lambda: None, publisher_factory=FakePublisher)
            stream._audio_worker.submit(MediaInput(b"\x7f" * 1024 if params is AUDIO_PCMU else b"", 0.0))
            worker = stream._audio_worker
            yield wait_for(lambda: worker.counters.processed == 1, what="the audio worker")
            self.assertEqual(worker._transcoder.cutoff, cutoff, (options, params.codec))
            yield stream.stop()

    @inlineCallbacks
    def test_a_timestamp_jump_sends_the_gathered_audio_at_once(self) -> Any:
        """A payload that does not follow the last one (loss, a new timeline) sends what was gathered as its own
        job, so the worker sees the gap and fills or restarts its timeline as it does for single packets."""
        stream = CallStream(reactor, "s4", StreamOptions(aac_sample_rate=0), audio=AUDIO_PCMU, video=None,
                            request_keyframe=lambda: None, publisher_factory=FakePublisher)
        now = reactor.seconds()
        for n in (0, 1, 2, 5, 6):  # 3 and 4 lost
            stream.media_event("audio", AudioFrame(n * 160, b"\x7f" * 160, 0, now + n * 0.02), now + n * 0.02)
        worker = stream._audio_worker
        self.assertEqual(worker.counters.submitted, 1)  # packets 0-2; 5-6 still gathering
        self.assertEqual(stream._audio_batch_samples, 320)
        yield stream.stop()

    @inlineCallbacks
    def test_media_events_gathers_audio_as_media_event_does(self) -> Any:
        """``media_events`` (a delivery's events at once) makes the same jobs, with the same FLV times, as
        ``media_event`` one by one, across loss, another payload type and deliveries of any size; a payload that
        continues the batch takes no ``media_event`` call."""
        now = reactor.seconds()
        numbers = [*range(6), *range(8, 40), *range(60, 70)]  # two gaps
        events = [AudioFrame(n * 160, bytes([0x20 + n % 60]) * 160, 0, now + n * 0.02) for n in numbers]
        events.insert(7, AudioFrame(7 * 160, b"\x11" * 160, 8, now))  # another payload type: not ours
        jobs: dict[str, list[tuple[bytes, float]]] = {}
        streams = []
        for name in ("one-by-one", "together"):
            stream = CallStream(reactor, name, StreamOptions(aac_sample_rate=0), audio=AUDIO_PCMU, video=None,
                                request_keyframe=lambda: None, publisher_factory=FakePublisher)
            worker = stream._audio_worker
            submitted = jobs[name] = []
            submit = worker.submit  # type: ignore[union-attr]
            worker.submit = (lambda item, submit=submit, submitted=submitted:  # type: ignore[union-attr]
                             submitted.append((bytes(item.data), item.timestamp_ms)) or submit(item))
            streams.append(stream)
        one, together = streams
        for event in events:
            one.media_event("audio", event, event.arrival)
        single = together.media_event
        single_calls: list[object] = []
        together.media_event = lambda kind, event, now: single_calls.append(event) or single(kind, event, now)
        position = 0
        for size in (1, 3, 2, 5, 4, 7, 1, 2, 9, 3, 30):  # deliveries of one payload and of several
            delivery = events[position:position + size]
            if delivery:
                together.media_events("audio", delivery, delivery[-1].arrival)
            position += size
        self.assertGreater(len(jobs["one-by-one"]), 3)
        self.assertEqual(jobs["together"], jobs["one-by-one"])
        self.assertEqual(together.stats.audio_frames_in, one.stats.audio_frames_in)
        self.assertEqual(together._audio_batch_samples, one._audio_batch_samples)
        self.assertEqual(together._audio_batch, one._audio_batch)
        # a media_event call for each payload that starts a batch (and the other payload type), not for each
        self.assertLess(len(single_calls), len(events) / 2)
        for stream in streams:
            yield stream.stop()

    @inlineCallbacks
    def test_audio_is_wanted_when_the_job_can_be_complete(self) -> Any:
        """``audio_wanted_at``: the last payload's arrival plus the time of the samples the job being gathered
        still lacks (and a 5 ms margin); None before any audio, and for a stream that does not gather jobs."""
        stream = CallStream(reactor, "s6", StreamOptions(aac_sample_rate=0), audio=AUDIO_PCMU, video=None,
                            request_keyframe=lambda: None, publisher_factory=FakePublisher)
        self.assertIsNone(stream.audio_wanted_at())
        now = 1000.0
        frames = [AudioFrame(n * 160, b"\x7f" * 160, 0, now + n * 0.02) for n in range(5)]
        stream.media_events("audio", frames, now + 0.08)
        # a job is two AAC frames, 2048 samples at 8 kHz: 800 gathered, 1248 (156 ms) to come after 80 ms
        self.assertAlmostEqual(stream.audio_wanted_at(), now + 0.08 + 1248 / 8000 + 0.005)
        more = [AudioFrame(n * 160, b"\x7f" * 160, 0, now + n * 0.02) for n in range(5, 13)]
        stream.media_events("audio", more, now + 0.24)
        self.assertEqual(stream._audio_worker.counters.submitted, 1)  # 13 payloads: 2080 samples, a job
        # the next job lacks 2048 - 32 samples after the last payload (240 ms)
        self.assertAlmostEqual(stream.audio_wanted_at(), now + 0.24 + 2016 / 8000 + 0.005)
        yield stream.stop()
        self.assertIsNone(stream.audio_wanted_at())
        passthrough = CallStream(reactor, "s7", StreamOptions(audio_output="passthrough"), audio=AUDIO_PCMU,
                                 video=None, request_keyframe=lambda: None, publisher_factory=FakePublisher)
        passthrough.media_events("audio", frames, now + 0.08)
        self.assertIsNone(passthrough.audio_wanted_at())
        yield passthrough.stop()

    @inlineCallbacks
    def test_at_44100_hz_a_job_carries_at_least_60_ms(self) -> Any:
        """At 44.1 kHz an AAC frame needs about one packet of PCMU; payloads still go to the worker 60 ms (480
        samples) at a time: a third of the jobs."""
        stream = CallStream(reactor, "s5", StreamOptions(), audio=AUDIO_PCMU, video=None,
                            request_keyframe=lambda: None, publisher_factory=FakePublisher)
        now = reactor.seconds()
        for n in range(60):  # 1.2 s
            stream.media_event("audio", AudioFrame(n * 160, bytes([0x20 + n % 60]) * 160, 0, now + n * 0.02),
                               now + n * 0.02)
        worker = stream._audio_worker
        self.assertEqual(worker.counters.submitted, 20)  # 9600 samples in jobs of 480
        yield wait_for(lambda: worker.counters.processed == 20, what="the audio worker")
        yield stream.stop()

    @inlineCallbacks
    def test_the_clock_times_each_job_not_each_payload(self) -> Any:
        """A job's FLV time is its first payload's: the clock is asked once per job, and the job gets the time
        the clock gives for that payload."""
        stream = CallStream(reactor, "s6", StreamOptions(), audio=AUDIO_PCMU, video=None,
                            request_keyframe=lambda: None, publisher_factory=FakePublisher)
        asked: list[int] = []
        timestamp_ms = stream.clock.timestamp_ms

        def counting(track: str, rtp_timestamp: int, now: float) -> int:
            asked.append(rtp_timestamp)
            return timestamp_ms(track, rtp_timestamp, now)

        stream.clock.timestamp_ms = counting  # type: ignore[method-assign]
        jobs: list[float] = []
        submit = stream._audio_worker.submit  # type: ignore[union-attr]
        stream._audio_worker.submit = lambda item: jobs.append(item.timestamp_ms) or submit(item)  # type: ignore
        now = reactor.seconds()
        for n in range(30):  # 0.6 s: ten jobs of three payloads
            stream.media_event("audio", AudioFrame(n * 160, b"\x55" * 160, 0, now + n * 0.02), now + n * 0.02)
        self.assertEqual(asked, [n * 160 for n in range(0, 30, 3)])
        self.assertEqual(len(jobs), 10)
        self.assertEqual([b - a for a, b in zip(jobs, jobs[1:])], [60] * 9)
        yield stream.stop()
