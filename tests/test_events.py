"""Tests for wcsgw.events: ordered, bounded, retried CallApp delivery."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.events import CallAppNotifier


class FakePoster:
    """Records each POST and leaves its answer to the test."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, Deferred[int]]] = []

    def __call__(self, url: str, body: bytes) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.requests.append((url, json.loads(body), d))
        return d

    def answer(self, index: int, code: int = 200) -> None:
        self.requests[index][2].callback(code)

    def fail(self, index: int) -> None:
        self.requests[index][2].errback(ConnectionRefusedError())


class NotifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.poster = FakePoster()
        self.notifier = CallAppNotifier(self.clock, "http://localhost:9091/CallApp/", self.poster,
                                        retry_delays=(0.5, 1.0), queue_limit=3)

    def test_posts_to_call_status_event(self) -> None:
        """Events go to <callapp_url>/CallStatusEvent as JSON."""
        self.notifier.call_changed("a", {"callId": "a", "status": "NEW"})
        self.assertEqual(self.poster.requests[0][:2],
                         ("http://localhost:9091/CallApp/CallStatusEvent", {"callId": "a", "status": "NEW"}))

    def test_one_in_flight_per_call_in_order(self) -> None:
        """A call's events go one at a time, in order; another call's events are not held up."""
        self.notifier.call_changed("a", {"callId": "a", "n": 1})
        self.notifier.call_changed("a", {"callId": "a", "n": 2})
        self.notifier.call_changed("b", {"callId": "b", "n": 1})
        self.assertEqual([r[1] for r in self.poster.requests], [{"callId": "a", "n": 1}, {"callId": "b", "n": 1}])
        self.poster.answer(0)
        self.assertEqual(self.poster.requests[2][1], {"callId": "a", "n": 2})
        self.poster.answer(2)
        self.poster.answer(1)
        self.assertEqual(self.notifier.stats.delivered, 3)
        self.assertEqual(self.notifier.pending(), 0)

    def test_retry_with_backoff_then_in_order(self) -> None:
        """A refused connection is retried after each delay; later events wait behind it, in order."""
        self.notifier.call_changed("a", {"callId": "a", "n": 1})
        self.notifier.call_changed("a", {"callId": "a", "n": 2})
        self.poster.fail(0)
        self.assertEqual(len(self.poster.requests), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.poster.requests[1][1]["n"], 1)
        self.poster.answer(1, 503)
        self.clock.advance(0.9)
        self.assertEqual(len(self.poster.requests), 2)
        self.clock.advance(0.1)
        self.assertEqual(self.poster.requests[2][1]["n"], 1)
        self.poster.answer(2)
        self.assertEqual(self.poster.requests[3][1]["n"], 2)
        self.assertEqual((self.notifier.stats.retried, self.notifier.stats.delivered), (2, 1))

    def test_gives_up_after_the_last_delay(self) -> None:
        """After the last retry an event is given up (counted) and the next one is sent."""
        self.notifier.call_changed("a", {"callId": "a", "n": 1})
        self.notifier.call_changed("a", {"callId": "a", "n": 2})
        self.poster.fail(0)
        self.clock.advance(0.5)
        self.poster.fail(1)
        self.clock.advance(1.0)
        self.poster.fail(2)
        self.assertEqual(self.poster.requests[3][1]["n"], 2)
        self.assertEqual(self.notifier.stats.given_up, 1)

    def test_queue_is_bounded(self) -> None:
        """Beyond queue_limit waiting events the oldest waiting one is dropped (counted); the one in flight stays."""
        for n in range(6):
            self.notifier.call_changed("a", {"callId": "a", "n": n})
        self.assertEqual(self.notifier.stats.dropped, 2)
        self.assertEqual(self.notifier.pending(), 4)
        for index in range(4):
            self.poster.answer(index)
        self.assertEqual([r[1]["n"] for r in self.poster.requests], [0, 3, 4, 5])

    def test_poster_raising_is_a_failure(self) -> None:
        """A poster that raises at once is treated like a failed request, not an escaping exception."""
        def broken(url: str, body: bytes) -> Deferred[int]:
            raise ValueError("no route")

        notifier = CallAppNotifier(self.clock, "http://x/CallApp", broken, retry_delays=())
        notifier.call_changed("a", {"callId": "a"})
        self.assertEqual(notifier.stats.given_up, 1)

    def test_when_idle_and_stop(self) -> None:
        """when_idle fires once everything is delivered; stop cancels pending retries."""
        self.notifier.call_changed("a", {"callId": "a"})
        idle = self.notifier.when_idle()
        self.assertNoResult(idle)
        self.poster.fail(0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.notifier.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(idle)
