"""A per-stream RTP jitter buffer that puts packets back in sequence order and reports what was lost.

Sans-I/O: ``push(packet, now)`` and ``poll(now)`` return the packets released, in sequence order, each with the
number of packets declared lost just before it; ``next_deadline()`` says when ``poll`` has work to do.

A packet is released as soon as every packet before it has been released. When one is missing, the buffer waits
until the oldest waiting packet has been held ``depth_ms`` (or the waiting packets span ``depth_ms`` of media
time, or ``max_packets`` are waiting), then gives up on the missing ones. Disabled (``enabled=False``), packets
are released in arrival order at once; losses are still reported and packets older than the last one released
are dropped as late.

Sequence numbers are extended past 16-bit wrap-around; timestamps are compared modulo 2**32. A new SSRC, or a
sequence jump beyond ``MAX_DROPOUT`` confirmed by the next packet (RFC 3550 A.1), releases what is held and
restarts the stream: the next packet released has ``reset`` set.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import NamedTuple

from .packet import RTP_SEQ_MOD, RtpPacket, fill_ring, timestamp_delta

MAX_DROPOUT = 3000
MAX_MISORDER = 100
_RELEASED_MEMORY = 512  # released sequence numbers remembered (to tell a duplicate from a late packet)
_EPSILON = 1e-9  # float slack so a timer firing at next_deadline() always finds the wait over


class Released(NamedTuple):
    """A packet leaving the buffer: ``lost_before`` packets were given up on just before it; ``reset`` marks the
    first packet of a new stream (new SSRC or sequence restart); ``arrival`` is when the packet came in.

    A named tuple, not a dataclass: one is made per packet, and a tuple is the cheapest object to make."""

    packet: RtpPacket
    lost_before: int = 0
    reset: bool = False
    arrival: float = 0.0


class JitterBuffer:
    """Reorders one RTP stream within ``depth_ms``; bounded to ``max_packets`` waiting packets."""

    def __init__(self, clock_rate: int, depth_ms: float = 150.0, enabled: bool = True, max_packets: int = 1000) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock rate {clock_rate} must be positive")
        if depth_ms < 0:
            raise ValueError(f"jitter buffer depth {depth_ms} ms must not be negative")
        if max_packets < 1:
            raise ValueError(f"jitter buffer size {max_packets} must be at least 1 packet")
        self.clock_rate = clock_rate
        self.depth = depth_ms / 1000.0
        self.enabled = enabled
        self.max_packets = max_packets
        # counters
        self.released = 0
        self.lost = 0
        self.late = 0
        self.duplicates = 0
        self.out_of_range = 0
        self.dropped = 0  # late + duplicates + out_of_range: one number to watch for any of them
        self.resets = 0
        self.forced = 0
        self._ssrc: int | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._highest: int | None = None  # highest extended sequence number seen
        self._next: int | None = None  # next extended sequence number to release
        self._pending: OrderedDict[int, tuple[RtpPacket, float]] = OrderedDict()  # arrival order
        self._heap: list[int] = []
        self._bad_seq: int | None = None
        self._lost_accumulated = 0
        # slot n % _RELEASED_MEMORY holds the last extended number released there: a duplicate finds itself
        self._released_ring: list[int] = [-1] * _RELEASED_MEMORY
        self._newest_timestamp: int | None = None

    @property
    def ssrc(self) -> int | None:
        return self._ssrc

    @property
    def pending(self) -> int:
        """Packets held."""
        return len(self._pending)

    def next_deadline(self) -> float | None:
        """When ``poll`` will release something held, or None if nothing is waiting."""
        if not self._pending:
            return None
        _, arrival = next(iter(self._pending.values()))
        return arrival + self.depth

    def next_in_order(self) -> int | None:
        """The extended sequence number of the packet that ``push`` would release at once and alone (nothing held,
        no gap or restart to report), or None when the next packet needs ``push``."""
        if self._pending or self._bad_seq is not None or self._lost_accumulated or self._reset_next:
            return None
        following = self._next
        if following is None or self._highest != following - 1:
            return None
        return following

    def took_in_order(self, count: int, newest_timestamp: int) -> None:
        """Account ``count`` packets of this buffer's SSRC that followed one another from ``next_in_order()`` and
        were passed on at once (the last with ``newest_timestamp``): what ``push`` does for them."""
        if count <= 0:
            return
        first = self._next
        assert first is not None
        fill_ring(self._released_ring, first, count)
        self._next = first + count
        self._highest = first + count - 1
        self._newest_timestamp = newest_timestamp
        self.released += count

    def push(self, packet: RtpPacket, now: float) -> list[Released]:
        """Add a packet; return the packets now released in order."""
        out: list[Released] = []
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            out.extend(self.flush())
            self._restart()
        self._ssrc = packet.ssrc

        highest = self._highest
        if highest is None:
            extended = packet.sequence_number
            self._highest = extended
        else:
            delta = (packet.sequence_number - highest) % RTP_SEQ_MOD  # sequence_delta, inline: every packet
            extended = highest + (delta - RTP_SEQ_MOD if delta >= RTP_SEQ_MOD // 2 else delta)
        reference = self._next if self._next is not None else extended

        if extended > self._highest + MAX_DROPOUT or extended < reference - MAX_MISORDER:
            if self._bad_seq is not None and packet.sequence_number == self._bad_seq:
                out.extend(self.flush())
                self._restart()
                self._highest = extended = packet.sequence_number
            else:
                self._bad_seq = (packet.sequence_number + 1) % RTP_SEQ_MOD
                self.out_of_range += 1
                self.dropped += 1
                return out
        self._bad_seq = None

        if self._next is not None and extended < self._next:
            if self._released_ring[extended % _RELEASED_MEMORY] == extended:
                self.duplicates += 1
            else:
                self.late += 1
            self.dropped += 1
            return out
        if extended in self._pending:
            self.duplicates += 1
            self.dropped += 1
            return out
        if extended > self._highest:
            self._highest = extended
            self._newest_timestamp = packet.timestamp
        elif self._newest_timestamp is None:
            self._newest_timestamp = packet.timestamp

        if extended == self._next and not self._pending:
            # the usual case, the next packet with nothing held: out at once, without the heap
            out.append(Released(packet, self._lost_accumulated, self._reset_next, now))
            self._lost_accumulated = 0
            self._reset_next = False
            self.released += 1
            self._released_ring[extended % _RELEASED_MEMORY] = extended
            self._next = extended + 1
            return out

        if not self.enabled:
            if self._next is not None and extended > self._next:
                self._lost_accumulated += extended - self._next
                self.lost += extended - self._next
            self._next = extended
            self._pending[extended] = (packet, now)
            heapq.heappush(self._heap, extended)
            self._release_in_order(out)
            return out

        self._pending[extended] = (packet, now)
        heapq.heappush(self._heap, extended)
        out.extend(self.poll(now))
        return out

    def poll(self, now: float) -> list[Released]:
        """Release what is in order, and give up on missing packets whose wait is over."""
        out: list[Released] = []
        while self._pending:
            if self._next is not None:
                self._release_in_order(out)
                if not self._pending:
                    break
            if not self._wait_is_over(now):
                break
            lowest = self._heap[0]
            if self._next is not None:
                skipped = lowest - self._next
                self._lost_accumulated += skipped
                self.lost += skipped
            self._next = lowest
        return out

    def flush(self) -> list[Released]:
        """Release everything held, in order, reporting the gaps."""
        out: list[Released] = []
        while self._pending:
            lowest = self._heap[0]
            if self._next is not None and lowest > self._next:
                self._lost_accumulated += lowest - self._next
                self.lost += lowest - self._next
            self._next = lowest
            self._release_in_order(out)
        return out

    def _wait_is_over(self, now: float) -> bool:
        if len(self._pending) > self.max_packets:
            self.forced += 1
            return True
        oldest_packet, oldest_arrival = next(iter(self._pending.values()))
        if now >= oldest_arrival + self.depth - _EPSILON:
            return True
        if self._newest_timestamp is not None and self._next is not None:
            lowest_packet = self._pending[self._heap[0]][0]
            span = timestamp_delta(self._newest_timestamp, lowest_packet.timestamp)
            if span > self.depth * self.clock_rate:
                self.forced += 1
                return True
        return False

    def _release_in_order(self, out: list[Released]) -> None:
        assert self._next is not None
        while self._next in self._pending:
            packet, arrival = self._pending.pop(self._next)
            heapq.heappop(self._heap)
            out.append(Released(packet, self._lost_accumulated, self._reset_next, arrival))
            self._lost_accumulated = 0
            self._reset_next = False
            self.released += 1
            self._released_ring[self._next % _RELEASED_MEMORY] = self._next
            self._next += 1

    def _restart(self) -> None:
        self.resets += 1
        self._reset_state()
        self._reset_next = True

    _reset_next = False
