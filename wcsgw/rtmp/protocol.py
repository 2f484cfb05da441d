"""The Twisted adapter for :class:`~wcsgw.rtmp.session.RtmpClientSession`.

:class:`RtmpClientProtocol` only moves bytes between the transport and the session and passes
the session's events to a listener. It registers as a streaming producer: while the transport
asks it to pause (its own buffer is full), outgoing bytes stay queued in the session, where
:attr:`RtmpClientProtocol.buffered_bytes` measures them for the publisher's back-pressure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import thread_time
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

from wcsgw.media.worker import holding_if_free
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
        # what this reactor turn wrote (bytes, and views of media payloads), sent at its end (see _write)
        self._queued: list[bytes | memoryview] = []
        self._held: WriteBatch | None = None  # _queued is audio waiting in this batch for the next write
        self._video_seen = False

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
        self._queued = []
        if self._held is not None:
            self._held.release(self)
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

    def flush(self, force: bool = False, hold: bool = False) -> None:
        """Write what the session has queued, unless the transport asked us to pause; ``hold``: it may wait for
        the connection's next write (see ``send_tag``)."""
        session = self.session
        if session is None or self.transport is None or (self.paused and not force):
            return
        pieces, size = session.take_output()
        if size:
            self.bytes_written += size
            self._listener.rtmp_bytes_written(size)
            self._write(pieces, hold)

    def _write(self, pieces: list[bytes | memoryview], hold: bool = False) -> None:
        """Write ``pieces`` (bytes, and views of media payloads) after what was written before, at the end of this
        reactor turn.

        On a plain TCP connection the writes of a turn are joined and sent with one ``send`` when the turn's
        work is done (``_send_queued``), so the system calls of a turn come together after its Python work
        rather than between it: the kernel's loopback TCP path (nginx's receive included) otherwise runs in the
        middle of the next packet's Python code and evicts its caches.  ``hold``: unless something else is
        queued, the send waits for the next write that does not hold, ``WriteBatch.hold_max`` at most.  Other
        transports (TLS) get the data at once with ``transport.write``."""
        queued = self._queued
        if queued:
            queued += pieces
            if self._held is not None and not hold:
                batch = self._held
                batch.release(self)
                batch.add(self)
            return
        transport: Any = self.transport
        if not isinstance(transport, tcp.Connection):
            transport.write(b"".join(pieces))
            return
        queued += pieces
        if hold:
            write_batch(transport.reactor).hold(self)
        else:
            write_batch(transport.reactor).add(self)

    def _send_queued(self) -> None:
        """Send what ``_write`` queued: with one ``send`` when the transport holds nothing back, else through
        ``transport.write``.

        Twisted's write only buffers: the reactor's next turn registers the socket for writing (an epoll_ctl),
        sends, and unregisters it (another).  For a 7.5 KB video tag to a loopback sink that was 55 us of CPU
        against 27 us for a direct ``send``, measured here.  What the socket does not take goes to the transport
        as before, which then keeps the order and the back-pressure (``pauseProducing``)."""
        queued = self._queued
        if self._held is not None:
            self._held.release(self)
        if not queued:
            return
        data = queued[0] if len(queued) == 1 and type(queued[0]) is bytes else b"".join(queued)
        self._queued = []
        transport: Any = self.transport
        if transport is None:
            return
        sock = getattr(transport, "socket", None)
        if (sock is None or transport.dataBuffer or transport._tempDataBuffer or transport.disconnecting
                or not transport.connected):
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
        """Send ``tag``.  On a connection that carries video, an audio tag waits for the next write (the next
        video frame, at most ``WriteBatch.hold_max`` later) and goes out in the same ``send``: an AAC frame
        comes back from the transcoding thread in a reactor turn of its own, and would otherwise cost a
        ``send`` (and a wake-up of the server) by itself.  Its timestamp is in the tag: players do not see when
        it arrives."""
        assert self.session is not None
        self.session.send_tag(tag, timestamp_ms)
        if tag.tag_type == FlvTag.VIDEO:
            self._video_seen = True
            self.flush()
        else:
            self.flush(hold=self._video_seen and tag.tag_type == FlvTag.AUDIO)

    def close(self) -> None:
        """Unpublish if publishing, write everything and close the connection."""
        if self.session is not None:
            self.session.unpublish()
        self.flush(force=True)
        self._lose_connection()

    def abort(self) -> None:
        self._queued = []
        if self._held is not None:
            self._held.release(self)
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
            self._send_queued()
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


class WriteBatch:
    """The protocols with queued writes, sent together by one ``callLater(0)``: after the work of the reactor
    turn that queued them (a media drain, a batch of transcoded audio), before the reactor waits again.  A
    protocol whose queue holds only audio of a video connection (``hold``) waits for its next write, or
    ``hold_max`` at most (``RtmpClientProtocol.send_tag``)."""

    hold_max = 0.05  # seconds an audio write may wait for its connection's next write (see RtmpClientProtocol)

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._protocols: list[RtmpClientProtocol] = []
        self._call: Any = None
        self._held: dict[RtmpClientProtocol, None] = {}  # in the order they came
        self._hold_call: Any = None
        # held during the sends when it is free, as MediaSockets holds it during a drain: each send releases the
        # GIL, and a transcoding thread that starts work then takes it (see wcsgw.media.worker.WorkerPool)
        self.gate: threading.Lock | None = None
        self.batches = 0  # turns that sent
        self.sends = 0  # connections written to, one send each (unless the transport held data back)
        self.cpu = 0.0  # CPU seconds of the reactor thread in the sends
        self.held = 0  # audio writes that waited for their connection's next write
        self.held_alone = 0  # ... and went alone after hold_max

    def add(self, protocol: RtmpClientProtocol) -> None:
        self._protocols.append(protocol)
        if self._call is None or not self._call.active():  # (a test's reactor may have cancelled it)
            self._call = self._reactor.callLater(0, self.send)

    def hold(self, protocol: RtmpClientProtocol) -> None:
        """``protocol`` has only held writes queued: sent with its next write, or after ``hold_max``."""
        self.held += 1
        protocol._held = self
        self._held[protocol] = None
        if self._hold_call is None or not self._hold_call.active():
            self._hold_call = self._reactor.callLater(self.hold_max, self.send_held)

    def release(self, protocol: RtmpClientProtocol) -> None:
        """``protocol``'s held writes go another way (with a write that does not wait, or as it closes)."""
        protocol._held = None
        self._held.pop(protocol, None)
        if not self._held and self._hold_call is not None:
            if self._hold_call.active():
                self._hold_call.cancel()
            self._hold_call = None

    def send_held(self) -> None:
        """Send what still waits (``hold_max`` is up)."""
        self._hold_call = None
        waiting = list(self._held)
        self._held = {}
        for protocol in waiting:
            protocol._held = None
        if waiting:
            self.held_alone += len(waiting)
            self._send(waiting)

    def send(self) -> None:
        self._call = None
        protocols, self._protocols = self._protocols, []
        self._send(protocols)

    def send_now(self) -> None:
        """Send what waits for this turn's send at once, in place of that ``callLater(0)``: called at the end of
        a turn that queued writes (a media drain, ``MediaSockets.after_drain``), it spares the reactor a turn of
        its own for the send.  Held writes keep waiting."""
        if self._call is None:
            return
        if self._call.active():
            self._call.cancel()
        self.send()

    def _send(self, protocols: list[RtmpClientProtocol]) -> None:
        started = thread_time()
        self.batches += 1
        self.sends += len(protocols)
        with holding_if_free(self.gate):
            for protocol in protocols:
                try:
                    protocol._send_queued()
                except Exception:
                    _log.failure("RTMP write failed; closing the connection")
                    if protocol.transport is not None:
                        protocol.transport.abortConnection()
        self.cpu += thread_time() - started


_WRITE_BATCHES: dict[int, WriteBatch] = {}


def write_batch(reactor: Any) -> WriteBatch:
    """The ``WriteBatch`` of ``reactor`` (one per reactor; tests may run more than one); ``/metrics`` reads its
    counters."""
    key = id(reactor)
    found = _WRITE_BATCHES.get(key)
    if found is None or found._reactor is not reactor:
        found = _WRITE_BATCHES[key] = WriteBatch(reactor)
    return found


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
