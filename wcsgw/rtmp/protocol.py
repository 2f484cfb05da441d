"""The Twisted adapter for :class:`~wcsgw.rtmp.session.RtmpClientSession`.

:class:`RtmpClientProtocol` only moves bytes between the transport and the session and passes
the session's events to a listener. It registers as a streaming producer: while the transport
asks it to pause (its own buffer is full), outgoing bytes stay queued in the session, where
:attr:`RtmpClientProtocol.buffered_bytes` measures them for the publisher's back-pressure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import ssl, tcp
from twisted.internet.interfaces import (
    IConnector,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wcsgw.rtmp.flv import FlvTag
from wcsgw.rtmp.session import Event, ProtocolError, RtmpClientSession
from wcsgw.rtmp.url import RtmpUrl

_log = Logger()


class RtmpListener(TypingProtocol):
    """What a protocol reports to (the publisher's per-attempt listener)."""

    def rtmp_connected(self, protocol: RtmpClientProtocol) -> None: ...

    def rtmp_event(self, protocol: RtmpClientProtocol, event: Event) -> None: ...

    def rtmp_connection_lost(self, protocol: RtmpClientProtocol, reason: str) -> None: ...

    def rtmp_connection_failed(self, reason: str) -> None: ...

    def rtmp_bytes_written(self, count: int) -> None: ...


@implementer(IPushProducer)
class RtmpClientProtocol(Protocol):
    """Moves bytes between a transport and a session; never raises from ``dataReceived``."""

    def __init__(self, session_factory: Callable[[], RtmpClientSession], listener: RtmpListener) -> None:
        self._session_factory = session_factory
        self._listener = listener
        self.session: RtmpClientSession | None = None
        self.paused = False
        self._producing = False
        self.bytes_written = 0
        self.received_errors = 0

    @property
    def buffered_bytes(self) -> int:
        """Outgoing bytes held back because the transport is full."""
        return self.session.pending_bytes if self.session is not None else 0

    # ------------------------------------------------------------------ Twisted callbacks

    def connectionMade(self) -> None:
        self.session = self._session_factory()
        assert self.transport is not None
        # Every write is a whole tag, written when it is due: Nagle's algorithm would only hold tags back
        # behind the server's delayed ACKs (up to 40 ms here).
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        self.transport.registerProducer(self, True)
        self._producing = True
        self._guarded(self._made)

    def _made(self) -> None:
        self.flush()
        self._listener.rtmp_connected(self)

    def dataReceived(self, data: bytes) -> None:
        self._guarded(self._received, data)

    def _received(self, data: bytes) -> None:
        assert self.session is not None
        self.session.receive_data(data)
        self.flush()
        self._deliver_events()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        text = reason.getErrorMessage() if reason is not None else "connection lost"
        if self.session is not None:
            self.session.connection_lost(text)
            self._guarded(self._deliver_events)
        self._guarded(self._listener.rtmp_connection_lost, self, text)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._guarded(self.flush)

    def stopProducing(self) -> None:
        self.paused = True

    # ------------------------------------------------------------------ used by the publisher

    def flush(self, force: bool = False) -> None:
        """Write what the session has queued, unless the transport asked us to pause."""
        if self.session is None or self.transport is None or (self.paused and not force):
            return
        data = self.session.data_to_send()
        if data:
            self.bytes_written += len(data)
            self._listener.rtmp_bytes_written(len(data))
            self._write(data)

    def _write(self, data: bytes) -> None:
        """``transport.write``, but on a plain TCP connection with nothing buffered, ``send`` at once.

        Twisted's write only buffers: the reactor's next turn registers the socket for writing (an epoll_ctl),
        sends, and unregisters it (another).  For a 7.5 KB video tag to a loopback sink that was 55 us of CPU
        against 27 us for a direct ``send``, measured here.  What the socket does not take goes to the transport
        as before, which then keeps the order and the back-pressure (``pauseProducing``)."""
        transport: Any = self.transport
        sock = getattr(transport, "socket", None)
        if (sock is None or not isinstance(transport, tcp.Connection) or transport.dataBuffer
                or transport._tempDataBuffer or transport.disconnecting or not transport.connected):
            transport.write(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # the transport finds the error on its own write and closes properly
            return
        if sent < len(data):
            transport.write(data[sent:])

    def send_tag(self, tag: FlvTag, timestamp_ms: int | None = None) -> None:
        assert self.session is not None
        self.session.send_tag(tag, timestamp_ms)
        self.flush()

    def close(self) -> None:
        """Unpublish if publishing, write everything and close the connection."""
        if self.session is not None:
            self.session.unpublish()
        self.flush(force=True)
        self._lose_connection()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    # ------------------------------------------------------------------ internals

    def _deliver_events(self) -> None:
        assert self.session is not None
        while (event := self.session.next_event()) is not None:
            if isinstance(event, ProtocolError):
                self.received_errors += 1
                _log.warn("RTMP protocol error from server: {message}", message=event.message)
                if event.fatal:
                    self._lose_connection()
            self._listener.rtmp_event(self, event)

    def _lose_connection(self) -> None:
        """Close after the pending writes. TLS transports wait for producers to be unregistered."""
        if self.transport is not None:
            if self._producing:
                self._producing = False
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _guarded(self, function: Callable[..., None], *args: object) -> None:
        try:
            function(*args)
        except Exception:
            _log.failure("unexpected error in the RTMP client; closing the connection")
            if self.transport is not None:
                self.transport.abortConnection()


class RtmpClientFactory(ClientFactory):
    """Builds one :class:`RtmpClientProtocol` for one connection attempt."""

    noisy = False

    def __init__(self, session_factory: Callable[[], RtmpClientSession], listener: RtmpListener) -> None:
        self._session_factory = session_factory
        self._listener = listener

    def buildProtocol(self, addr: object) -> RtmpClientProtocol:
        return RtmpClientProtocol(self._session_factory, self._listener)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._listener.rtmp_connection_failed(reason.getErrorMessage())


def connect_rtmp(
    reactor: Any,
    url: RtmpUrl,
    factory: RtmpClientFactory,
    timeout: float,
    tls_options: IOpenSSLClientConnectionCreator | None = None,
) -> IConnector:
    """Open a TCP connection, or TLS for ``rtmps`` (certificate checked against the host name).

    ``reactor`` provides ``IReactorTCP``, and ``IReactorSSL`` for ``rtmps``.
    """
    if url.tls:
        options = tls_options if tls_options is not None else ssl.optionsForClientTLS(url.host)
        connector: IConnector = reactor.connectSSL(url.host, url.port, factory, options, timeout=timeout)
        return connector
    connector = reactor.connectTCP(url.host, url.port, factory, timeout=timeout)
    return connector
