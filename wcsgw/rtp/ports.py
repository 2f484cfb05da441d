"""UDP port pairs for media: RTP on an even port, RTCP on the next (odd) one.

Pure bookkeeping: the adapter binds the sockets. A released pair rests in quarantine for ``quarantine`` seconds so
late packets of the previous call cannot reach the next; a pair whose bind failed is skipped the same way.
Allocation goes round-robin through the range, so a port is reused as late as possible.
"""

from __future__ import annotations

from typing import Protocol


class PortsExhausted(Exception):
    """No RTP/RTCP port pair is free."""


class _Clock(Protocol):
    def seconds(self) -> float: ...


class PortAllocator:
    """Hands out ``(rtp_port, rtcp_port)`` pairs between ``first`` and ``last`` (inclusive)."""

    def __init__(self, first: int, last: int, clock: _Clock, quarantine: float = 5.0) -> None:
        if not 1024 <= first <= 65535 or not 1 <= last <= 65535:
            raise ValueError(f"port range {first}-{last} is outside 1024..65535")
        if quarantine < 0:
            raise ValueError(f"quarantine {quarantine} s must not be negative")
        start = first + (first % 2)
        stop = last - (1 - last % 2)  # the last RTCP (odd) port
        if stop - start < 1:
            raise ValueError(f"port range {first}-{last} holds no even/odd pair")
        self.first = start
        self.last = stop
        self.quarantine = quarantine
        self._clock = clock
        self._pairs = list(range(start, stop, 2))
        self._cursor = 0
        self._in_use: set[int] = set()
        self._resting: dict[int, float] = {}  # rtp port -> time it may be reused

    @property
    def capacity(self) -> int:
        return len(self._pairs)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> tuple[int, int]:
        """The next free pair; raise ``PortsExhausted`` if every pair is in use or in quarantine."""
        now = self._clock.seconds()
        for _ in range(len(self._pairs)):
            port = self._pairs[self._cursor]
            self._cursor = (self._cursor + 1) % len(self._pairs)
            if port in self._in_use:
                continue
            until = self._resting.get(port)
            if until is not None:
                if now < until:
                    continue
                del self._resting[port]
            self._in_use.add(port)
            return port, port + 1
        raise PortsExhausted(f"no free RTP port pair in {self.first}-{self.last}")

    def release(self, rtp_port: int) -> None:
        """Give a pair back; it becomes free after the quarantine."""
        if rtp_port not in self._in_use:
            raise ValueError(f"RTP port {rtp_port} is not allocated")
        self._in_use.discard(rtp_port)
        self._resting[rtp_port] = self._clock.seconds() + self.quarantine

    def bind_failed(self, rtp_port: int) -> None:
        """The pair could not be bound (another program holds it): skip it for a quarantine period."""
        self.release(rtp_port)
