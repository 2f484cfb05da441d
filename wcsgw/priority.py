"""The gateway's media threads at real-time priority (``SCHED_RR``), as media servers run theirs.

The reactor thread carries the latency: every RTP datagram is read, and every FLV tag written, by it.  On a busy
machine a thread of the normal class waits behind whatever else is runnable on its core (here: the far ends'
processes, which wake thousands of times a second to send RTP, nginx, tcpdump).  A real-time thread runs as soon
as it is runnable, ahead of every thread of the normal class; the kernel still leaves those at least 5 % of each
core (``sched_rt_runtime_us``), and the gateway's threads sleep between their batches.  FreeSWITCH raises its
threads the same way on machines with more than one core, Asterisk with ``-p``.

The transcoding threads take the same priority as the reactor: with the reactor alone raised, it preempted a
transcoding thread whenever it woke on that thread's core (often holding the GIL, which the reactor then waited
for), and the transcoding thread took 10 to 15 % more CPU; at the same priority neither preempts the other (the
one that wakes waits, or the kernel's real-time balancing runs it on the other core), and the transcoding
thread's CPU was as at normal priority.  Measured at 100 calls of the bench (see README, ``realtime_priority``).

``RealtimePriority.start`` raises only the thread that calls it, with ``SCHED_RESET_ON_FORK``: the threads and
processes it starts later begin in the normal class (each transcoding thread raises itself; Twisted's thread
pool stays normal).  Raising needs ``CAP_SYS_NICE`` or an ``RLIMIT_RTPRIO`` of at least the priority (systemd:
``LimitRTPRIO=``); without, the gateway says so once and runs at normal priority.  ``stop`` puts back what the
thread had before.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

log = Logger()


class RealtimePriority:
    """``SCHED_RR`` at ``priority`` (1-99; 0: leave the scheduling alone) for the thread that calls ``start``.

    ``system`` is the ``os`` module (tests give a fake); ``quiet``: nothing is logged (the transcoding threads':
    the reactor's has said it, and they are not the reactor).  ``applied`` is the real-time priority in force (0:
    none), ``error`` why it could not be applied (None: it was, or nothing was asked)."""

    def __init__(self, priority: int, system: Any = os, *, quiet: bool = False) -> None:
        if not 0 <= priority <= 99:
            raise ValueError(f"a real-time priority is 1 to 99 (0: none), not {priority}")
        self.priority = priority
        self.applied = 0
        self.error: str | None = None
        self._system = system
        self._quiet = quiet
        self._previous: tuple[int, Any] | None = None  # (policy, sched_param) before start

    def start(self) -> bool:
        """Raise the calling thread; True if it now runs at ``priority``."""
        if not self.priority or self._previous is not None:
            return bool(self.applied)
        system = self._system
        policy = getattr(system, "SCHED_RR", None)
        reset_on_fork = getattr(system, "SCHED_RESET_ON_FORK", None)
        if policy is None or reset_on_fork is None or not hasattr(system, "sched_setscheduler"):
            self.error = "this platform has no SCHED_RR with SCHED_RESET_ON_FORK"
            if not self._quiet:
                log.info("media threads: normal priority ({why})", why=self.error)
            return False
        try:
            previous = (system.sched_getscheduler(0), system.sched_getparam(0))
            system.sched_setscheduler(0, policy | reset_on_fork, system.sched_param(self.priority))
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            if self._quiet:
                return False
            log.warn("media threads: cannot run at real-time priority {priority} ({error}); normal priority "
                     "instead. Give the process CAP_SYS_NICE or an RLIMIT_RTPRIO of {priority} (systemd: LimitRTPRIO=), "
                     "or set realtime_priority=0 to say nothing.", priority=self.priority, error=self.error)
            return False
        self._previous = previous
        self.applied = self.priority
        self.error = None
        if not self._quiet:
            log.info("media threads: real-time priority {priority} (SCHED_RR)", priority=self.priority)
        return True

    def stop(self) -> None:
        """Put back the calling thread's scheduling from before ``start`` (call it from the same thread)."""
        if self._previous is None:
            return
        policy, param = self._previous
        self._previous = None
        self.applied = 0
        try:
            self._system.sched_setscheduler(0, policy, param)
        except OSError as exc:  # e.g. SCHED_RESET_ON_FORK cannot be cleared without CAP_SYS_NICE
            if not self._quiet:
                log.warn("media threads: cannot return to the scheduling from before ({error})",
                         error=exc.strerror or exc)
