"""Tests for wcsgw.metrics: histograms, quantiles and the reactor lag monitor."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.metrics import Histogram, MediaTotals, ReactorLagMonitor


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
