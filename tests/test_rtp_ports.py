"""Tests for wcsgw.rtp.ports: even/odd pairs, round robin, quarantine, exhaustion, bind failures."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.ports import PortAllocator, PortsExhausted


class PortAllocatorTests(SynchronousTestCase):
    def test_pairs(self) -> None:
        """Pairs are (even, even + 1), inside the range, in round-robin order; an odd first port is rounded up."""
        allocator = PortAllocator(10001, 10009, Clock())
        self.assertEqual(allocator.capacity, 4)
        self.assertEqual(
            [allocator.allocate() for _ in range(4)], [(10002, 10003), (10004, 10005), (10006, 10007), (10008, 10009)]
        )
        self.assertEqual(allocator.in_use, 4)

    def test_exhausted(self) -> None:
        """When every pair is taken, PortsExhausted names the range."""
        allocator = PortAllocator(20000, 20003, Clock())
        allocator.allocate()
        allocator.allocate()
        error = self.assertRaises(PortsExhausted, allocator.allocate)
        self.assertEqual(str(error), "no free RTP port pair in 20000-20003")

    def test_quarantine(self) -> None:
        """A released pair is not handed out again before its quarantine ends."""
        clock = Clock()
        allocator = PortAllocator(20000, 20001, clock, quarantine=2.0)
        rtp, _ = allocator.allocate()
        allocator.release(rtp)
        self.assertRaises(PortsExhausted, allocator.allocate)
        clock.advance(1.9)
        self.assertRaises(PortsExhausted, allocator.allocate)
        clock.advance(0.1)
        self.assertEqual(allocator.allocate(), (20000, 20001))

    def test_round_robin_after_release(self) -> None:
        """A released pair is reused last: the next allocation moves on through the range."""
        allocator = PortAllocator(20000, 20005, Clock(), quarantine=0)
        first, _ = allocator.allocate()
        allocator.release(first)
        self.assertEqual(allocator.allocate(), (20002, 20003))
        self.assertEqual(allocator.allocate(), (20004, 20005))
        self.assertEqual(allocator.allocate(), (20000, 20001))

    def test_bind_failed(self) -> None:
        """A pair that failed to bind is skipped for the quarantine time."""
        clock = Clock()
        allocator = PortAllocator(20000, 20003, clock, quarantine=5)
        rtp, _ = allocator.allocate()
        allocator.bind_failed(rtp)
        self.assertEqual(allocator.allocate(), (20002, 20003))
        self.assertRaises(PortsExhausted, allocator.allocate)
        clock.advance(5)
        self.assertEqual(allocator.allocate(), (20000, 20001))

    def test_errors(self) -> None:
        """Bad ranges and releasing unknown ports are refused."""
        self.assertEqual(
            str(self.assertRaises(ValueError, PortAllocator, 20000, 20000, Clock())),
            "port range 20000-20000 holds no even/odd pair",
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, PortAllocator, 80, 90, Clock())),
            "port range 80-90 is outside 1024..65535",
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, PortAllocator(20000, 20001, Clock()).release, 20000)),
            "RTP port 20000 is not allocated",
        )
