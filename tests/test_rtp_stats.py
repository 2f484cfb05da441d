"""Tests for wcsgw.rtp.stats: RFC 3550 A.1/A.3/A.8 receive statistics and report blocks."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.packet import RtpPacket
from wcsgw.rtp.rtcp import RtcpSenderReport, ntp_from_seconds
from wcsgw.rtp.stats import ReceiverStats


def pkt(seq: int, ts: int = 0) -> RtpPacket:
    return RtpPacket(payload_type=0, sequence_number=seq % 65536, timestamp=ts % 2**32, ssrc=42, payload=b"x" * 160)


class SequenceTests(SynchronousTestCase):
    def test_in_order(self) -> None:
        """In-order packets: expected equals received, nothing lost."""
        stats = ReceiverStats(42, 8000)
        for i in range(10):
            stats.on_packet(pkt(100 + i, i * 160), i * 0.02)
        self.assertEqual((stats.expected, stats.received, stats.lost), (10, 10, 0))
        self.assertEqual(stats.extended_highest_sequence, 109)
        self.assertEqual(stats.octets, 1600)

    def test_loss(self) -> None:
        """Missing sequence numbers count as lost."""
        stats = ReceiverStats(42, 8000)
        for seq in (1, 2, 5, 6):
            stats.on_packet(pkt(seq), 0)
        self.assertEqual((stats.expected, stats.received, stats.lost), (6, 4, 2))

    def test_wrap(self) -> None:
        """Crossing 65535 -> 0 adds a cycle to the extended sequence number."""
        stats = ReceiverStats(42, 8000)
        for seq in (65534, 65535, 0, 1):
            stats.on_packet(pkt(seq), 0)
        self.assertEqual(stats.extended_highest_sequence, 65536 + 1)
        self.assertEqual((stats.expected, stats.lost), (4, 0))

    def test_reordered_and_duplicated(self) -> None:
        """A late packet counts as reordered (and received), a repeat as duplicated."""
        stats = ReceiverStats(42, 8000)
        for seq in (10, 12, 11, 12, 11, 13):
            stats.on_packet(pkt(seq), 0)
        self.assertEqual(stats.reordered, 1)
        self.assertEqual(stats.duplicated, 2)
        self.assertEqual(stats.extended_highest_sequence, 13)
        self.assertEqual(stats.received, 6)
        self.assertEqual(stats.lost, -2)

    def test_reordered_across_wrap(self) -> None:
        """A packet from before the wrap arriving after it is reordered, not a new cycle."""
        stats = ReceiverStats(42, 8000)
        for seq in (65534, 0, 65535, 1):
            stats.on_packet(pkt(seq), 0)
        self.assertEqual(stats.reordered, 1)
        self.assertEqual(stats.extended_highest_sequence, 65537)
        self.assertEqual(stats.lost, 0)

    def test_jump_needs_two_packets(self) -> None:
        """A jump beyond MAX_DROPOUT is ignored once, and resynchronises when the next packet follows it."""
        stats = ReceiverStats(42, 8000)
        stats.on_packet(pkt(10), 0)
        stats.on_packet(pkt(20000), 0)
        self.assertEqual(stats.extended_highest_sequence, 10)
        stats.on_packet(pkt(20001), 0)
        self.assertEqual(stats.extended_highest_sequence, 20001)
        self.assertEqual((stats.expected, stats.received), (1, 1))

    def test_late(self) -> None:
        """Late packets reported by the jitter buffer are counted."""
        stats = ReceiverStats(42, 8000)
        stats.count_late(2)
        self.assertEqual(stats.late, 2)


class JitterTests(SynchronousTestCase):
    def test_no_jitter(self) -> None:
        """Packets arriving exactly at their timestamp pace show zero jitter."""
        stats = ReceiverStats(42, 8000)
        for i in range(50):
            stats.on_packet(pkt(i, 1000 + i * 160), 5.0 + i * 0.02)
        self.assertLess(stats.jitter, 1.0)

    def test_constant_jitter(self) -> None:
        """Alternating 10 ms early/late arrivals converge towards |D| = 80 units of 8 kHz."""
        stats = ReceiverStats(42, 8000)
        for i in range(300):
            offset = 0.01 if i % 2 else 0.0
            stats.on_packet(pkt(i, i * 160), i * 0.02 + offset)
        self.assertTrue(78 < stats.jitter <= 80, stats.jitter)

    def test_jitter_across_timestamp_wrap(self) -> None:
        """A timestamp wrap is not mistaken for a jump in transit time."""
        stats = ReceiverStats(42, 8000)
        for i in range(20):
            stats.on_packet(pkt(i, 2**32 - 1600 + i * 160), 100.0 + i * 0.02)
        self.assertLess(stats.jitter, 1.0)


class ReportBlockTests(SynchronousTestCase):
    def test_fraction_lost_interval(self) -> None:
        """The fraction lost covers the interval since the last report; cumulative loss keeps growing."""
        stats = ReceiverStats(42, 8000)
        for seq in range(0, 8):  # 0..7
            stats.on_packet(pkt(seq), 0)
        block = stats.report_block(1.0)
        self.assertEqual((block.fraction_lost, block.packets_lost, block.highest_sequence), (0, 0, 7))
        for seq in (8, 10, 12, 14):  # 8..15 expected: 8, received 4
            stats.on_packet(pkt(seq), 0)
        stats.on_packet(pkt(15), 0)
        block = stats.report_block(2.0)
        self.assertEqual(block.fraction_lost, (3 << 8) // 8)
        self.assertEqual(block.packets_lost, 3)
        self.assertEqual(block.ssrc, 42)

    def test_lsr_dlsr(self) -> None:
        """LSR is the middle of the last SR's NTP time; DLSR the delay since it arrived, in 1/65536 s."""
        stats = ReceiverStats(42, 8000)
        stats.on_packet(pkt(1), 10.0)
        ntp = ntp_from_seconds(1700000000.5)
        info = stats.on_sender_report(RtcpSenderReport(42, ntp, 123456, 10, 1600), 10.0)
        self.assertEqual(info.rtp_timestamp, 123456)
        self.assertEqual(info.arrival, 10.0)
        self.assertAlmostEqual(info.ntp_seconds, 1700000000.5, places=5)
        block = stats.report_block(11.5)
        self.assertEqual(block.lsr, (ntp >> 16) & 0xFFFFFFFF)
        self.assertEqual(block.dlsr, int(1.5 * 65536))

    def test_no_sr(self) -> None:
        """Without an SR, LSR and DLSR are zero."""
        stats = ReceiverStats(42, 8000)
        stats.on_packet(pkt(1), 0)
        block = stats.report_block(1)
        self.assertEqual((block.lsr, block.dlsr), (0, 0))

    def test_clock_rate_validated(self) -> None:
        """A non-positive clock rate is refused."""
        error = self.assertRaises(ValueError, ReceiverStats, 1, 0)
        self.assertEqual(str(error), "clock rate 0 must be positive")


class InOrderRunTests(SynchronousTestCase):
    def test_a_run_counts_as_its_packets_one_by_one(self) -> None:
        """``on_packets_in_order`` leaves the statistics exactly as ``on_packet`` for each packet would, jitter
        to the last bit; an entry given again (the same object) is a packet with the arrival and timestamp of the
        one before it."""
        one, run = ReceiverStats(42, 90000), ReceiverStats(42, 90000)
        for stats in (one, run):
            stats.on_packet(pkt(10, 1000), 5.0)
        frames = [(5.031, 3700, 4), (5.062, 6400, 1), (5.11, 9100, 6), (5.11, 11800, 3)]
        entries = []
        seq = 11
        for arrival, timestamp, packets in frames:
            entry = (arrival, timestamp)
            for _ in range(packets):
                one.on_packet(pkt(seq, timestamp), arrival)
                entries.append(entry)
                seq += 1
        run.on_packets_in_order(entries, 160 * len(entries))
        self.assertGreater(one.jitter, 0)
        for name in ("jitter", "received", "expected", "lost", "octets", "extended_highest_sequence",
                     "last_arrival", "received_since_report"):
            self.assertEqual(getattr(run, name), getattr(one, name), name)

    def test_an_arrival_not_measured_gives_the_jitter_no_sample(self) -> None:
        """``on_packet(jitter=False)`` and a list entry of a run count the packet and give the jitter no sample:
        the next measured packet's D is from the last measured one, as if the others had not come."""
        measured, one, run = (ReceiverStats(42, 8000) for _ in range(3))
        for stats in (measured, one, run):
            stats.on_packet(pkt(10, 1000), 5.0)
        # 20 ms packets; the measured ones (every fourth) 3 ms late every other time
        packets = [(11 + n, 1000 + 160 * (n + 1), 5.0 + 0.02 * (n + 1) + (0.003 if n % 8 == 3 else 0.0))
                   for n in range(25)]
        entries: list[tuple[float, int] | list[float]] = []
        for n, (seq, timestamp, arrival) in enumerate(packets):
            if n % 4 == 3:
                measured.on_packet(pkt(seq, timestamp), arrival)
                entries.append((arrival, timestamp))
                one.on_packet(pkt(seq, timestamp), arrival)
            else:
                entries.append([arrival + 0.5, timestamp])  # the arrival given is not used for the jitter
                one.on_packet(pkt(seq, timestamp), arrival + 0.5, jitter=False)
        run.on_packets_in_order(entries, 160 * len(entries))
        self.assertGreater(measured.jitter, 1.0)
        for stats in (one, run):
            self.assertEqual(stats.jitter, measured.jitter)
            self.assertEqual(stats.received, 26)
            self.assertEqual(stats.extended_highest_sequence, 35)
            self.assertEqual(stats.last_arrival, 5.0 + 0.02 * 25 + 0.5)
