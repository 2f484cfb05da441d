"""
CallApp status notifications: every change of a call's status or rtmpStreamStatus is POSTed as JSON to
``<callapp_url>/CallStatusEvent``, in order per call, without blocking the reactor.

Each call has its own bounded queue and at most one request in flight, so a slow or absent receiver delays only
that call's events and never the calls themselves.  A failed delivery (connection error, timeout, non-2xx answer)
is retried after each of ``retry_delays`` and then given up (logged and counted).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: ``post(url, body) -> Deferred[int]`` fires with the HTTP status code of the answer.
Poster = Callable[[str, bytes], "Deferred[int]"]


@dataclasses.dataclass
class NotifierStats:
    queued: int = 0
    delivered: int = 0
    retried: int = 0
    given_up: int = 0
    dropped: int = 0


@dataclasses.dataclass
class _CallQueue:
    waiting: collections.deque[bytes] = dataclasses.field(default_factory=collections.deque)
    current: bytes | None = None  # being sent, or waiting for its retry
    attempt: int = 0
    retry: IDelayedCall | None = None


class CallAppNotifier:
    """Delivers status events to the CallApp receiver; implements ``wcsgw.calls.EventSink``."""

    def __init__(
        self,
        reactor: IReactorTime,
        callapp_url: str,
        post: Poster,
        *,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
        queue_limit: int = 64,
    ) -> None:
        self._reactor = reactor
        self.url = callapp_url.rstrip("/") + "/CallStatusEvent"
        self._post = post
        self._retry_delays = tuple(retry_delays)
        self._queue_limit = queue_limit
        self._queues: dict[str, _CallQueue] = {}
        self._idle_waiters: list[Deferred[None]] = []
        self.stats = NotifierStats()

    def call_changed(self, call_id: str, event: dict[str, Any]) -> None:
        queue = self._queues.setdefault(call_id, _CallQueue())
        if len(queue.waiting) >= self._queue_limit:
            queue.waiting.popleft()
            self.stats.dropped += 1
            log.warn("CallApp: event queue of {call_id} is full; dropped its oldest waiting event", call_id=call_id)
        queue.waiting.append(json.dumps(event).encode("utf-8"))
        self.stats.queued += 1
        if queue.current is None:
            self._send_next(call_id, queue)

    def pending(self) -> int:
        """Events not yet delivered or given up, over all calls."""
        return sum(len(q.waiting) + (q.current is not None) for q in self._queues.values())

    def _send_next(self, call_id: str, queue: _CallQueue) -> None:
        if not queue.waiting:
            queue.current = None
            del self._queues[call_id]
            self._maybe_idle()
            return
        queue.current = queue.waiting.popleft()
        queue.attempt = 0
        self._attempt(call_id, queue)

    def _attempt(self, call_id: str, queue: _CallQueue) -> None:
        queue.retry = None
        assert queue.current is not None
        try:
            d = self._post(self.url, queue.current)
        except Exception:  # a poster that raises synchronously is treated like a failed request
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._answered, self._failed, callbackArgs=(call_id, queue), errbackArgs=(call_id, queue))

    def _answered(self, code: int, call_id: str, queue: _CallQueue) -> None:
        if 200 <= code < 300:
            self.stats.delivered += 1
            self._send_next(call_id, queue)
        else:
            self._retry_or_give_up(call_id, queue, f"HTTP {code}")

    def _failed(self, failure: Failure, call_id: str, queue: _CallQueue) -> None:
        self._retry_or_give_up(call_id, queue, failure.getErrorMessage() or failure.type.__name__)

    def _retry_or_give_up(self, call_id: str, queue: _CallQueue, reason: str) -> None:
        if queue.attempt < len(self._retry_delays):
            delay = self._retry_delays[queue.attempt]
            queue.attempt += 1
            self.stats.retried += 1
            log.info("CallApp {url} did not take an event of {call_id} ({reason}); retry in {delay}s",
                     url=self.url, call_id=call_id, reason=reason, delay=delay)
            queue.retry = self._reactor.callLater(delay, self._attempt, call_id, queue)
            return
        self.stats.given_up += 1
        log.warn("CallApp {url} unreachable: gave up an event of {call_id} ({reason})",
                 url=self.url, call_id=call_id, reason=reason)
        self._send_next(call_id, queue)

    def _maybe_idle(self) -> None:
        if not self._queues:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """Fires once every queued event has been delivered or given up."""
        if not self._queues:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def stop(self) -> None:
        """Cancel waiting retries and drop what is still queued (on shutdown)."""
        for queue in self._queues.values():
            if queue.retry is not None and queue.retry.active():
                queue.retry.cancel()
            queue.retry = None
        self._queues.clear()
        self._maybe_idle()


class TreqPoster:
    """A ``Poster`` on treq; the answer body is read and discarded.

    Each event gets its own connection: receivers that close connections after an answer (HTTP/1.0 servers, many
    frameworks) would otherwise make every other POST fail on a connection the pool still thought reusable.
    """

    def __init__(self, reactor: Any, *, timeout: float = 5.0) -> None:
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        self._treq = treq
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._client = treq.client.HTTPClient(Agent(reactor, pool=self._pool))
        self._timeout = timeout

    def __call__(self, url: str, body: bytes) -> Deferred[int]:
        d = self._client.post(url, data=body, headers={b"Content-Type": [b"application/json"]},
                              timeout=self._timeout)

        def read(response: Any) -> Deferred[int]:
            return self._treq.content(response).addCallback(lambda _: response.code)

        return d.addCallback(read)

    def close(self) -> Deferred[None]:
        """Close the pooled connections."""
        return self._pool.closeCachedConnections()
