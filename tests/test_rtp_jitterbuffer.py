"""Tests for wcsgw.rtp.jitterbuffer: ordering, loss, wrap-around, SSRC changes, deadlines, disabled mode."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.jitterbuffer import JitterBuffer, Released
from wcsgw.rtp.packet import RtpPacket


def pkt(seq: int, ts: int | None = None, ssrc: int = 1) -> RtpPacket:
    seq %= 65536
    return RtpPacket(
        payload_type=96, sequence_number=seq, timestamp=(seq * 3000 if ts is None else ts) % 2**32, ssrc=ssrc
    )


def seqs(released: list[Released]) -> list[int]:
    return [r.packet.sequence_number for r in released]


def started(first: int = 10, depth_ms: float = 100, **kwargs: object) -> JitterBuffer:
    """A buffer past its start-up wait, having released ``first``."""
    buffer = JitterBuffer(90000, depth_ms=depth_ms, **kwargs)  # type: ignore[arg-type]
    assert buffer.push(pkt(first), 0.0) == []
    assert seqs(buffer.poll(depth_ms / 1000)) == [first]
    return buffer


class OrderingTests(SynchronousTestCase):
    def test_startup_wait(self) -> None:
        """The first packets wait one depth so that an early reordering is not mistaken for loss."""
        buffer = JitterBuffer(90000, depth_ms=100)
        self.assertEqual(buffer.push(pkt(11), 0.0), [])
        self.assertEqual(buffer.push(pkt(10), 0.01), [])
        self.assertEqual(buffer.next_deadline(), 0.1)
        self.assertEqual(buffer.poll(0.099), [])
        released = buffer.poll(0.1)
        self.assertEqual(seqs(released), [10, 11])
        self.assertEqual([r.lost_before for r in released], [0, 0])
        self.assertIsNone(buffer.next_deadline())

    def test_in_order_released_at_once(self) -> None:
        """Once started, an in-order packet is released by its own push."""
        buffer = started()
        self.assertEqual(seqs(buffer.push(pkt(11), 0.2)), [11])
        self.assertEqual(seqs(buffer.push(pkt(12), 0.2)), [12])

    def test_reorder(self) -> None:
        """A packet arriving before its predecessor waits for it; both leave in order, nothing lost."""
        buffer = started()
        self.assertEqual(buffer.push(pkt(12), 0.2), [])
        self.assertEqual(buffer.push(pkt(13), 0.21), [])
        released = buffer.push(pkt(11), 0.22)
        self.assertEqual(seqs(released), [11, 12, 13])
        self.assertEqual(buffer.lost, 0)

    def test_loss_reported_at_deadline(self) -> None:
        """A missing packet is given up once the next one has waited the depth; the gap is reported."""
        buffer = started()
        buffer.push(pkt(13), 0.2)
        buffer.push(pkt(14), 0.25)
        self.assertAlmostEqual(buffer.next_deadline(), 0.3)
        self.assertEqual(buffer.poll(0.29), [])
        released = buffer.poll(0.3)
        self.assertEqual(seqs(released), [13, 14])
        self.assertEqual([r.lost_before for r in released], [2, 0])
        self.assertEqual(buffer.lost, 2)

    def test_late_and_duplicate(self) -> None:
        """A packet given up on is late when it comes; a repeat of a released or held packet is a duplicate."""
        buffer = started()
        buffer.push(pkt(12), 0.2)
        buffer.poll(0.3)
        self.assertEqual(buffer.push(pkt(11), 0.31), [])
        self.assertEqual(buffer.late, 1)
        self.assertEqual(buffer.push(pkt(12), 0.32), [])
        buffer.push(pkt(14), 0.33)
        buffer.push(pkt(14), 0.34)
        self.assertEqual(buffer.duplicates, 2)

    def test_sequence_wrap(self) -> None:
        """Sequence numbers crossing 65535 -> 0 keep their order, reordered or not."""
        buffer = started(65533)
        self.assertEqual(seqs(buffer.push(pkt(65534), 0.2)), [65534])
        self.assertEqual(buffer.push(pkt(0), 0.21), [])
        self.assertEqual(buffer.push(pkt(1), 0.22), [])
        self.assertEqual(seqs(buffer.push(pkt(65535), 0.23)), [65535, 0, 1])
        self.assertEqual(seqs(buffer.push(pkt(2), 0.24)), [2])
        self.assertEqual(buffer.lost, 0)

    def test_timestamp_wrap(self) -> None:
        """Timestamps crossing 2**32 do not force an early release (the media span stays small)."""
        buffer = JitterBuffer(8000, depth_ms=100)
        buffer.push(pkt(1, ts=2**32 - 320), 0.0)
        buffer.poll(0.1)
        self.assertEqual(buffer.push(pkt(3, ts=0), 0.11), [])
        self.assertEqual(buffer.push(pkt(4, ts=160), 0.12), [])
        released = buffer.push(pkt(2, ts=2**32 - 160), 0.13)
        self.assertEqual(seqs(released), [2, 3, 4])
        self.assertEqual([r.packet.timestamp for r in released], [2**32 - 160, 0, 160])
        self.assertEqual(buffer.forced, 0)

    def test_span_forces_release(self) -> None:
        """When the held packets span more media time than the depth, the gap is given up before the deadline."""
        buffer = JitterBuffer(8000, depth_ms=100)
        buffer.push(pkt(1, ts=2**32 - 160), 0.0)
        buffer.poll(0.1)
        buffer.push(pkt(3, ts=160), 0.11)  # across the wrap
        self.assertEqual(buffer.push(pkt(4, ts=800), 0.12), [])  # 640 units = 80 ms
        released = buffer.push(pkt(5, ts=1120), 0.13)  # 960 units = 120 ms > 100 ms
        self.assertEqual(seqs(released), [3, 4, 5])
        self.assertEqual(released[0].lost_before, 1)
        self.assertEqual(buffer.forced, 1)

    def test_bounded(self) -> None:
        """More than max_packets held forces the gap to be given up."""
        buffer = started(max_packets=3)
        for seq in (12, 13, 14):
            self.assertEqual(buffer.push(pkt(seq, ts=0), 0.2), [])
        self.assertEqual(seqs(buffer.push(pkt(15, ts=0), 0.2)), [12, 13, 14, 15])
        self.assertEqual(buffer.pending, 0)

    def test_flush(self) -> None:
        """flush releases everything held, in order, with the gaps."""
        buffer = started()
        buffer.push(pkt(14), 0.2)
        buffer.push(pkt(12), 0.2)
        released = buffer.flush()
        self.assertEqual(seqs(released), [12, 14])
        self.assertEqual([r.lost_before for r in released], [1, 1])


class ResetTests(SynchronousTestCase):
    def test_ssrc_change(self) -> None:
        """A new SSRC flushes the old stream and restarts; its first packet is marked reset."""
        buffer = started()
        buffer.push(pkt(12), 0.2)
        released = buffer.push(pkt(5000, ssrc=2), 0.25)
        self.assertEqual(seqs(released), [12])
        self.assertEqual(released[0].lost_before, 1)
        released = buffer.poll(0.35)
        self.assertEqual(seqs(released), [5000])
        self.assertTrue(released[0].reset)
        self.assertEqual(buffer.ssrc, 2)
        self.assertEqual(buffer.resets, 1)
        self.assertFalse(buffer.push(pkt(5001, ssrc=2), 0.4)[0].reset)

    def test_sequence_restart(self) -> None:
        """A big jump is ignored once; confirmed by the next packet, the stream restarts there."""
        buffer = started()
        self.assertEqual(buffer.push(pkt(40000), 0.2), [])
        self.assertEqual(buffer.out_of_range, 1)
        self.assertEqual(seqs(buffer.push(pkt(11), 0.21)), [11])
        self.assertEqual(buffer.push(pkt(30000), 0.22), [])
        self.assertEqual(buffer.push(pkt(30001), 0.23), [])
        released = buffer.poll(0.33)
        self.assertEqual(seqs(released), [30001])
        self.assertTrue(released[0].reset)


class DisabledTests(SynchronousTestCase):
    def test_arrival_order_with_loss(self) -> None:
        """Disabled, packets leave at once in arrival order; gaps are reported and older packets dropped as late."""
        buffer = JitterBuffer(8000, enabled=False)
        self.assertEqual(seqs(buffer.push(pkt(1), 0)), [1])
        released = buffer.push(pkt(3), 0)
        self.assertEqual(seqs(released), [3])
        self.assertEqual(released[0].lost_before, 1)
        self.assertEqual(buffer.push(pkt(2), 0), [])
        self.assertEqual(buffer.late, 1)
        self.assertEqual(seqs(buffer.push(pkt(4), 0)), [4])
        self.assertIsNone(buffer.next_deadline())

    def test_validation(self) -> None:
        """Nonsense settings are refused."""
        self.assertEqual(str(self.assertRaises(ValueError, JitterBuffer, 0)), "clock rate 0 must be positive")
        self.assertEqual(
            str(self.assertRaises(ValueError, JitterBuffer, 8000, -1)), "jitter buffer depth -1 ms must not be negative"
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, JitterBuffer, 8000, 10, True, 0)),
            "jitter buffer size 0 must be at least 1 packet",
        )
