"""Tests for the session's batch receive (``MediaStreamSession.receive_rtp_many``): its fast path for runs of
in-order packets must leave exactly what ``receive_rtp`` leaves, packet by packet: events (frames with their
arrival times, keyframe requests, restarts, digits), counters, receive statistics, jitter buffer state and the
RTCP it sends.  Streams are real H.264 and VP8 captures and PCMU, put through loss, reordering, duplicates,
foreign sources, SSRC changes, payload types of DTMF and comfort noise, padding and malformed packets."""

from __future__ import annotations

import random
from dataclasses import asdict, fields, is_dataclass, replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.dtmf import TelephoneEvent
from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.session import MediaStreamSession

from .test_rtp_session import PUBLIC, audio_params, load_fixture, make, rtp, video_params

STRANGER = ("198.51.100.9", 5004)


def _state(session: MediaStreamSession) -> dict[str, Any]:
    """What a session shows of itself, for comparison."""
    stats = {
        ssrc: (s.received, s.octets, s.jitter, s.lost, s.expected, s.extended_highest_sequence, s.duplicated,
               s.reordered, s.late, s.last_arrival, s.received_since_report)
        for ssrc, s in session.stats.items()
    }
    buffer = session.jitter_buffer
    depacketizer = session.depacketizer
    return {
        "counters": asdict(session.counters),
        "stats": stats,
        "buffer": (buffer.released, buffer.lost, buffer.late, buffer.duplicates, buffer.out_of_range, buffer.resets,
                   buffer.forced, buffer.pending, buffer.ssrc),
        "depacketizer": None if depacketizer is None else (
            depacketizer.emitted, depacketizer.dropped_broken, depacketizer.errors, depacketizer.keyframe_needed),
        "timer": session.get_timer(),
    }


def _event(event: Any) -> Any:
    """An event with every field, ``arrival`` included (dataclass equality leaves it out)."""
    if is_dataclass(event):
        return type(event).__name__, tuple(getattr(event, f.name) for f in fields(event))
    return event


def _impaired(packets: list[RtpPacket], rng: random.Random, *,
              extra_pt: int | None = None) -> list[tuple[bytes, tuple[str, int]]]:
    """The packets with loss, swaps, duplicates, strangers, another SSRC for a while, padding, junk."""
    out: list[tuple[bytes, tuple[str, int]]] = []
    ssrc_switch = len(packets) * 2 // 3
    for index, packet in enumerate(packets):
        if index >= ssrc_switch:
            packet = replace(packet, ssrc=packet.ssrc ^ 0x1234)
        roll = rng.random()
        if roll < 0.03:
            continue  # lost
        data = bytes(packet)
        if roll < 0.05:
            out.append((data, STRANGER))
            continue
        out.append((data, PUBLIC))
        if roll < 0.07:
            out.append((data, PUBLIC))  # duplicate
        elif roll < 0.09 and len(out) >= 2:
            out[-1], out[-2] = out[-2], out[-1]  # reordered
        elif roll < 0.10:
            out.append((b"\x80\x60\x00", PUBLIC))  # too short
        elif roll < 0.11:
            padded = replace(packet, sequence_number=(packet.sequence_number + 1) % 65536,
                             payload=packet.payload[:1], padding_size=4)
            out.append((bytes(padded), PUBLIC))  # a padded packet where the next one is due
        elif roll < 0.12 and extra_pt is not None:
            event = bytes(TelephoneEvent(5, True, 10, 800))
            out.append((bytes(replace(packet, payload_type=extra_pt, payload=event, marker=False,
                                      sequence_number=(packet.sequence_number + 1) % 65536)), PUBLIC))
        elif roll < 0.13:
            out.append((bytes(replace(packet, payload_type=13, payload=b"\x40",
                                      sequence_number=(packet.sequence_number + 1) % 65536)), PUBLIC))
    return out


class EquivalenceMixin:
    """Feed the same datagrams to one session packet by packet and to another in batches; compare."""

    assertEqual: Any
    assertGreaterEqual: Any
    unchanged = 0  # batches after which receive_rtp_many said no deadline moved earlier
    continued = 0  # batches that began with the fast path's run still open

    def check(self, make_session: Any, datagrams: list[tuple[bytes, tuple[str, int]]], seed: int) -> int:
        """Return how many datagrams ``receive_rtp`` saw in the batched session (the rest took the fast path)."""
        rng = random.Random(seed)
        one, many = make_session(), make_session()
        slow_calls = 0
        original = many.receive_rtp

        def counting(data: bytes, addr: tuple[str, int], now: float) -> None:
            nonlocal slow_calls
            slow_calls += 1
            original(data, addr, now)

        many.receive_rtp = counting  # type: ignore[method-assign]
        now = 0.0
        index = 0
        while index < len(datagrams):
            batch = []
            for _ in range(rng.choice((1, 2, 3, 5, 8, 20))):
                if index == len(datagrams):
                    break
                now += rng.choice((0.0, 0.001, 0.004, 0.011))
                data, addr = datagrams[index]
                batch.append((data, addr, now))
                index += 1
            for data, addr, arrival in batch:
                one.receive_rtp(data, addr, arrival)
            now += rng.choice((0.0, 0.002))
            deadline = many.get_timer()
            if many._run:  # the batch continues a run of the fast path that nothing synced
                self.continued += 1
            self.assertEqual(many.receive_rtp_many(batch, now), 0)
            if many.deadlines_unchanged:  # the protocol then keeps its timer: nothing may be due sooner
                assert deadline is not None
                self.assertGreaterEqual(many.get_timer(), deadline)
                self.unchanged += 1
            for session in (one, many):  # the timer, where both would fire it
                when = session.get_timer()
                if when is not None and when <= now:
                    session.handle_timer(now)
            self.assertEqual([_event(e) for e in many.events()], [_event(e) for e in one.events()])
            self.assertEqual(many.datagrams_to_send(), one.datagrams_to_send())
            if rng.random() < 0.2:  # reading the statistics brings them up to date: not after every batch
                self.assertEqual(_state(many), _state(one))
        self.assertEqual(_state(many), _state(one))
        return slow_calls


class H264Tests(EquivalenceMixin, SynchronousTestCase):
    def packets(self, repeat: int = 6) -> list[RtpPacket]:
        base = load_fixture("h264_160x120.rtp")
        out: list[RtpPacket] = []
        # the capture again and again, continuing its numbering from 65000 so that it wraps
        step = base[-1].timestamp - base[0].timestamp + 3000
        for round_ in range(repeat):
            for packet in base:
                out.append(replace(packet, sequence_number=(65000 + len(out)) % 65536,
                                   timestamp=(packet.timestamp + round_ * step) % 2**32))
        return out

    def test_clean_stream_takes_the_fast_path(self) -> None:
        """Without impairment, only the first packets of the stream go through receive_rtp."""
        packets = self.packets()
        slow = self.check(lambda: make(video_params(remote_pli=True)), [(bytes(p), PUBLIC) for p in packets], 1)
        self.assertLess(slow, 3)
        self.assertGreater(self.unchanged, 10)
        self.assertGreater(self.continued, 10)
        self.assertGreater(len(packets), 100)

    def test_impaired_streams(self) -> None:
        for seed in range(12):
            rng = random.Random(seed)
            datagrams = _impaired(self.packets(), rng, extra_pt=101)
            buffered = seed % 2 == 0
            slow = self.check(lambda: make(video_params(remote_pli=True, telephone_event_pt=101),
                                           rtp_in_buffer=buffered, jitter_buffer_ms=30.0), datagrams, seed)
            self.assertLess(slow, len(datagrams) // 2, f"seed {seed}: the fast path was hardly taken")
        self.assertGreater(self.continued, 100)


    def test_odd_fu_a_fragments(self) -> None:
        """FU-A middle fragments the fast path must not simply append: an empty one (an error), one with another
        NAL type or NRI, one with the start or end bit, a reserved bit set."""
        packets = self.packets(repeat=3)
        middles = [index for index, p in enumerate(packets)
                   if p.payload[0] & 0x1F == 28 and not p.payload[1] & 0xC0 and not p.marker]
        self.assertGreater(len(middles), 12)
        changes = [
            lambda payload: payload[:2],  # no fragment bytes
            lambda payload: bytes((payload[0], (payload[1] & 0xE0) | ((payload[1] + 1) & 0x1F))) + payload[2:],
            lambda payload: bytes((payload[0] ^ 0x20,)) + payload[1:],  # another NRI
            lambda payload: bytes((payload[0], payload[1] | 0x80)) + payload[2:],  # a start in the middle
            lambda payload: bytes((payload[0], payload[1] | 0x40)) + payload[2:],  # an early end
            lambda payload: bytes((payload[0], payload[1] | 0x20)) + payload[2:],  # the reserved bit
        ]
        for number, index in enumerate(middles[2::2][:2 * len(changes)]):
            packets[index] = replace(packets[index], payload=changes[number % len(changes)](packets[index].payload))
        for seed in range(4):
            self.check(lambda: make(video_params(remote_pli=True)), [(bytes(p), PUBLIC) for p in packets], seed)


class Vp8Tests(EquivalenceMixin, SynchronousTestCase):
    def test_impaired_streams(self) -> None:
        base = load_fixture("vp8_160x120.rtp")
        packets = [replace(p, sequence_number=(65500 + i) % 65536) for i, p in enumerate(base * 1)]
        for seed in range(6):
            datagrams = _impaired(packets, random.Random(seed))
            self.check(lambda: make(video_params(codec="VP8", payload_type=97), rtp_in_buffer=bool(seed % 2)),
                       datagrams, seed)


class AudioTests(EquivalenceMixin, SynchronousTestCase):
    def packets(self) -> list[RtpPacket]:
        rng = random.Random(3)
        return [RtpPacket(0, i == 0, (65400 + i) % 65536, (2**32 - 8000 + 160 * i) % 2**32, 0x5555,
                          payload=bytes(rng.randrange(256) for _ in range(160))) for i in range(400)]

    def test_clean_stream_takes_the_fast_path(self) -> None:
        packets = self.packets()
        slow = self.check(lambda: make(audio_params()), [(bytes(p), PUBLIC) for p in packets], 2)
        self.assertLess(slow, 3)

    def test_timestamps_stepping_back_in_sequence(self) -> None:
        """A far end that restarts its timestamps (back, then forward again) without a new SSRC, its sequence
        numbers running on: the fast path unwraps the steps as the full path does."""
        packets = self.packets()
        for index in range(150, 400):
            packets[index].timestamp = (packets[index].timestamp - 40000) % 2**32
        for index in range(300, 400):
            packets[index].timestamp = (packets[index].timestamp + 90000) % 2**32
        self.check(lambda: make(audio_params()), [(bytes(p), PUBLIC) for p in packets], 5)

    def test_impaired_streams(self) -> None:
        for seed in range(12):
            datagrams = _impaired(self.packets(), random.Random(seed), extra_pt=101)
            self.check(lambda: make(audio_params(), rtp_in_buffer=bool(seed % 2), jitter_buffer_ms=40.0),
                       datagrams, seed)

    def test_not_receiving_takes_the_slow_path(self) -> None:
        """A session that does not receive leaves every packet to receive_rtp (which drops and counts it)."""
        packets = self.packets()[:50]
        datagrams = [(bytes(p), PUBLIC) for p in packets]
        slow = self.check(lambda: make(audio_params(direction="sendonly")), datagrams, 4)
        self.assertEqual(slow, len(datagrams))


class SampledArrivalTests(SynchronousTestCase):
    """Audio read with the kernel's receive time of the first datagram of each read only, the others arriving as
    None (``MediaSockets.bind(stamp_each=False)``): each takes its arrival from the last stamped packet's and the
    media time between their RTP timestamps (kept between that packet's arrival and the read), and the
    interarrival jitter comes from the stamped packets alone, on the fast path and the full path alike."""

    RATE = 8000
    STEP = 160  # PCMU, 20 ms

    def packets(self, count: int, step: int = STEP) -> list[bytes]:
        return [rtp(1000 + i, 5000 + step * i) for i in range(count)]

    def feed(self, session: MediaStreamSession, packets: list[bytes], per_read: int,
             late: Any = lambda read: 0.0) -> list[Any]:
        """Read ``packets`` ``per_read`` at a time, the first of each read stamped when it was sent (the packets
        go 20 ms apart from 100 s on) plus ``late(read)``, the read 5 ms after its last packet; the events."""
        events: list[Any] = []
        for read, start in enumerate(range(0, len(packets), per_read)):
            batch = packets[start:start + per_read]
            first = 100.0 + start * 0.02 + late(read)
            now = 100.0 + (start + len(batch) - 1) * 0.02 + 0.005
            datagrams = [(data, PUBLIC, first if n == 0 else None) for n, data in enumerate(batch)]
            self.assertEqual(session.receive_rtp_many(datagrams, now), 0)
            events += session.events()
        return events

    def test_arrivals_follow_the_stamped_packet_by_their_timestamps(self) -> None:
        session = make(audio_params())
        events = self.feed(session, self.packets(65), 13)
        arrivals = [event.arrival for event in events if type(event).__name__ == "AudioFrame"]
        self.assertEqual(len(arrivals), 65)
        for index, arrival in enumerate(arrivals):
            first = index - index % 13
            self.assertAlmostEqual(arrival, 100.0 + first * 0.02 + (index - first) * self.STEP / self.RATE, 9)
        # all but the first of each read took the fast path
        self.assertEqual(session.counters.rtp_accepted, 65)

    def test_an_arrival_stays_between_the_stamped_packets_and_the_read(self) -> None:
        """Timestamps that run ahead of the clock put the arrival at the read's time, timestamps behind the
        stamped packet's (a far end that steps back) at that packet's."""
        session = make(audio_params())
        fast = self.packets(10, step=4 * self.STEP)  # 80 ms of media per 20 ms packet
        events = self.feed(session, fast, 10)
        now = 100.0 + 9 * 0.02 + 0.005
        self.assertEqual([e.arrival for e in events][-3:], [now] * 3)
        session = make(audio_params())
        back = [rtp(1000 + i, 900000 - self.STEP * i) for i in range(10)]
        events = self.feed(session, back, 10, late=lambda read: 0.05)
        self.assertEqual([e.arrival for e in events], [100.05] * 10)

    def _expected_jitter(self, stamped: list[tuple[float, int]]) -> float:
        """RFC 3550 A.8 over ``stamped`` (arrival, timestamp) alone."""
        jitter, previous = 0.0, None
        for arrival, timestamp in stamped:
            transit = int(arrival * self.RATE) - timestamp
            if previous is not None:
                jitter += (abs(transit - previous) - jitter) / 16.0
            previous = transit
        return jitter

    def test_the_jitter_comes_from_the_stamped_packets_alone(self) -> None:
        """Every other read's stamped packet 4 ms late: the jitter is A.8's over those packets, on the fast path
        (clean reads) and the full path (a read that lost a packet: the one after the gap is estimated there)."""
        packets = self.packets(13 * 40)

        def late(read: int) -> float:
            return 0.004 * (read % 2)

        for lose in (False, True):
            session = make(audio_params())
            fed = [p for i, p in enumerate(packets) if not (lose and i % 13 == 6)]
            self.feed(session, fed, 13, late)
            stamped = [(100.0 + start * 0.02 + late(read), 5000 + self.STEP * start)
                       for read, start in enumerate(range(0, len(fed), 13))]
            if lose:  # the packets' own numbers: after a loss the reads start elsewhere in the stream
                stamped = []
                for read, start in enumerate(range(0, len(fed), 13)):
                    number = int.from_bytes(fed[start][2:4], "big") - 1000
                    stamped.append((100.0 + start * 0.02 + late(read), 5000 + self.STEP * number))
            stats = session.stats[0x5555]
            self.assertAlmostEqual(stats.jitter, self._expected_jitter(stamped), 6)
            self.assertGreater(stats.jitter, 10.0)  # about 32 units (4 ms) between every two stamped packets
            self.assertEqual(stats.received, len(fed))

    def test_without_any_stamped_packet_an_arrival_is_the_reads(self) -> None:
        session = make(audio_params())
        datagrams = [(data, PUBLIC, None) for data in self.packets(5)]
        session.receive_rtp_many(datagrams, 42.0)
        self.assertEqual({e.arrival for e in session.events()}, {42.0})

    def test_the_full_path_takes_an_arrival_from_the_stamped_packet(self) -> None:
        """A packet after a gap (the full path) arrives as the fast path would have it."""
        session = make(audio_params())
        packets = self.packets(10)
        session.receive_rtp_many([(packets[0], PUBLIC, 100.0), (packets[1], PUBLIC, None),
                                  (packets[5], PUBLIC, None)], 101.0)
        arrivals = [e.arrival for e in session.events()]
        self.assertEqual(arrivals[-1], 100.0 + 5 * self.STEP / self.RATE)
        # RTCP (rtcp-mux) or a runt is not RTP: no estimate from it
        self.assertIsNone(session._estimated_arrival(b"\x80\xc8" + bytes(26), 101.0))
        self.assertIsNone(session._estimated_arrival(b"\x80\x00\x00", 101.0))
