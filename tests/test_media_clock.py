"""Tests for wcsgw.media.clock: RTP timestamps to FLV milliseconds, arrival anchoring and SR lip sync."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.media.clock import MediaClock, ntp_to_seconds

NTP_BASE = 3_900_000_000.0  # an NTP time in 2023, as a far end would send it


def audio_video_clock() -> MediaClock:
    clock = MediaClock()
    clock.add_track("audio", 8000)
    clock.add_track("video", 90000)
    return clock


class ArrivalAnchoringTests(SynchronousTestCase):
    def test_first_output_is_zero(self) -> None:
        """The call's first output is FLV time 0, whatever the RTP timestamp or arrival time."""
        clock = audio_video_clock()
        self.assertEqual(clock.timestamp_ms("audio", 123456, now=1000.0), 0)

    def test_track_follows_rtp_timestamps(self) -> None:
        """Without SRs, a track advances by its RTP timestamps over its clock rate, not by arrival jitter."""
        clock = audio_video_clock()
        self.assertEqual(clock.timestamp_ms("audio", 1000, now=50.0), 0)
        self.assertEqual(clock.timestamp_ms("audio", 1160, now=50.035), 20)
        self.assertEqual(clock.timestamp_ms("audio", 1320, now=50.038), 40)
        self.assertEqual(clock.timestamp_ms("audio", 9000, now=51.0), 1000)

    def test_second_track_anchors_at_its_arrival(self) -> None:
        """A track that starts later is placed by its first packet's arrival relative to the call's origin."""
        clock = audio_video_clock()
        clock.timestamp_ms("audio", 0, now=10.0)
        self.assertEqual(clock.timestamp_ms("video", 777, now=10.5), 500)
        self.assertEqual(clock.timestamp_ms("video", 777 + 9000, now=10.7), 600)

    def test_audio_only_call(self) -> None:
        """An audio-only call needs nothing from a video track: it is timed from its first packet."""
        clock = MediaClock()
        clock.add_track("audio", 48000)
        outputs = [clock.timestamp_ms("audio", 5000 + 960 * i, now=3.0 + 0.02 * i) for i in range(100)]
        self.assertEqual(outputs, [20 * i for i in range(100)])

    def test_video_only_call_with_sender_reports(self) -> None:
        """A video-only call maps through its own SRs without waiting for an audio track."""
        clock = MediaClock()
        clock.add_track("video", 90000)
        clock.on_sender_report("video", NTP_BASE, 90000, arrival_now=20.0)
        self.assertTrue(clock.is_synchronized("video"))
        self.assertEqual(clock.timestamp_ms("video", 90000 + 3000, now=20.05), 0)
        self.assertEqual(clock.timestamp_ms("video", 90000 + 6000, now=20.08), 33)

    def test_unknown_track_is_refused(self) -> None:
        """Using a track that was never added raises ValueError naming it."""
        clock = MediaClock()
        with self.assertRaises(ValueError) as caught:
            clock.timestamp_ms("video", 0, now=0.0)
        self.assertEqual(str(caught.exception), "unknown track 'video'")


class WrapAroundTests(SynchronousTestCase):
    def test_rtp_timestamp_wrap(self) -> None:
        """32-bit RTP timestamps wrap without a jump in FLV time."""
        clock = audio_video_clock()
        start = (1 << 32) - 9000 * 2
        outputs = [clock.timestamp_ms("video", (start + 3000 * i) % (1 << 32), now=0.033 * i) for i in range(12)]
        self.assertEqual(outputs, [round(3000 * i / 90) for i in range(12)])

    def test_sender_report_across_wrap(self) -> None:
        """An SR whose RTP timestamp is just past the wrap maps packets just before it correctly."""
        clock = audio_video_clock()
        before_wrap = (1 << 32) - 800
        clock.timestamp_ms("audio", before_wrap, now=5.0)
        clock.on_sender_report("audio", NTP_BASE, 800, arrival_now=5.2)  # 1600 ticks = 200 ms later
        self.assertEqual(clock.timestamp_ms("audio", 800 + 1600, now=5.4), 400)

    def test_reordered_packet_does_not_go_backwards(self) -> None:
        """A late (reordered) frame gets the track's last timestamp, not an earlier one."""
        clock = audio_video_clock()
        clock.timestamp_ms("audio", 1600, now=1.0)
        self.assertEqual(clock.timestamp_ms("audio", 3200, now=1.2), 200)
        self.assertEqual(clock.timestamp_ms("audio", 2400, now=1.21), 200)
        self.assertEqual(clock.timestamp_ms("audio", 4000, now=1.3), 300)


class SenderReportTests(SynchronousTestCase):
    def test_sr_aligns_tracks_with_different_clock_rates(self) -> None:
        """With SRs on both tracks, frames captured at the same NTP time get the same FLV time."""
        clock = audio_video_clock()
        # SRs first: audio RTP 1000 <-> NTP_BASE, video RTP 500000 <-> NTP_BASE + 0.1.
        clock.on_sender_report("audio", NTP_BASE, 1000, arrival_now=100.0)
        clock.on_sender_report("video", NTP_BASE + 0.1, 500000, arrival_now=100.3)
        audio = clock.timestamp_ms("audio", 1000 + 8000, now=101.05)  # NTP_BASE + 1.0
        video = clock.timestamp_ms("video", 500000 + 81000, now=101.2)  # NTP_BASE + 1.0
        self.assertEqual(audio, 0)
        self.assertEqual(video, 0)
        self.assertEqual(clock.timestamp_ms("audio", 1000 + 16000, now=102.05), 1000)
        self.assertEqual(clock.timestamp_ms("video", 500000 + 81000 + 90000, now=102.2), 1000)

    def test_first_sr_keeps_running_track_continuous(self) -> None:
        """The first SR of a running track does not move that track: its timeline stays where arrival put it."""
        clock = audio_video_clock()
        for i in range(50):
            clock.timestamp_ms("audio", 160 * i, now=7.0 + 0.02 * i + 0.005 * (i % 3))
        clock.on_sender_report("audio", NTP_BASE, 160 * 50, arrival_now=8.03)
        self.assertEqual(clock.correction_ms("audio"), 0.0)
        self.assertEqual(clock.timestamp_ms("audio", 160 * 50, now=8.0), 1000)

    def test_sr_shift_is_slewed_not_jumped(self) -> None:
        """A later SR that moves a track's mapping back by 200 ms is worked off gradually, never backwards."""
        clock = audio_video_clock()
        clock.on_sender_report("video", NTP_BASE, 0, arrival_now=0.0)
        outputs = [clock.timestamp_ms("video", 3000 * i, now=0.033 * i) for i in range(30)]
        # The far end now says RTP 90000 was captured at NTP_BASE + 0.8 (200 ms earlier than before).
        clock.on_sender_report("video", NTP_BASE + 0.8, 90000, arrival_now=1.0)
        self.assertAlmostEqual(clock.correction_ms("video"), 200.0, places=3)
        outputs += [clock.timestamp_ms("video", 3000 * i, now=0.033 * i) for i in range(30, 150)]
        steps = [b - a for a, b in zip(outputs, outputs[1:])]
        self.assertTrue(all(step >= 0 for step in steps), steps)
        self.assertLessEqual(max(steps), 34)
        self.assertGreaterEqual(min(steps[30:]), 29)  # slewed at 10 %: 33 ms frames advance 30 ms
        self.assertEqual(clock.correction_ms("video"), 0.0)
        self.assertEqual(outputs[-1], round(149 * 33.333 - 200))

    def test_sr_shift_forward_is_slewed(self) -> None:
        """A later SR that moves the mapping forward is also slewed (frames advance a little faster)."""
        clock = audio_video_clock()
        clock.on_sender_report("audio", NTP_BASE, 0, arrival_now=0.0)
        outputs = [clock.timestamp_ms("audio", 160 * i, now=0.02 * i) for i in range(50)]
        clock.on_sender_report("audio", NTP_BASE + 1.1, 8000, arrival_now=1.0)  # 100 ms later than before
        outputs += [clock.timestamp_ms("audio", 160 * i, now=0.02 * i) for i in range(50, 200)]
        steps = [b - a for a, b in zip(outputs, outputs[1:])]
        self.assertTrue(all(19 <= step <= 23 for step in steps), steps)
        self.assertEqual(outputs[-1], 199 * 20 + 100)

    def test_huge_forward_shift_jumps(self) -> None:
        """A mapping change that would hold a track more than max_slew_s behind jumps forward at once."""
        clock = audio_video_clock()
        clock.on_sender_report("audio", NTP_BASE, 0, arrival_now=0.0)
        clock.timestamp_ms("audio", 0, now=0.0)
        clock.on_sender_report("audio", NTP_BASE + 2.0, 0, arrival_now=0.5)
        self.assertEqual(clock.correction_ms("audio"), 0.0)
        self.assertEqual(clock.timestamp_ms("audio", 160, now=0.52), 2020)

    def test_timeline_restart_reanchors(self) -> None:
        """When a track's RTP timestamps leave the arrival clock (a restart), it re-anchors at arrival."""
        clock = audio_video_clock()
        clock.timestamp_ms("audio", 1_000_000, now=0.0)
        self.assertEqual(clock.timestamp_ms("audio", 1_000_000 + 8000, now=1.0), 1000)
        self.assertEqual(clock.timestamp_ms("audio", 42, now=1.02), 1020)
        self.assertEqual(clock.timestamp_ms("audio", 42 + 160, now=1.04), 1040)

    def test_reset_track_keeps_output_monotonic(self) -> None:
        """After reset_track (new SSRC) the track anchors again at arrival and keeps going forwards."""
        clock = audio_video_clock()
        clock.timestamp_ms("audio", 0, now=0.0)
        clock.timestamp_ms("audio", 8000, now=1.0)
        clock.reset_track("audio")
        self.assertEqual(clock.timestamp_ms("audio", 555, now=1.5), 1500)

    def test_ntp_to_seconds(self) -> None:
        """ntp_to_seconds reads the 32.32 fixed point NTP timestamp of an SR."""
        self.assertEqual(ntp_to_seconds((3_900_000_000 << 32) | (1 << 31)), 3_900_000_000.5)


class SimulatedCallTests(SynchronousTestCase):
    def simulate(self, seed: int) -> tuple[list[tuple[float, int]], list[tuple[float, int]], MediaClock]:
        """20 s of call: audio 20 ms packets with 30+-5 ms delay, video 30 fps with 160+-15 ms delay, SRs."""
        rng = random.Random(seed)
        audio_base, video_base = rng.randrange(1 << 32), (1 << 32) - 90000 * 4  # video wraps at 4 s
        events: list[tuple[float, int, str, tuple[float, int]]] = []
        for i in range(1000):
            capture = 0.02 * i
            rtp = (audio_base + 160 * i) % (1 << 32)
            events.append((capture + 0.030 + rng.uniform(-0.005, 0.005), 1, "audio", (capture, rtp)))
        for i in range(600):
            capture = 0.005 + i / 30
            rtp = (video_base + round(capture * 90000)) % (1 << 32)
            events.append((capture + 0.160 + rng.uniform(-0.015, 0.015), 1, "video", (capture, rtp)))
        for send in (1.0, 6.0, 11.0, 16.0):
            rtp = (audio_base + round(send * 8000)) % (1 << 32)
            events.append((send + 0.032, 0, "audio-sr", (NTP_BASE + send, rtp)))
        for send in (2.5, 7.5, 12.5, 17.5):
            rtp = (video_base + round(send * 90000)) % (1 << 32)
            events.append((send + 0.150, 0, "video-sr", (NTP_BASE + send, rtp)))
        events.sort(key=lambda event: (event[0], event[1]))
        clock = audio_video_clock()
        out: dict[str, list[tuple[float, int]]] = {"audio": [], "video": []}
        for arrival, _, kind, payload in events:
            first, rtp = payload
            if kind.endswith("-sr"):
                clock.on_sender_report(kind[:-3], first, rtp, arrival_now=arrival)
            else:
                out[kind].append((first, clock.timestamp_ms(kind, rtp, now=arrival)))
        return out["audio"], out["video"], clock

    def test_lip_sync_within_40_ms(self) -> None:
        """With SRs, frames captured together get FLV times within 40 ms of each other once settled."""
        for seed in range(5):
            audio, video, clock = self.simulate(seed)
            audio_offset = {round(capture * 1000): ms - capture * 1000 for capture, ms in audio}
            reference = sorted(audio_offset.values())[len(audio_offset) // 2]
            for capture, ms in video:
                if capture < 5.0:
                    continue
                skew = (ms - capture * 1000) - reference
                self.assertLess(abs(skew), 40, f"seed {seed}: video at {capture:.3f} s off by {skew:.1f} ms")
            self.assertTrue(clock.is_synchronized("audio") and clock.is_synchronized("video"))

    def test_skew_before_sender_reports_is_the_delay_difference(self) -> None:
        """Before any SR, arrival anchoring shows the network delay difference (what the SRs fix)."""
        audio, video, _ = self.simulate(0)
        early_audio = next(ms - capture * 1000 for capture, ms in audio)
        early_video = next(ms - capture * 1000 for capture, ms in video)
        self.assertGreater(early_video - early_audio, 90)

    def test_monotonic_non_negative_outputs(self) -> None:
        """Every track's FLV timestamps start at or after 0 and never decrease, through SRs and wrap."""
        for seed in range(5):
            audio, video, _ = self.simulate(seed)
            for series in (audio, video):
                stamps = [ms for _, ms in series]
                self.assertGreaterEqual(min(stamps), 0)
                self.assertEqual(stamps, sorted(stamps))
            self.assertEqual(min(audio[0][1], video[0][1]), 0)


def _reference_timestamp_ms(clock: MediaClock, track: str, rtp_timestamp: int, now: float) -> int:
    """``timestamp_ms`` composed of the clock's helpers, as it was before it was written out for speed."""
    state = clock._track(track)
    ext = clock._unwrap(state, rtp_timestamp, remember=True)
    if state.anchor_ext is None:
        state.anchor_ext = ext
        state.anchor_local = now
    elif abs(clock._applied(state, ext) - now) > clock._resync_threshold_s:
        state.anchor_ext = ext
        state.anchor_local = now
        state.sr_ext = None
        state.correction = 0.0
        state.out_ext = None
    if state.out_ext is not None and ext > state.out_ext and state.correction:
        step = (ext - state.out_ext) / state.clock_rate * clock._slew_rate
        if abs(state.correction) <= step:
            state.correction = 0.0
        elif state.correction > 0:
            state.correction -= step
        else:
            state.correction += step
    local = clock._applied(state, ext)
    if clock._origin is None:
        clock._origin = local
    ms = max(round((local - clock._origin) * 1000.0), state.last_ms, 0)
    state.last_ms = ms
    state.outputs += 1
    if state.out_ext is None or ext > state.out_ext:
        state.out_ext = ext
    return ms


class WrittenOutTests(SynchronousTestCase):
    def test_same_outputs_as_the_helpers(self) -> None:
        """Through jitter, reordering, wraps, sender reports that move the mapping both ways (slewed and jumped),
        timeline restarts and track resets, ``timestamp_ms`` gives what the helpers composed give."""
        for seed in range(20):
            rng = random.Random(seed)
            fast, slow = audio_video_clock(), audio_video_clock()
            rtp = {"audio": rng.getrandbits(32), "video": rng.getrandbits(32)}
            now = 1000.0
            for _step in range(400):
                now += rng.uniform(0.0, 0.05)
                track = rng.choice(("audio", "video"))
                roll = rng.random()
                if roll < 0.05:  # a sender report, possibly disagreeing with the last one
                    ntp = NTP_BASE + now + rng.choice((0.0, 0.2, -0.3, 2.5, -5.0))
                    for clock in (fast, slow):
                        clock.on_sender_report(track, ntp, rtp[track], now)
                    continue
                if roll < 0.07:
                    for clock in (fast, slow):
                        clock.reset_track(track)
                if roll < 0.09:  # the far end restarts its timestamps
                    rtp[track] = rng.getrandbits(32)
                rtp[track] = (rtp[track] + rng.choice((0, 1, 160, 3000, 3600, -3000))) % 2**32
                self.assertEqual(fast.timestamp_ms(track, rtp[track], now),
                                 _reference_timestamp_ms(slow, track, rtp[track], now),
                                 f"seed {seed}")
            for track in ("audio", "video"):
                self.assertEqual(fast.correction_ms(track), slow.correction_ms(track))
                self.assertEqual(fast.is_synchronized(track), slow.is_synchronized(track))
