"""The Twisted adapter of the SIP user agent and the entry point of the call manager.

:class:`SipUserAgent` owns one UDP socket and one ``DelayedCall``; everything else happens in the sans-I/O
:class:`~wcsgw.sip.core.UserAgentCore`. Host names (domain, outbound proxy, Contact and Record-Route hosts) are
resolved with ``reactor.resolve`` (no blocking, no SRV) and cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from wcsgw.model import CallStatus, EndInfo

from .core import Datagram, UserAgentCore
from .interfaces import CallListener, CallStateError, Destination, OutgoingCall
from .leg import CallLeg
from .transaction import TimerConfig

__all__ = ["OutgoingCall", "CallListener", "CallStateError", "CallHandle", "SipUserAgent"]

log = Logger(namespace="wcsgw.sip")


class CallHandle:
    """The call manager's grip on one call."""

    def __init__(self, agent: SipUserAgent, leg: CallLeg) -> None:
        self._agent = agent
        self._leg = leg

    def __repr__(self) -> str:
        return f"<CallHandle {self._leg.call_id} {self._leg.status.value}>"

    @property
    def call_id(self) -> str:
        return self._leg.call_id

    @property
    def status(self) -> CallStatus:
        return self._leg.status

    @property
    def sip_status(self) -> int | None:
        return self._leg.sip_status

    @property
    def ended(self) -> bool:
        return self._leg.ended

    @property
    def local_sdp(self) -> str:
        """Our current SDP (the offer, or our last answer to a far-end re-offer)."""
        return self._leg.local_sdp

    @property
    def remote_sdp(self) -> str | None:
        """The far end's current SDP."""
        return self._leg.remote_sdp

    def hangup(self, status: CallStatus = CallStatus.FINISH, info: EndInfo = EndInfo.TERMINATED_BY_REQUEST) -> None:
        """End the call (CANCEL or BYE as appropriate). ``call_ended(status, ..., info)`` is reported at once;
        e.g. ``hangup(CallStatus.FAILED, EndInfo.NO_COMMON_CODECS)`` when the media plane cannot use the answer."""
        self._agent._run(lambda now: self._agent.core.hangup(self._leg, now, status, info))

    def send_info(self, content_type: str, body: bytes) -> Deferred[int]:
        """Send a SIP INFO in the dialog; fires with the final status code (408 on timeout).

        Fails with :class:`CallStateError` when the call is not established.
        """
        result: Deferred[int] = Deferred()
        try:
            self._agent._run(
                lambda now: self._agent.core.send_info(self._leg, content_type, body, result.callback, now)
            )
        except CallStateError as exc:
            return fail(exc)
        return result


class _SipDatagramProtocol(DatagramProtocol):
    def __init__(self, agent: SipUserAgent) -> None:
        self._agent = agent

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:  # noqa: N802 - Twisted override
        try:
            self._agent._datagram_received(datagram, (addr[0], addr[1]))
        except Exception:
            log.failure("SIP datagram from {addr} not processed", addr=addr)


class SipUserAgent(Service):
    """One UDP SIP user agent placing outgoing calls.

    ``public_address`` (and ``public_port``, by default the bound port) go into Via, Contact and SDP-independent
    headers. ``stop()`` hangs up every live call (GATEWAY_SHUTDOWN) and waits up to ``stop_timeout`` seconds for the
    CANCEL/BYE/REGISTER exchanges before closing the socket.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        bind_address: str = "0.0.0.0",
        port: int = 5060,
        public_address: str,
        public_port: int | None = None,
        user_agent: str = "wcsgw/0.1",
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        timer_d: float = 32.0,
        max_message_size: int = 65535,
        register_expires: int = 3600,
        stop_timeout: float = 2.0,
        dns_cache_ttl: float = 300.0,
        core: UserAgentCore | None = None,
    ) -> None:
        self._reactor = reactor
        self.bind_address = bind_address
        self.requested_port = port
        self.public_port = public_port
        self.stop_timeout = stop_timeout
        self.dns_cache_ttl = dns_cache_ttl
        self.core = core or UserAgentCore(
            host=public_address,
            port=public_port or port,
            user_agent=user_agent,
            timers=TimerConfig(t1=t1, t2=t2, t4=t4, timer_d=timer_d),
            max_message_size=max_message_size,
            register_expires=register_expires,
            log=log,
        )
        self._port: Any = None  # the IListeningPort of listenUDP
        self._timer: Any = None  # the one IDelayedCall
        self._dns: dict[str, tuple[str, float]] = {}
        self._resolving: dict[str, list[Datagram]] = {}
        self._stopping = False
        self._stop_waiters: list[Deferred[None]] = []
        self._stop_guard: Any = None

    # -- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def counters(self) -> Mapping[str, int]:
        """received, sent, retransmissions, malformed, oversized, dropped, keepalives, errors, calls, ..."""
        return self.core.counters

    @property
    def port(self) -> int:
        """The bound UDP port (useful with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("SipUserAgent is not started")
        return int(self._port.getHost().port)

    def start(self) -> None:
        """Bind the UDP socket."""
        if self._port is not None:
            return
        size = min(self.core.max_message_size + 1, 65536)
        self._port = self._reactor.listenUDP(
            self.requested_port, _SipDatagramProtocol(self), interface=self.bind_address, maxPacketSize=size
        )
        if self.public_port is None:
            self.core.port = self.port
        log.info("SIP user agent on {address}:{port}", address=self.bind_address, port=self.port)

    def stop(self) -> Deferred[None]:
        """Hang up every call, wait briefly for the answers, close the socket."""
        if self._port is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        if not self._stopping:
            self._stopping = True
            self._stop_guard = self._reactor.callLater(self.stop_timeout, self._close)
            self._run(self.core.shutdown)
        return waiter

    def startService(self) -> None:  # noqa: N802 - Twisted override
        super().startService()  # type: ignore[no-untyped-call]
        self.start()

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted override
        super().stopService()  # type: ignore[no-untyped-call]
        return self.stop()

    def _check_stopped(self) -> None:
        if self._stopping and self._port is not None and not self.core.busy:
            self._close()

    def _close(self) -> None:
        if self._stop_guard is not None and self._stop_guard.active():
            self._stop_guard.cancel()
        self._stop_guard = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        port, self._port = self._port, None
        self._stopping = False
        if port is None:
            return
        if self.core.busy:
            log.warn("SIP user agent stopped with signalling still in flight")
        waiters, self._stop_waiters = self._stop_waiters, []

        def closed(_: object) -> None:
            for waiter in waiters:
                waiter.callback(None)

        result = port.stopListening()
        if isinstance(result, Deferred):
            result.addBoth(closed)
        else:
            closed(None)

    # -- calls ----------------------------------------------------------------------------------------------------

    def place_call(self, call: OutgoingCall, offer_sdp: str, listener: CallListener) -> CallHandle:
        """Place ``call`` with our SDP offer; progress goes to ``listener``.

        ``ValueError`` when a live call has the same Call-ID; ``RuntimeError`` when not started or stopping.
        """
        if self._port is None or self._stopping:
            raise RuntimeError("SipUserAgent is not running")
        leg: list[CallLeg] = []
        self._run(lambda now: leg.append(self.core.place_call(call, offer_sdp, listener, now)))
        return CallHandle(self, leg[0])

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _run(self, action: Any) -> None:
        """Run ``action(now)`` on the core, then send what it produced and re-arm the timer."""
        try:
            action(self._reactor.seconds())
        finally:
            self._after()

    def _datagram_received(self, data: bytes, source: Destination) -> None:
        if self._port is None:
            return
        self._run(lambda now: self.core.receive_datagram(data, source, now))

    def _on_timer(self) -> None:
        self._timer = None
        self._run(self.core.handle_timers)

    def _after(self) -> None:
        while datagrams := self.core.take_datagrams():
            for datagram in datagrams:
                self._send(datagram)
        self._arm()
        self._check_stopped()

    def _arm(self) -> None:
        if self._port is None:
            return
        deadline = self.core.next_deadline()
        if deadline is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, deadline - self._reactor.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._reactor.callLater(delay, self._on_timer)

    def _send(self, datagram: Datagram) -> None:
        host, port = datagram.destination
        if isIPAddress(host) or isIPv6Address(host):
            self._write(datagram, (host, port))
            return
        cached = self._dns.get(host.lower())
        if cached is not None and cached[1] > self._reactor.seconds():
            self._write(datagram, (cached[0], port))
            return
        waiting = self._resolving.setdefault(host.lower(), [])
        waiting.append(datagram)
        if len(waiting) == 1:
            resolving: Deferred[str] = self._reactor.resolve(host)
            name = host.lower()
            resolving.addCallbacks(self._resolved, self._resolve_failed, callbackArgs=(name,), errbackArgs=(name,))

    def _resolved(self, address: str, host: str) -> None:
        self._dns[host] = (address, self._reactor.seconds() + self.dns_cache_ttl)
        for datagram in self._resolving.pop(host, []):
            self._write(datagram, (address, datagram.destination[1]))
        self._after()

    def _resolve_failed(self, failure: Failure, host: str) -> None:
        log.warn("cannot resolve {host}: {error}", host=host, error=failure.getErrorMessage())
        destinations = {d.destination for d in self._resolving.pop(host, [])}

        def fail_all(now: float) -> None:
            for destination in destinations:
                self.core.transport_error(destination, now)

        self._run(fail_all)

    def _write(self, datagram: Datagram, address: tuple[str, int]) -> None:
        port = self._port
        if port is None:
            return
        try:
            port.write(datagram.data, address)
        except Exception as exc:
            log.warn("cannot send to {address}: {error}", address=address, error=str(exc))
            self.core.transport_error(datagram.destination, self._reactor.seconds())
