"""Tests for wcsgw.metrics: histograms, quantiles, the reactor lag monitor and the garbage collector's."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.metrics import GcMonitor, Histogram, MediaTotals, ReactorLagMonitor


class HistogramTests(SynchronousTestCase):
    def test_cumulative_buckets_sum_and_count(self) -> None:
        """Buckets are cumulative in the text format, +Inf counts everything, sum and count follow."""
        histogram = Histogram((0.1, 1.0))
        for value in (0.05, 0.5, 0.7, 3.0, 0.1, 1.0):  # a value on a bound counts in its bucket (le)
            histogram.observe(value)
        self.assertEqual(histogram.lines("x"), [
            'x_bucket{le="0.1"} 2', 'x_bucket{le="1"} 5', 'x_bucket{le="+Inf"} 6', "x_sum 5.350000", "x_count 6"])
        with self.assertRaises(ValueError):
            Histogram((1.0, 0.1))

    def test_labels(self) -> None:
        """Labels go on every sample, before le on the buckets."""
        histogram = Histogram((1.0,))
        histogram.observe(0.5)
        self.assertEqual(histogram.lines("x", 'media="audio"'), [
            'x_bucket{media="audio",le="1"} 1', 'x_bucket{media="audio",le="+Inf"} 1', 'x_sum{media="audio"} 0.500000',
            'x_count{media="audio"} 1'])

    def test_quantiles_of_recent_samples(self) -> None:
        """Quantiles are nearest-rank over the last samples only; none without samples."""
        histogram = Histogram((1.0,), window=100)
        self.assertIsNone(histogram.quantile(0.5))
        for value in range(1000):
            histogram.observe(float(value))
        self.assertEqual(histogram.quantile(0.5), 949.0)
        self.assertEqual(histogram.quantile(0.99), 998.0)
        self.assertEqual(histogram.count, 1000)

    def test_totals_add(self) -> None:
        """MediaTotals add field by field (ended calls folded into the running totals)."""
        totals = MediaTotals(rtp_packets=1, rtmp_bytes=10)
        totals.add(MediaTotals(rtp_packets=2, rtmp_bytes=5, frames=7))
        self.assertEqual((totals.rtp_packets, totals.rtmp_bytes, totals.frames), (3, 15, 7))


class LagTests(SynchronousTestCase):
    def test_measures_lateness(self) -> None:
        """A tick that runs late by 0.3 s records 0.3 s of lag; on-time ticks record zero."""
        clock = Clock()
        monitor = ReactorLagMonitor(clock, interval=0.1)
        monitor.start()
        clock.advance(0.1)
        self.assertEqual(monitor.last, 0.0)
        clock.advance(0.4)
        self.assertAlmostEqual(monitor.last, 0.3)
        self.assertAlmostEqual(monitor.max, 0.3)
        self.assertEqual(monitor.histogram.count, 2)
        monitor.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        monitor.observe(0.02)  # a sample from another periodic call (the media drains' timer)
        self.assertEqual((monitor.last, monitor.histogram.count), (0.02, 3))
        self.assertAlmostEqual(monitor.max, 0.3)
        monitor.observe(0.5)
        self.assertEqual((monitor.last, monitor.max), (0.5, 0.5))


class GcMonitorTests(SynchronousTestCase):
    def setUp(self) -> None:
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_counts_collections_and_their_pauses(self) -> None:
        """While started, each collection is counted by generation with its pause (the clock read at its start
        and its end), the longest kept; stopped, nothing more is counted."""
        ticks = iter([10.0, 10.25, 20.0, 20.125, 30.0, 30.5])
        monitor = GcMonitor(clock=lambda: next(ticks))
        monitor.start()
        gc.collect(1)
        gc.collect(1)
        gc.collect(2)
        self.assertEqual(monitor.collections, [0, 2, 1])
        self.assertEqual(monitor.seconds, [0.0, 0.375, 0.5])
        self.assertEqual(monitor.max, [0.0, 0.25, 0.5])
        monitor.stop()
        self.assertNotIn(monitor._callback, gc.callbacks)
        gc.collect(0)
        self.assertEqual(monitor.collections, [0, 2, 1])

    def test_counts_what_collections_find(self) -> None:
        """The unreachable objects a collection frees are counted (a reference cycle: two)."""
        monitor = GcMonitor()
        monitor.start()
        self.addCleanup(monitor.stop)
        gc.collect()
        before = sum(monitor.collected)
        cycle: list[object] = []
        cycle.append(cycle)
        other: dict[str, object] = {"self": None}
        other["self"] = other
        del cycle, other
        gc.collect()
        self.assertGreaterEqual(sum(monitor.collected) - before, 2)

    def test_freezes_and_sets_the_threshold_while_started(self) -> None:
        """``freeze``: what exists at start goes to the permanent generation (collections skip it); ``threshold``
        sets the youngest generation's.  Stopping gives both back as they were."""
        gc.set_threshold(700, 11, 12)
        monitor = GcMonitor(freeze=True, threshold=12345)
        monitor.start()
        self.assertEqual(gc.get_threshold(), (12345, 11, 12))
        self.assertGreater(gc.get_freeze_count(), 1000)
        self.assertEqual(monitor.frozen, gc.get_freeze_count())
        monitor.stop()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))
        self.assertEqual(gc.get_freeze_count(), 0)
        self.assertEqual(monitor.frozen, 0)
        plain = GcMonitor()
        plain.start()
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), ((700, 11, 12), 0))
        plain.stop()
