"""DTMF as RTP telephone events (RFC 4733): payload parse/build and the packet schedule of one digit.

``digit_packets`` is pure: it returns when (offset from the start) each packet is due and its payload; the session
sends them at that pace, with consecutive sequence numbers and one RTP timestamp (the event start).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DTMF_DIGITS = "0123456789*#ABCD"
DEFAULT_DURATION_MS = 160
DEFAULT_VOLUME = 10
DEFAULT_PACKET_INTERVAL_MS = 20
END_PACKET_COUNT = 3
MAX_EVENT_DURATION = 0xFFFF

_EVENT = struct.Struct("!BBH")


def digit_to_event(digit: str) -> int:
    """The RFC 4733 event code of a DTMF digit (0-9, *, #, A-D; lower case a-d accepted)."""
    if len(digit) != 1 or digit.upper() not in DTMF_DIGITS:
        raise ValueError(f"{digit!r} is not a DTMF digit (0-9 * # A-D)")
    return DTMF_DIGITS.index(digit.upper())


def event_to_digit(event: int) -> str:
    if not 0 <= event < len(DTMF_DIGITS):
        raise ValueError(f"telephone event {event} is not a DTMF digit")
    return DTMF_DIGITS[event]


@dataclass(frozen=True)
class TelephoneEvent:
    """The RFC 4733 section 2.3 payload: event code, end bit, volume (0..63, in -dBm0) and duration (timestamp
    units)."""

    event: int
    end: bool = False
    volume: int = DEFAULT_VOLUME
    duration: int = 0

    @classmethod
    def parse(cls, data: bytes) -> TelephoneEvent:
        if len(data) < 4:
            raise ValueError(f"telephone-event payload is {len(data)} bytes, shorter than 4")
        event, flags, duration = _EVENT.unpack_from(data)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def __bytes__(self) -> bytes:
        if not 0 <= self.event <= 255:
            raise ValueError(f"telephone event {self.event} is outside 0..255")
        if not 0 <= self.volume <= 63:
            raise ValueError(f"telephone-event volume {self.volume} is outside 0..63")
        if not 0 <= self.duration <= MAX_EVENT_DURATION:
            raise ValueError(f"telephone-event duration {self.duration} is outside 0..65535")
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


@dataclass(frozen=True)
class ScheduledEventPacket:
    """One packet of a digit: due ``offset`` seconds after the digit starts; ``marker`` on the first only."""

    offset: float
    payload: bytes
    marker: bool
    end: bool


def digit_packets(
    digit: str,
    clock_rate: int = 8000,
    duration_ms: int = DEFAULT_DURATION_MS,
    volume: int = DEFAULT_VOLUME,
    packet_interval_ms: int = DEFAULT_PACKET_INTERVAL_MS,
) -> list[ScheduledEventPacket]:
    """The packets of one digit: a start packet with the marker bit, an update every ``packet_interval_ms`` with
    the duration so far, then three end packets (E bit, full duration), one interval apart."""
    event = digit_to_event(digit)
    if duration_ms <= 0:
        raise ValueError(f"DTMF duration {duration_ms} ms must be positive")
    if packet_interval_ms <= 0:
        raise ValueError(f"DTMF packet interval {packet_interval_ms} ms must be positive")
    if clock_rate <= 0:
        raise ValueError(f"clock rate {clock_rate} must be positive")
    total = duration_ms * clock_rate // 1000
    if total > MAX_EVENT_DURATION:
        raise ValueError(f"DTMF duration {duration_ms} ms does not fit one event at {clock_rate} Hz")
    packets: list[ScheduledEventPacket] = []
    elapsed_ms = 0
    while elapsed_ms < duration_ms:
        so_far = min(total, (elapsed_ms + packet_interval_ms) * clock_rate // 1000)
        packets.append(
            ScheduledEventPacket(
                offset=elapsed_ms / 1000.0,
                payload=bytes(TelephoneEvent(event, False, volume, so_far)),
                marker=not packets,
                end=False,
            )
        )
        elapsed_ms += packet_interval_ms
    end_payload = bytes(TelephoneEvent(event, True, volume, total))
    for index in range(END_PACKET_COUNT):
        packets.append(
            ScheduledEventPacket(
                offset=(elapsed_ms + index * packet_interval_ms) / 1000.0,
                payload=end_payload,
                marker=False,
                end=True,
            )
        )
    return packets
