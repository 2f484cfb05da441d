"""Media sockets read in batches: ``MediaSockets`` (Linux epoll).

Twisted's ``listenUDP`` gives every socket its own reader: each readable socket costs the reactor a dispatch
through ``callWithLogger`` and its log context, then ``Port.doRead`` reads until a ``recvfrom`` raises
``EAGAIN``.  An RTP socket carries one datagram per wake-up most of the time, so that is paid per packet:
measured here, 16 us per datagram with 200 sockets, against 7 us with this module.

``MediaSockets`` keeps an ``epoll`` set of its own.  A drain polls it once, then takes the ready sockets one by
one: it reads a socket until it is empty (``EAGAIN``; at most ``max_per_socket`` datagrams, ``max_batch`` in all
a drain) and hands what it read to the socket's protocol before it reads the next.  A call's datagrams are then
handled while they are in the caches, and the memory they came in is used again for the next socket's.  (Drains
used to read one datagram from each ready socket, poll again, and so on, and deliver only once every socket was
empty: no ``EAGAIN``, the system calls together, but at 100 calls of the bench about 1 MB of datagrams read
between a socket's read and its delivery.  In five alternate runs of each at 100 calls, this way took 1.9 % less
CPU in all, 2.4 % less on the reactor thread; the machine's noise between runs is larger, 4 of the 5 pairs went
this way.)

When drains happen: with ``interval`` 0, whenever a socket is readable (the epoll set is one ``IReadDescriptor``
of the reactor); with ``interval`` > 0, every ``interval`` seconds on a timer, so that a drain finds a few
datagrams per socket rather than one (at 100 calls and 5 ms, about 100 datagrams a drain instead of 2).  Drains
start ``interval`` apart however long each takes (one that takes longer is followed at once): a drain that
re-armed its timer only when it ended made the interval the timer's plus the drain's (at 100 calls, 10 ms drains
came 20 ms apart).  With a ``light_interval`` the drains go that far apart while they take little of the
reactor's time (few calls), and with a ``quiet_interval`` further still while they take very little (a
handful of calls).  The datagrams then wait up to ``interval`` in the kernel (plus what the reactor is
busy with when the timer is due).  Their arrival time is the drain's (``recvfrom``), up to
``interval`` later than the kernel's receive time, unless ``kernel_timestamps`` (for every socket, or per
socket at ``bind``) asks for the kernel's (``SO_TIMESTAMP`` with ``recvmsg``: exact jitter statistics and
latency histograms, for 2 to 4 us more per datagram: ``recvmsg`` alone took 3.3 to 4.3 us where ``recv`` took
1.8 to 2.0, and in the gateway about 4.3 us more at 30 calls), for each datagram or (``stamp_each`` false) for the
first of each read only, whose RTP session takes the others' from it and their RTP timestamps.

A protocol that has latched its far end (symmetric RTP) can ``connect_peer`` its socket to it: the kernel then
delivers only that source's datagrams, and they are read with ``recv``, without an address to build (at 50 calls
of the bench the read phase went from 1.6 to 1.2 s of the reactor's 8).  Datagrams queued before the connect
may come from elsewhere: until a read that began after the connect has emptied the socket (or a peek at the
connect found it empty), it is read with ``recvfrom``.  ``disconnect_peer`` undoes it (the far end moved).

With a ``gate`` (a lock shared with the transcoding pool, `wcsgw.media.worker.WorkerPool`) a drain holds the lock
while it reads and delivers, when it is free: the pool's threads start no work meanwhile, and so do not take the
GIL from the reactor in the middle of a drain.  A drain never waits for the lock.

Datagrams go to the protocol bound to the socket, all those of a drain at once, in order, as
``datagrams_arrived([(data, addr, arrival), ...])`` when it has that method (so what a protocol does once per
delivery, like re-arming a timer, is done once per drain), else one by one to ``datagramReceived(data, addr)``;
``addr`` is ``(host, port)``.  A socket is bound with ``bind``
(``CannotListenError`` as ``listenUDP`` raises it) and its ``MediaSocket`` is the protocol's transport:
``write(datagram, addr)``, ``getHost()``, ``stopListening()``.

What else runs once per drain can ride on its timer instead of waking the reactor on its own: ``after_drain``
hooks run after each timed drain, in the same reactor turn (sending the turn's RTMP writes, handing the
transcoding pool its batch), and ``lateness`` says how late the drain's timer ran (the reactor's lag, which
``on_reading`` lets a monitor take from the drains while they run instead of from a timer of its own).  On this
machine a reactor turn of its own cost about 77 us of CPU (one call: 57 turns a second became 28, and the
reactor's CPU 18.8 ms/s became 16.5).  Timers that may run up to an interval late (RTCP reports, keep-alive
RTP) can ride on the drains too: ``call_later`` is ``reactor.callLater`` run by the first drain at or after
the time it was asked for (while the drains run on a timer).

The CPU time a drain takes on the reactor thread is counted in two parts, reading (``read_cpu``) and what the
protocols do with the datagrams (``deliver_cpu``): the drain's CPU (two clock reads) split in the proportion of
wall time that reading took in the last of the drains timed socket by socket (one in ``SPLIT_EVERY``).

Errors never reach the reactor: a receive error and an exception from a protocol are logged and counted, and the
other datagrams are served.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import itertools
import math
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from time import perf_counter, thread_time
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import AlreadyCalled, AlreadyCancelled, CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from wcsgw.media.worker import holding_if_free
from wcsgw.rtp.packet import is_rtcp

log = Logger()

MAX_DATAGRAM = 65535
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # Linux: a struct timeval with each datagram
_TIMEVAL = struct.Struct("@ll")
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMEVAL.size)
SIOCGSTAMP = 0x8906  # Linux: the struct timeval of the last datagram read from the socket
_NO_STAMP = bytes(_TIMEVAL.size)
_IGNORED_RECV_ERRORS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED})


def _last_stamp(sock: socket.socket, default: float) -> float:
    """The kernel's receive time of the datagram just read from ``sock`` (``SIOCGSTAMP``), or ``default``."""
    try:
        seconds, micros = _TIMEVAL.unpack(fcntl.ioctl(sock.fileno(), SIOCGSTAMP, _NO_STAMP))
    except OSError:
        return default
    return seconds + micros * 1e-6


_LIBC: Any = None


def _disconnect(fileno: int) -> None:
    """``connect`` with AF_UNSPEC (what dissolves a UDP socket's association; Python's ``connect`` cannot say
    it); an error is logged, and the socket stays connected."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    address = ctypes.create_string_buffer(16)  # a sockaddr whose family is AF_UNSPEC (0)
    if _LIBC.connect(fileno, address, ctypes.c_uint(16)) != 0:
        log.warn("media socket: cannot disconnect it: {error}", error=os.strerror(ctypes.get_errno()))


def available() -> bool:
    """Whether this platform has epoll (Linux)."""
    return hasattr(select, "epoll")


class MediaSocket:
    """One bound UDP socket of a ``MediaSockets``; the transport of its protocol."""

    def __init__(self, owner: MediaSockets, sock: socket.socket, protocol: Any) -> None:
        self._owner = owner
        self.socket = sock
        self.protocol = protocol
        batch = getattr(protocol, "datagrams_arrived", None)
        self.deliver: Callable[[list[tuple[bytes, Any, float]]], None] = (
            batch if batch is not None else self._one_by_one)
        self.fileno = sock.fileno()
        self._host = sock.getsockname()
        self.closed = False
        self.peer: tuple[str, int] | None = None  # connect_peer's address, once no other source can be queued
        self._connected: tuple[str, int] | None = None  # what the socket is connected to
        self.hold = 0.0  # seconds its datagrams wait in the kernel between reads (see MediaSockets.bind)
        self.read_at = -math.inf  # when a drain last read it (a socket with a hold)
        # A socket with a hold: when what its protocol waits for will have come (reactor seconds; None: no hint).
        # Its protocol sets it as it takes a delivery: the drains read the socket at the first drain at or after
        # it (and at least every MediaSockets.MAX_HOLD), instead of every hold (see MediaSockets.bind).
        self.wanted_at: float | None = None
        self.stamped = False  # read with the kernel's receive times (see MediaSockets.bind)
        self.stamp_each = True  # stamped: every datagram read; False: the first of each read (see MediaSockets.bind)

    def _one_by_one(self, datagrams: list[tuple[bytes, Any, float]]) -> None:
        for data, addr, _arrival in datagrams:
            try:
                self.protocol.datagramReceived(data, addr)
            except Exception:
                self._owner.protocol_errors += 1
                log.failure("media datagram from {addr} failed", addr=addr)

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Send ``datagram`` to ``addr``; ``OSError`` from ``sendto`` is raised (the caller counts it), except
        a full socket buffer, which drops the datagram as a congested network would."""
        try:
            self.socket.sendto(datagram, addr)
        except BlockingIOError:
            self._owner.send_drops += 1

    def connect_peer(self, addr: tuple[str, int], local_address: str | None = None) -> None:
        """Take datagrams from ``addr`` only; ``OSError`` if the socket cannot be connected to it.

        A socket bound to the wildcard address takes, when connected, the address that routes to ``addr`` as
        its own, and then receives only what is sent to that address: it is kept connected only if that is
        ``local_address``, the address the far end was told to send to (else ``OSError``, unconnected)."""
        if self._connected == addr:
            return
        try:
            self.socket.connect(addr)
            if self._host[0] in ("0.0.0.0", "::", ""):
                local = self.socket.getsockname()[0]
                if local != local_address:
                    raise OSError(f"connected, it would receive on {local} only, not on {local_address}")
        except OSError:
            self._connected = addr  # whatever the socket is now, it is made unconnected
            self.disconnect_peer()
            raise
        self._connected = addr
        # What came before the connect may be foreign: recvfrom until a read empties the socket, unless it is
        # empty now (the kernel queues only the peer's datagrams from here on).  Another error (an ICMP one
        # queued for the socket) leaves it to the next read.
        self.peer = None
        try:
            self.socket.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            self.peer = addr
        except OSError:
            pass

    def disconnect_peer(self) -> None:
        """Take datagrams from any source again."""
        if self._connected is None:
            return
        self._connected = None
        self.peer = None
        _disconnect(self.fileno)

    def getHost(self) -> IPv4Address | IPv6Address:  # noqa: N802 -- IListeningPort's name
        if self.socket.family == socket.AF_INET6:
            return IPv6Address("UDP", self._host[0], self._host[1])
        return IPv4Address("UDP", self._host[0], self._host[1])

    def stopListening(self) -> Deferred[None]:  # noqa: N802 -- IListeningPort's name
        """Close the socket (at once: nothing is buffered on our side)."""
        if not self.closed:
            self.closed = True
            self._owner._remove(self)
            self.socket.close()
            self.protocol.doStop()
        return succeed(None)


class DrainCall:
    """A call run by ``MediaSockets``' drains (``MediaSockets.call_later``), with the methods of Twisted's
    ``IDelayedCall`` the gateway uses: ``getTime``, ``active``, ``cancel``, ``reset``."""

    __slots__ = ("time", "func", "args", "_owner", "_state")

    PENDING, CALLED, CANCELLED = 0, 1, 2

    def __init__(self, owner: MediaSockets, time: float, func: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.time = time
        self.func = func
        self.args = args
        self._owner = owner
        self._state = self.PENDING

    def getTime(self) -> float:  # noqa: N802 -- IDelayedCall's name
        return self.time

    def active(self) -> bool:
        return self._state == self.PENDING

    def _check(self) -> None:
        if self._state == self.CALLED:
            raise AlreadyCalled()
        if self._state == self.CANCELLED:
            raise AlreadyCancelled()

    def cancel(self) -> None:
        self._check()
        self._state = self.CANCELLED

    def reset(self, seconds_from_now: float) -> None:
        self._check()
        self.time = self._owner._reactor.seconds() + seconds_from_now
        self._owner._push(self)


@implementer(IReadDescriptor)
class MediaSockets:
    """UDP sockets read through one inner epoll set, in batches (see the module docstring)."""

    # Slots: more than 30 attributes (see MediaStreamSession.__slots__).  '__dict__': tests' stand-ins.
    __slots__ = (
        '_reactor', '_epoll', '_sockets', 'interval', 'light_interval', 'quiet_interval', '_levels', '_level',
        '_cpu_clock', '_on_light', '_on_reading', 'after_drain', 'lateness', '_calls', '_call_order', '_calls_timer',
        '_load_since', '_load_cpu', '_max_batch', '_max_per_socket', '_receive_buffer', 'kernel_timestamps',
        '_reading', '_timer', '_due', '_wanted', '_gate', 'datagrams', 'drains',
        'interval_changes', 'receive_errors', 'protocol_errors', 'send_drops', 'read_cpu', 'deliver_cpu',
        '_read_share', '__dict__',
    )

    def __init__(self, reactor: Any, *, interval: float = 0.0, max_batch: int = 4096, max_per_socket: int = 512,
                 receive_buffer: int | None = None, kernel_timestamps: bool = False,
                 gate: threading.Lock | None = None, light_interval: float = 0.0, quiet_interval: float = 0.0,
                 cpu_clock: Callable[[], float] = thread_time,
                 on_light: Callable[[bool], object] | None = None,
                 on_reading: Callable[[bool], object] | None = None) -> None:
        """``reactor`` provides ``IReactorFDSet`` and ``IReactorTime``; ``interval``: seconds between drains (0:
        drain whenever a socket is readable); ``max_batch``: the most datagrams a drain reads, ``max_per_socket``
        the most it reads from one socket (what is left waits for the next drain); ``receive_buffer`` sets each
        socket's SO_RCVBUF (the kernel caps it at net.core.rmem_max); ``kernel_timestamps``: with an interval,
        each datagram's arrival time is the kernel's, not the drain's; ``gate``: a lock held during each drain,
        when it is free (never waited for: see `wcsgw.media.worker.WorkerPool`).

        ``light_interval`` (seconds, longer than ``interval``; 0: none): the interval while the drains are light.
        Every ``LOAD_WINDOW`` seconds the share of the time the drains took (their CPU, ``cpu_clock``) is
        looked at: below ``LIGHT_LOAD`` the drains go ``light_interval`` apart, above ``HEAVY_LOAD`` (measured
        at the light interval, where drains take less of the time) back to ``interval``.  Part of a drain's
        cost is the same whether it finds little or much, and the calls it delivers to are cold in the caches
        each time; with few calls that is much of the cost, and the latency a longer interval adds is cheaper
        there than with many calls, where a drain takes longer itself.  ``on_light`` is called with True when
        the drains go ``light_interval`` apart, with False when they come back (what it raises is logged).

        ``quiet_interval`` (seconds, longer than ``light_interval``, which it needs; 0: none): a third interval,
        for drains lighter still.  Drains at ``light_interval`` go ``quiet_interval`` apart when a window's
        share is below ``QUIET_LOAD``, and drains at ``quiet_interval`` back to ``light_interval`` above
        ``UNQUIET_LOAD`` (and straight to ``interval`` above ``HEAVY_LOAD``, a burst of calls).  ``on_light``
        hears only light or not: quiet is light to it.

        ``on_reading`` (with an ``interval``) is called with True when the timed drains start (the first socket)
        and with False when they stop (the last socket went, or ``close``); what it raises is logged."""
        if interval < 0:
            raise ValueError(f"interval must not be negative, not {interval}")
        if max_batch < 1 or max_per_socket < 1:
            raise ValueError(f"max_batch and max_per_socket must be positive, not {max_batch}, {max_per_socket}")
        if light_interval and (not interval or light_interval <= interval):
            raise ValueError(f"light_interval must be longer than interval, not {light_interval}")
        if quiet_interval and (not light_interval or quiet_interval <= light_interval):
            raise ValueError(f"quiet_interval must be longer than light_interval, not {quiet_interval}")
        self._reactor = reactor
        self._epoll = select.epoll()
        self._sockets: dict[int, MediaSocket] = {}
        self.interval = interval
        self.light_interval = light_interval
        self.quiet_interval = quiet_interval
        # the intervals, shortest first, and the index of the one in force (current_interval)
        self._levels = tuple(i for i in (interval, light_interval, quiet_interval) if i) or (0.0,)
        self._level = 0
        self._cpu_clock = cpu_clock
        self._on_light = on_light
        self._on_reading = on_reading
        #: called after each timed drain, in order, in the drain's reactor turn (what one raises is logged)
        self.after_drain: list[Callable[[], object]] = []
        self.lateness = 0.0  # how late the last timed drain started, s, against the schedule (the reactor's lag)
        # call_later's calls: (time, order, call), a heap; an entry whose call moved (reset) or ended is skipped
        self._calls: list[tuple[float, int, DrainCall]] = []
        self._call_order = itertools.count()
        self._calls_timer: Any = None  # runs the calls while no timed drain does (the drains stopped)
        self._load_since = 0.0  # start of the window the load is measured over (reactor time)
        self._load_cpu = 0.0  # read_cpu + deliver_cpu then
        self._max_batch = max_batch
        self._max_per_socket = max_per_socket
        self._receive_buffer = receive_buffer
        self.kernel_timestamps = kernel_timestamps
        self._reading = False
        self._timer: Any = None
        self._due = 0.0  # when the drain timer was due (drains start interval apart, however long each took)
        self._wanted = 0.0  # when the drain was due on the schedule (earlier than _due after one that ran over)
        self._gate = gate
        # counters
        self.datagrams = 0
        self.drains = 0
        self.interval_changes = 0  # between interval, light_interval and quiet_interval
        self.receive_errors = 0
        self.protocol_errors = 0
        self.send_drops = 0
        # CPU seconds of the reactor thread in drains: reading the sockets, and handing datagrams to protocols
        self.read_cpu = 0.0
        self.deliver_cpu = 0.0
        self._read_share = 0.0  # of a drain's CPU, the part that reads: as the last timed drain found it

    def __len__(self) -> int:
        return len(self._sockets)

    @property
    def current_interval(self) -> float:
        """The interval in force: ``interval``, ``light_interval`` or ``quiet_interval``."""
        return self._levels[self._level]

    def bind(self, port: int, protocol: Any, interface: str = "", hold: float = 0.0,
             kernel_timestamps: bool | None = None, stamp_each: bool = True) -> MediaSocket:
        """Bind a UDP socket to ``interface``:``port`` for ``protocol`` (a ``DatagramProtocol``).

        ``kernel_timestamps`` (only with an ``interval``; None: the ``MediaSockets``' own): this socket's
        datagrams arrive at the kernel's receive time rather than their drain's.  Without ``stamp_each`` only the
        first datagram of each read has it (``recvmsg``), and the others, read with ``recv``, arrive as None,
        which an RTP session takes from the first's time and their RTP timestamps (see
        `wcsgw.rtp.session.MediaStreamSession.receive_rtp_many`); one of them that looks like RTCP (rtcp-mux) gets
        its kernel time from ``SIOCGSTAMP``.  For a held socket (audio) that reads many datagrams at a time: a
        ``recvmsg`` costs about two ``recv``.

        ``hold`` (seconds; only with an ``interval``): the drains read this socket only once ``hold`` and half an
        interval have passed since they last did, and its datagrams wait in the kernel meanwhile: fewer, larger
        deliveries, for a stream whose packets are worth little one by one (audio on its way to 128 ms AAC
        frames).  What a read finds has waited up to ``hold`` and an interval (with 40 ms for both: every other
        drain reads it); the first datagram after a quiet spell goes at the next drain.  Its arrival time is the
        kernel's with ``kernel_timestamps``, else the read's.  While the protocol names a time in the socket's
        ``wanted_at`` as it takes a delivery (when what it waits for will have come: the last packet of an AAC
        job), the drains read the socket at the first drain at or after that time instead, or ``MAX_HOLD``
        after the last read if that comes first."""
        if hold < 0:
            raise ValueError(f"hold must not be negative, not {hold}")
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self._receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            stamped = bool(self.interval) and (self.kernel_timestamps if kernel_timestamps is None
                                                else kernel_timestamps)
            if stamped:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
            sock.bind((interface, port))
        except OSError as exc:
            sock.close()
            raise CannotListenError(interface, port, exc) from exc
        media = MediaSocket(self, sock, protocol)
        media.hold = hold if self.interval else 0.0  # drains whenever readable have no timer to wait for
        media.stamped = stamped
        media.stamp_each = stamp_each
        self._sockets[media.fileno] = media
        self._epoll.register(media.fileno, select.EPOLLIN)
        protocol.makeConnection(media)
        self._start()
        return media

    def call_later(self, delay: float, func: Callable[..., object], *args: object) -> Any:
        """``reactor.callLater``, for calls that may run up to an interval late: while the drains run on a timer
        the call is run by the first drain at or after its time (after the drain's deliveries, before its
        ``after_drain`` hooks), which spares the reactor a turn of its own; without an ``interval`` it is the
        reactor's.  What it raises is logged.  If the drains stop (the last socket went) calls still pending run on
        a reactor timer at their time."""
        if not self.interval:
            return self._reactor.callLater(delay, func, *args)
        call = DrainCall(self, self._reactor.seconds() + delay, func, args)
        self._push(call)
        return call

    def _push(self, call: DrainCall) -> None:
        heapq.heappush(self._calls, (call.time, next(self._call_order), call))
        if not self._reading:
            self._arm_calls_timer()

    def _run_calls(self, now: float) -> None:
        """Run the calls due by ``now``: those due when it starts (one that a call makes due again waits for the
        next drain, as a ``callLater(0)`` waits for the next reactor turn: a call that keeps asking to run now
        cannot hold the reactor)."""
        calls = self._calls
        due = []
        while calls and calls[0][0] <= now:
            due.append(heapq.heappop(calls))
        for time, _, call in due:
            if call._state != DrainCall.PENDING or call.time != time:  # ended, or moved (its new entry is on),
                continue  # maybe by a call run before it here
            call._state = DrainCall.CALLED
            try:
                call.func(*call.args)
            except Exception:
                log.failure("media sockets: a call of the drains failed")

    def _arm_calls_timer(self) -> None:
        """While no timed drain runs: a reactor timer for the earliest pending call."""
        calls = self._calls
        while calls and (calls[0][2]._state != DrainCall.PENDING or calls[0][2].time != calls[0][0]):
            heapq.heappop(calls)
        if self._calls_timer is not None and self._calls_timer.active():
            self._calls_timer.cancel()
        self._calls_timer = None
        if calls:
            self._calls_timer = self._reactor.callLater(max(0.0, calls[0][0] - self._reactor.seconds()),
                                                        self._calls_timer_fired)

    def _calls_timer_fired(self) -> None:
        self._calls_timer = None
        self._run_calls(self._reactor.seconds())
        if not self._reading:
            self._arm_calls_timer()

    def _start(self) -> None:
        if self._reading:
            return
        self._reading = True
        if self._calls_timer is not None:  # the drains run the calls again
            if self._calls_timer.active():
                self._calls_timer.cancel()
            self._calls_timer = None
        if self.interval:
            if self._level:  # light when the last socket went: start short again
                self._set_level(0)
            now = self._reactor.seconds()
            self._load_since, self._load_cpu = now, self.read_cpu + self.deliver_cpu
            self._due = self._wanted = now + self.interval
            self._timer = self._reactor.callLater(self.interval, self._tick)
            self._call_hook(self._on_reading, True)
        else:
            self._reactor.addReader(self)

    def _stop(self) -> None:
        if not self._reading:
            return
        self._reading = False
        if self.interval:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._call_hook(self._on_reading, False)
            self._arm_calls_timer()
        else:
            self._reactor.removeReader(self)

    def _remove(self, media: MediaSocket) -> None:
        if self._sockets.get(media.fileno) is media:
            del self._sockets[media.fileno]
            try:
                self._epoll.unregister(media.fileno)
            except OSError:
                pass
        if not self._sockets:
            self._stop()

    def close(self) -> None:
        """Close every socket and the epoll set."""
        for media in list(self._sockets.values()):
            media.stopListening()
        self._stop()
        self._epoll.close()
        if self._calls_timer is not None and self._calls_timer.active():
            self._calls_timer.cancel()
        self._calls_timer = None
        self._calls = []

    def _tick(self) -> None:
        self._timer = None
        self.lateness = max(0.0, self._reactor.seconds() - self._wanted)
        try:
            self.drain()
            if self._calls:
                self._run_calls(self._reactor.seconds())
            for hook in tuple(self.after_drain):  # (a hook may add or remove hooks)
                self._call_hook(hook)
            if self.light_interval:
                self._check_load()
        finally:
            if self._reading:
                now = self._reactor.seconds()
                self._wanted = self._due + self.current_interval
                due = max(self._wanted, now)
                self._due = due
                self._timer = self._reactor.callLater(due - now, self._tick)

    #: Seconds over which the drains' load is measured; the share of that time (CPU in drains over time) below
    #: which drains at ``interval`` go ``light_interval`` apart, and the share above which drains at
    #: ``light_interval`` go back to ``interval``.  Measured on this machine with the bench's calls at 40 ms:
    #: about 5 % at 10 calls, 21 % at 50, 41 % at 100; at 60 ms about 0.85 of that (16 % there is about 19 % at
    #: 40 ms): only between 18 and 19 % at 40 ms does the interval depend on where the load came from.
    #: Then the share below which drains at ``light_interval`` go ``quiet_interval`` apart, and the share above
    #: which drains at ``quiet_interval`` come back to ``light_interval``.  Measured with the bench's calls at 60
    #: ms: 2.4-4.0 % at 10 calls, 4.9-6.5 % at 20, 6.3-9.9 % at 30; at 80 ms 2.4-3.4 % at 10 calls and 5.2-5.4 %
    #: at 20: quiet below about 15 calls (4.5 %), back above about 22 (6 % at 80 ms), either way in between.
    LOAD_WINDOW = 1.0
    LIGHT_LOAD = 0.18
    HEAVY_LOAD = 0.16
    QUIET_LOAD = 0.045
    UNQUIET_LOAD = 0.06

    def _check_load(self) -> None:
        now = self._reactor.seconds()
        if now - self._load_since < self.LOAD_WINDOW:
            return
        cpu = self.read_cpu + self.deliver_cpu
        share = (cpu - self._load_cpu) / (now - self._load_since)
        self._load_since, self._load_cpu = now, cpu
        level = self._level
        if level == 0:
            if share < self.LIGHT_LOAD:
                self._set_level(1)
        elif share > self.HEAVY_LOAD:
            self._set_level(0)
        elif level == 1:
            if share < self.QUIET_LOAD and len(self._levels) > 2:
                self._set_level(2)
        elif share > self.UNQUIET_LOAD:
            self._set_level(1)

    def _set_level(self, level: int) -> None:
        """Put the interval ``self._levels[level]`` in force; ``on_light`` hears when light (any level above 0)
        starts or ends."""
        was_light = self._level > 0
        self._level = level
        self.interval_changes += 1
        if (level > 0) != was_light:
            self._call_hook(self._on_light, level > 0)

    @staticmethod
    def _call_hook(hook: Callable[..., object] | None, *args: object) -> None:
        if hook is not None:
            try:
                hook(*args)
            except Exception:
                log.failure("media sockets: {hook!r} failed", hook=hook)

    #: The longest a socket with a hold and a ``wanted_at`` goes unread (seconds).
    MAX_HOLD = 0.5

    #: One drain in this many has its reading timed apart from its delivering (two wall-clock reads per socket,
    #: where the thread's CPU clock is a system call of 1.6 us here); the CPU of every drain is split between
    #: ``read_cpu`` and ``deliver_cpu`` in the proportion the last timed one found.
    SPLIT_EVERY = 8

    def drain(self) -> None:
        """Read the ready sockets one by one (those with a ``hold`` when it is up), each until it is empty (or
        its share of ``max_batch``), and deliver what a socket held before reading the next."""
        self.drains += 1
        clock = self._cpu_clock
        timed = self.drains % self.SPLIT_EVERY == 1
        with holding_if_free(self._gate):
            started = clock()
            wall = perf_counter() if timed else 0.0
            reading = self._read_and_deliver(self._reactor.seconds(), timed)
            cpu = clock() - started
            if timed:
                wall = perf_counter() - wall
                if wall > 0.0:
                    self._read_share = min(1.0, reading / wall)
            read = cpu * self._read_share
            self.read_cpu += read
            self.deliver_cpu += cpu - read

    def _deliver(self, media: MediaSocket, datagrams: list[tuple[bytes, Any, float]]) -> None:
        """Hand ``datagrams`` to ``media``'s protocol; what it raises is logged and counted."""
        try:
            media.deliver(datagrams)
        except Exception:
            self.protocol_errors += 1
            log.failure("media datagrams on port {port} failed", port=media._host[1])

    def _read_and_deliver(self, now: float, timed: bool) -> float:
        """Read each socket the set reports ready (one with a ``hold`` only when it is up) and deliver what it
        held before reading the next (why: the module docstring).  Return the wall time spent reading when
        ``timed``, else 0.0."""
        sockets = self._sockets
        per_socket = self._max_per_socket
        budget = self._max_batch
        held_for = self.current_interval / 2  # a held socket is read once its hold and this have passed
        reading = 0.0
        for fd, _mask in self._epoll.poll(0):
            media = sockets.get(fd)
            if media is None or media.closed:  # closed: by an earlier delivery of this drain
                continue
            if budget <= 0:
                break
            if media.hold:
                wanted = media.wanted_at
                if wanted is None:
                    if now - media.read_at < media.hold + held_for:  # its datagrams wait in the kernel
                        continue
                elif now < wanted and now - media.read_at < self.MAX_HOLD:
                    continue
                media.read_at = now
                media.wanted_at = None  # the protocol names the next as it takes this delivery
            if timed:
                began = perf_counter()
                datagrams = self._read_socket(media, now, min(per_socket, budget))
                reading += perf_counter() - began
            else:
                datagrams = self._read_socket(media, now, min(per_socket, budget))
            if datagrams:
                budget -= len(datagrams)
                self._deliver(media, datagrams)
        self.datagrams += self._max_batch - budget
        return reading

    def _read_socket(self, media: MediaSocket, now: float, limit: int) -> list[tuple[bytes, Any, float | None]]:
        """Up to ``limit`` datagrams of ``media`` as ``(data, addr, arrival)``.  ``now``: the arrival time of what
        is read, unless stamped (without ``stamp_each``, the datagrams after the first arrive as None but for one
        that looks like RTCP: see ``bind``).  A connected socket that is emptied here takes only its peer's
        datagrams from now on (read without an address): this read began after the connect, so nothing queued
        before is left."""
        datagrams: list[tuple[bytes, Any, float | None]] = []
        append = datagrams.append
        sock = media.socket
        stamped = media.stamped
        sampled = False  # the first datagram was stamped, the others are not
        peer = media.peer  # connected: only the peer's datagrams come, read without an address
        arrival: float | None = now
        for _ in range(limit):
            try:
                if stamped:
                    data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY_SIZE)
                    # SO_TIMESTAMP is the only control message asked for
                    if ancillary and len(ancillary[0][2]) >= _TIMEVAL.size:
                        seconds, micros = _TIMEVAL.unpack_from(ancillary[0][2])
                        arrival = seconds + micros * 1e-6
                    else:
                        arrival = now
                    if len(addr) > 2:
                        addr = addr[:2]
                    if not media.stamp_each:
                        stamped = False
                        sampled = True
                        append((data, addr, arrival))
                        arrival = None
                        continue
                elif peer is not None:
                    data = sock.recv(MAX_DATAGRAM)
                    addr = peer
                else:
                    data, addr = sock.recvfrom(MAX_DATAGRAM)
                    if len(addr) > 2:
                        addr = addr[:2]
            except OSError as exc:
                if exc.errno == errno.EAGAIN or exc.errno == errno.EWOULDBLOCK:
                    if peer is None and media._connected is not None:
                        media.peer = media._connected
                    return datagrams
                if exc.errno in _IGNORED_RECV_ERRORS:  # EINTR, or an ICMP error of an earlier send: read on
                    continue
                self.receive_errors += 1
                log.warn("media socket {port}: {error}", port=media._host[1], error=exc)
                return datagrams
            if sampled and is_rtcp(data):
                append((data, addr, _last_stamp(sock, now)))  # RTCP (rtcp-mux): its own time, for LSR/DLSR
                continue
            append((data, addr, arrival))
        return datagrams

    # -- IReadDescriptor (interval 0) ----------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:  # noqa: N802 -- ILoggingContext's name
        return "media"

    def connectionLost(self, reason: object) -> None:  # noqa: N802 -- IReadDescriptor's name
        self._reading = False

    def doRead(self) -> None:  # noqa: N802 -- IReadDescriptor's name
        self.drain()
