"""The Twisted adapter of a ``MediaStreamSession``: UDP sockets in and out, one timer, events to a callback.

It only moves datagrams: each socket's ``datagramReceived`` feeds the session with ``reactor.seconds()``, then the
adapter sends what the session wants sent, hands its events to ``on_event`` (or all of them at once to
``on_events``) and re-arms its single ``DelayedCall`` from ``session.get_timer()``. Nothing raised by the session
or the callback escapes into the reactor: it is logged and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from .params import MediaEvent, MediaParams
from .ports import PortAllocator
from .session import MediaStreamSession
from .udp import MediaSockets

log = Logger()

RTP = "rtp"
RTCP = "rtcp"


class MediaSocketProtocol(DatagramProtocol):
    """One UDP socket (RTP or RTCP) of a ``MediaStreamProtocol``."""

    def __init__(self, owner: MediaStreamProtocol, channel: str) -> None:
        self.owner = owner
        self.channel = channel
        if channel == RTP:  # MediaSockets calls the owner's RTP entry itself: one call less per batch
            self.datagrams_arrived = owner.rtp_arrived  # type: ignore[method-assign]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.owner.datagrams_received(self.channel, [(datagram, (addr[0], addr[1]), None)])

    def datagrams_arrived(self, datagrams: list[tuple[bytes, Any, float | None]]) -> None:
        """Datagrams in arrival order, each with the kernel's receive time (None: now), from ``MediaSockets``."""
        self.owner.datagrams_received(self.channel, datagrams)


class MediaStreamProtocol:
    """Runs one ``MediaStreamSession`` on an RTP socket and (without rtcp-mux) an RTCP socket.

    The sockets can be bound before the session exists (``session=None``): a call binds its ports before it
    offers them, and only the answer tells what the session is.  Until ``attach`` datagrams are dropped and
    counted in ``early_datagrams``.
    """

    def __init__(
        self,
        reactor: Any,  # IReactorTime and IReactorUDP
        session: MediaStreamSession | None,
        on_event: Callable[[MediaEvent], None],
        sockets: MediaSockets | None = None,
        rtp_hold: float = 0.0,
        kernel_timestamps: bool | None = None,
        on_events: Callable[[list[MediaEvent]], None] | None = None,
        rtp_stamp_each: bool = True,
    ) -> None:
        """``sockets``: bind through this ``MediaSockets`` (one reactor reader for all media sockets) instead of
        ``reactor.listenUDP``; ``rtp_hold``: the RTP socket's ``hold`` there (seconds RTP may wait to be
        delivered in larger batches, see ``MediaSockets.bind``); ``kernel_timestamps``: both sockets' there
        (None: the ``MediaSockets``' own); ``rtp_stamp_each`` false: the RTP socket's first datagram of each read
        only (``stamp_each`` there; the session takes the others' arrival from it).

        ``on_events``, when given, takes the events of each delivery (or timer) together, in order, in place of
        ``on_event`` one by one: a frame per audio packet, and each call on its way costs (the gateway's calls hand
        a delivery's frames to their stream in one call).  What it raises is logged and counted in ``errors``; it
        should keep one event's failure from the others itself."""
        self.reactor = reactor
        self._sockets = sockets
        self._rtp_hold = rtp_hold
        self._kernel_timestamps = kernel_timestamps
        self._rtp_stamp_each = rtp_stamp_each
        self.session = session
        self.on_event = on_event
        self.on_events = on_events
        self.errors = 0
        self.send_errors = 0
        self.early_datagrams = 0
        self.rtp_protocol = MediaSocketProtocol(self, RTP)
        self.rtcp_protocol = MediaSocketProtocol(self, RTCP)
        # IListeningPort per channel, and the one IDelayedCall (typed Any: no zope plugin for mypy here)
        self._ports: dict[str, Any] = {}
        self._timer: Any = None
        self._timer_at = 0.0  # when the armed timer fires
        self._timer_lags = False  # the timer is the media drains' (MediaSockets.call_later), not the reactor's
        self._stopped = False
        self._connect_failed: Any = None  # the latched address the RTP socket could not be connected to
        # the address the far end sends to (our SDP's): a socket bound to the wildcard address may connect to
        # the far end only if that is the address it would then receive on
        self.local_address: str | None = None

    # --- sockets ----------------------------------------------------------------------------------------------

    def listen(self, rtp_port: int, rtcp_port: int | None, interface: str = "") -> None:
        """Bind the RTP socket and, unless ``rtcp_port`` is None, the RTCP one; ``CannotListenError`` leaves
        nothing bound."""
        rtp = self._listen(rtp_port, self.rtp_protocol, interface)
        if rtcp_port is not None:
            try:
                rtcp = self._listen(rtcp_port, self.rtcp_protocol, interface)
            except CannotListenError:
                rtp.stopListening()
                raise
            self._ports[RTCP] = rtcp
        self._ports[RTP] = rtp
        self._service()

    def _listen(self, port: int, protocol: MediaSocketProtocol, interface: str) -> Any:
        if self._sockets is not None:
            return self._sockets.bind(port, protocol, interface,
                                      hold=self._rtp_hold if protocol is self.rtp_protocol else 0.0,
                                      kernel_timestamps=self._kernel_timestamps,
                                      stamp_each=self._rtp_stamp_each or protocol is not self.rtp_protocol)
        return self.reactor.listenUDP(port, protocol, interface=interface)

    def listen_allocated(self, allocator: PortAllocator, interface: str = "", rtcp: bool = True) -> tuple[int, int]:
        """Bind a pair from ``allocator``, skipping pairs that fail to bind; raise ``PortsExhausted`` if none
        is left. Return the (RTP, RTCP) ports."""
        while True:
            rtp_port, rtcp_port = allocator.allocate()
            try:
                self.listen(rtp_port, rtcp_port if rtcp else None, interface)
            except CannotListenError:
                log.warn("media ports {rtp}/{rtcp} are busy, skipped", rtp=rtp_port, rtcp=rtcp_port)
                allocator.bind_failed(rtp_port)
                continue
            return rtp_port, rtcp_port

    @property
    def rtp_port(self) -> int | None:
        port = self._ports.get(RTP)
        return port.getHost().port if port is not None else None

    @property
    def rtcp_port(self) -> int | None:
        port = self._ports.get(RTCP)
        return port.getHost().port if port is not None else None

    def attach(self, session: MediaStreamSession) -> None:
        """Start running ``session`` on the bound sockets."""
        self.session = session
        self._service()

    def stop(self) -> Deferred[None]:
        """Say RTCP BYE, close both sockets and cancel the timer."""
        if self._stopped:
            return succeed(None)
        try:
            if self.session is not None:
                self.session.close(self.reactor.seconds())
                self._flush()
        except Exception:
            self.errors += 1
            log.failure("media session close failed")
        self._stopped = True
        self._cancel_timer()
        ports, self._ports = list(self._ports.values()), {}
        return gatherResults([maybeDeferred(port.stopListening) for port in ports]).addCallback(lambda _: None)

    # --- commands from the call manager ------------------------------------------------------------------------

    def request_keyframe(self) -> None:
        if self.session is not None:
            self.session.request_keyframe(self.reactor.seconds())
            self._service()

    def send_dtmf(self, digit: str, duration_ms: int | None = None) -> None:
        """Queue a digit (``ValueError`` if it cannot be sent)."""
        if self.session is None:
            raise ValueError("no media session yet")
        self.session.send_dtmf(digit, self.reactor.seconds(), duration_ms)
        self._service()

    def update_params(self, params: MediaParams) -> None:
        if self.session is not None:
            self.session.update_params(params, self.reactor.seconds())
            self._follow_latch()
            self._service()

    def set_hold(self, on_hold: bool) -> None:
        if self.session is not None:
            self.session.set_hold(on_hold, self.reactor.seconds())
            self._service()

    # --- plumbing ---------------------------------------------------------------------------------------------

    def datagram_received(self, channel: str, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams_received(channel, [(data, addr, None)])

    def datagrams_received(self, channel: str, datagrams: list[tuple[bytes, Any, float | None]]) -> None:
        """Feed the session every datagram (``(data, addr, arrival or None)``), then send what it wants sent,
        hand over its events and re-arm the timer, once.  Nothing raised gets out."""
        if channel == RTP:
            self.rtp_arrived(datagrams)
            return
        session = self.session
        if session is None or self._stopped:
            if not self._stopped:
                self.early_datagrams += len(datagrams)
            return
        now = self.reactor.seconds()
        for data, addr, arrival in datagrams:  # RTCP
            try:
                session.receive_rtcp(data, addr, now if arrival is None else arrival)
            except Exception:
                self.errors += 1
                log.failure("media {channel} datagram from {addr} failed", channel=channel, addr=addr)
        try:
            self._flush()
            self._arm_timer(now)
        except Exception:
            self.errors += 1
            log.failure("media {channel} service failed", channel=channel)

    def rtp_arrived(self, datagrams: list[tuple[bytes, Any, float | None]]) -> None:
        """``datagrams_received`` for the RTP socket (the socket's ``datagrams_arrived``: every batch of media
        comes this way, so it is kept short)."""
        session = self.session
        if session is None or self._stopped:
            if not self._stopped:
                self.early_datagrams += len(datagrams)
            return
        now = self.reactor.seconds()
        try:
            self.errors += session.receive_rtp_many(datagrams, now)
        except Exception:  # receive_rtp_many logs what fails in it; this is a last guard
            self.errors += 1
            log.failure("media RTP datagrams failed")
            session.deadlines_unchanged = False
        try:
            self._flush()
            if not session.deadlines_unchanged or self._timer is None:  # not only the fast path ran
                self._arm_timer(now)
                self._follow_latch()
        except Exception:
            self.errors += 1
            log.failure("media {channel} service failed", channel=RTP)

    def _follow_latch(self) -> None:
        """Connect the RTP socket to the far end the session latched (only its datagrams are then read, more
        cheaply: see ``MediaSockets``), or disconnect it when the session takes any source again."""
        transport: Any = self.rtp_protocol.transport
        connect = getattr(transport, "connect_peer", None)
        if connect is None or self.session is None:
            return
        latched = self.session.latched_rtp_address
        if latched is None:
            transport.disconnect_peer()
            return
        if latched == self._connect_failed:
            return
        try:
            connect(latched, self.local_address)
        except OSError as exc:  # it keeps working unconnected
            self._connect_failed = latched
            log.info("media RTP socket not connected to {addr}: {error}", addr=latched, error=exc)

    def _on_timer(self) -> None:
        self._timer = None
        if self._stopped or self.session is None:
            return
        try:
            self.session.handle_timer(self.reactor.seconds())
        except Exception:
            self.errors += 1
            log.failure("media session timer failed")
        self._service()

    def _service(self) -> None:
        if self._stopped or self.session is None:
            return
        self._flush()
        self._arm_timer(self.reactor.seconds())

    def _flush(self) -> None:
        session: Any = self.session
        # the session's output lists are looked at before they are asked for: this runs for every batch, and
        # most batches have no datagram to send, many no event
        if session._outgoing:
            self._send_datagrams(session.datagrams_to_send())
        if session._events:
            on_events = self.on_events
            if on_events is not None:
                events = session.events()
                try:
                    on_events(events)
                except Exception:
                    self.errors += 1
                    log.failure("media events handler failed for {count} events", count=len(events))
                return
            for event in session.events():
                try:
                    self.on_event(event)
                except Exception:
                    self.errors += 1
                    log.failure("media event handler failed for {event!r}", event=event)

    def _send_datagrams(self, datagrams: list[tuple[bytes, Any, str]]) -> None:
        for data, addr, channel in datagrams:
            protocol = self.rtcp_protocol if channel == RTCP and RTCP in self._ports else self.rtp_protocol
            transport: Any = protocol.transport
            if transport is None:
                continue
            try:
                transport.write(data, addr)
            except Exception as exc:  # OSError from sendto (unreachable network, ...) must not stop the call
                self.send_errors += 1
                log.debug("media send to {addr} failed: {error}", addr=addr, error=exc)

    def _arm_timer(self, now: float) -> None:
        """Have the timer fire by the session's next deadline.  A timer already due sooner is kept: it fires
        early, the session finds nothing due, and the timer is armed again for the real deadline.  Most
        datagrams move no deadline earlier, so most leave the reactor's timer heap alone.

        Through ``MediaSockets`` the timer rides on the media drains (``MediaSockets.call_later``: no reactor
        turn of its own, up to a read interval late) while the session's deadlines can wait that long
        (``MediaStreamSession.timer_may_lag``: RTCP reports, keep-alive RTP, inactivity); a reactor timer
        otherwise (DTMF packets, the jitter buffer's waits)."""
        session = self.session
        assert session is not None
        when = session.get_timer()
        if when is None:
            self._cancel_timer()
            return
        lagging = self._sockets is not None and session.timer_may_lag()
        if self._timer is not None:
            if self._timer_at <= when and (lagging or not self._timer_lags):
                return
            if lagging == self._timer_lags:
                self._timer.reset(max(0.0, when - now))
                self._timer_at = when
                return
            self._cancel_timer()  # a timer that may lag cannot serve a deadline that may not
        if lagging:
            assert self._sockets is not None
            self._timer = self._sockets.call_later(max(0.0, when - now), self._on_timer)
        else:
            self._timer = self.reactor.callLater(max(0.0, when - now), self._on_timer)
        self._timer_lags = lagging
        self._timer_at = when

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
