"""Tests for wcsgw.rtp.dtmf: RFC 4733 telephone-event payloads and the packet schedule of one digit."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtp.dtmf import TelephoneEvent, digit_packets, digit_to_event, event_to_digit


class PayloadTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Event, E bit, volume and duration survive build and parse; the R bit is zero."""
        event = TelephoneEvent(event=11, end=True, volume=10, duration=1280)
        data = bytes(event)
        self.assertEqual(data, bytes([11, 0x80 | 10]) + (1280).to_bytes(2, "big"))
        self.assertEqual(TelephoneEvent.parse(data), event)

    def test_reserved_bit_ignored(self) -> None:
        """A set R bit is ignored when parsing."""
        self.assertEqual(TelephoneEvent.parse(b"\x05\x4a\x00\xa0"), TelephoneEvent(5, False, 10, 160))

    def test_errors(self) -> None:
        """Short payloads and out-of-range fields are refused."""
        self.assertEqual(
            str(self.assertRaises(ValueError, TelephoneEvent.parse, b"\x01\x02\x03")),
            "telephone-event payload is 3 bytes, shorter than 4",
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, bytes, TelephoneEvent(1, volume=64))),
            "telephone-event volume 64 is outside 0..63",
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, bytes, TelephoneEvent(1, duration=65536))),
            "telephone-event duration 65536 is outside 0..65535",
        )

    def test_digits(self) -> None:
        """Digits map to RFC 4733 event codes 0-15 and back; anything else is refused."""
        self.assertEqual([digit_to_event(d) for d in "0123456789*#ABCD"], list(range(16)))
        self.assertEqual(digit_to_event("d"), 15)
        self.assertEqual(event_to_digit(10), "*")
        self.assertEqual(
            str(self.assertRaises(ValueError, digit_to_event, "E")), "'E' is not a DTMF digit (0-9 * # A-D)"
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, event_to_digit, 16)), "telephone event 16 is not a DTMF digit"
        )


class ScheduleTests(SynchronousTestCase):
    def test_default_digit(self) -> None:
        """160 ms at 8 kHz every 20 ms: 8 growing updates (marker on the first), then 3 end packets of 1280."""
        packets = digit_packets("5")
        events = [TelephoneEvent.parse(p.payload) for p in packets]
        self.assertEqual(len(packets), 11)
        self.assertEqual([p.marker for p in packets], [True] + [False] * 10)
        self.assertEqual([e.duration for e in events], [160, 320, 480, 640, 800, 960, 1120, 1280, 1280, 1280, 1280])
        self.assertEqual([e.end for e in events], [False] * 8 + [True] * 3)
        self.assertEqual({e.event for e in events}, {5})
        self.assertEqual({e.volume for e in events}, {10})
        self.assertEqual([round(p.offset, 3) for p in packets], [i * 0.02 for i in range(11)])

    def test_custom(self) -> None:
        """Duration, volume, interval and clock rate are honoured (Opus-style 48 kHz events, 50 ms packets)."""
        packets = digit_packets("#", clock_rate=48000, duration_ms=120, volume=20, packet_interval_ms=50)
        events = [TelephoneEvent.parse(p.payload) for p in packets]
        self.assertEqual([e.duration for e in events], [2400, 4800, 5760, 5760, 5760, 5760])
        self.assertEqual([p.offset for p in packets], [0.0, 0.05, 0.1, 0.15, 0.2, 0.25])
        self.assertEqual({(e.event, e.volume) for e in events}, {(11, 20)})

    def test_validation(self) -> None:
        """Bad digits, durations and durations too long for one event are refused."""
        self.assertRaises(ValueError, digit_packets, "x")
        self.assertEqual(
            str(self.assertRaises(ValueError, digit_packets, "1", duration_ms=0)), "DTMF duration 0 ms must be positive"
        )
        self.assertEqual(
            str(self.assertRaises(ValueError, digit_packets, "1", clock_rate=48000, duration_ms=2000)),
            "DTMF duration 2000 ms does not fit one event at 48000 Hz",
        )
