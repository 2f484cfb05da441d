"""Tests for wcsgw.media.worker: a real thread, driven deterministically.

The fake reactor is a `Clock` whose ``callFromThread`` queues the call; the test runs queued calls itself (waiting
on the queue, never sleeping), so every callback runs on the test's thread in a known order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.media.worker import MediaInput, TranscodeWorker, WorkerPool

WAIT = 10.0  # seconds a test waits for the worker thread before failing
_names = itertools.count()


class ThreadedFakeReactor(Clock):
    """A Clock with a callFromThread that queues calls for the test to run."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_thread.put((f, args))

    def run_next(self) -> None:
        f, args = self.from_thread.get(timeout=WAIT)
        f(*args)


class EchoTranscoder:
    """Returns ``[f"{data}-out"]`` (data decoded); ``b"boom"`` raises; can hold the worker on a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.started = threading.Event()
        self.flushed = 0

    def feed(self, data: bytes, timestamp_ms: float) -> list[str]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        if data == b"boom":
            raise ZeroDivisionError("boom")
        return [f"{data.decode()}-out"]

    def flush(self) -> list[str]:
        self.flushed += 1
        return ["flushed"]


def worker_threads(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


class WorkerTestMixin(SynchronousTestCase):
    def make(self, transcoder: Any, **kwargs: Any) -> tuple[TranscodeWorker[Any], ThreadedFakeReactor, list[Any]]:
        reactor = ThreadedFakeReactor()
        results: list[Any] = []
        name = f"test-worker-{next(_names)}"
        worker: TranscodeWorker[Any] = TranscodeWorker(
            reactor, lambda: transcoder, results.append, name=name, **kwargs
        )
        self.addCleanup(self.ensure_stopped, worker, reactor)
        return worker, reactor, results

    def stop_and_wait(self, worker: TranscodeWorker[Any], reactor: ThreadedFakeReactor) -> None:
        """Stop the worker and run the reactor side until the stop Deferred fires."""
        fired: list[object] = []
        worker.stop().addCallback(fired.append)
        for _ in range(10_000):
            if fired:
                return
            if not reactor.from_thread.empty() or not reactor.getDelayedCalls():
                reactor.run_next()
            else:
                # The worker said it finished and the reactor side is polling for the thread's end.
                for thread in worker_threads(worker.name):
                    thread.join(WAIT)
                reactor.advance(0.01)
        self.fail("stop never fired")

    def ensure_stopped(self, worker: TranscodeWorker[Any], reactor: ThreadedFakeReactor) -> None:
        if worker.is_alive:
            self.stop_and_wait(worker, reactor)


class OrderingTests(WorkerTestMixin):
    def test_results_in_order_then_flush(self) -> None:
        """Results reach the callback in submission order, the flush results last."""
        transcoder = EchoTranscoder()
        worker, reactor, results = self.make(transcoder, max_queue=200)
        for i in range(100):
            self.assertTrue(worker.submit(MediaInput(f"item{i}".encode(), i * 20.0)))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(results, [f"item{i}-out" for i in range(100)] + ["flushed"])
        self.assertEqual(transcoder.flushed, 1)
        self.assertEqual(worker.counters.processed, 100)
        self.assertEqual(worker.counters.results, 101)
        self.assertEqual(worker.counters.dropped, 0)

    def test_with_audio_transcoder(self) -> None:
        """A real AudioTranscoder in a worker delivers AAC frames in order with growing timestamps."""
        from wcsgw.media.transcoder import AudioTranscoder

        reactor = ThreadedFakeReactor()
        results: list[Any] = []
        name = f"test-worker-{next(_names)}"
        worker: TranscodeWorker[Any] = TranscodeWorker(
            reactor, lambda: AudioTranscoder("PCMU", 8000, 1), results.append, name=name, max_queue=100
        )
        self.addCleanup(self.ensure_stopped, worker, reactor)
        for i in range(50):  # one second of mu-law silence
            worker.submit(MediaInput(b"\xff" * 160, i * 20.0))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(worker.counters.errors, 0)
        stamps = [result.timestamp_ms for result in results]
        self.assertEqual(stamps, sorted(stamps))
        self.assertEqual({result.codec for result in results}, {"aac"})
        self.assertEqual(len(results), 1 + 8000 * 44100 // 8000 // 1024 + 1)


class BoundedQueueTests(WorkerTestMixin):
    def test_full_queue_drops_and_counts(self) -> None:
        """With the worker busy and max_queue items waiting, submit returns False and counts the drop."""
        gate = threading.Event()
        transcoder = EchoTranscoder(gate)
        worker, reactor, results = self.make(transcoder, max_queue=3)
        self.assertTrue(worker.submit(MediaInput(b"a0", 0.0)))
        self.assertTrue(transcoder.started.wait(WAIT))  # the worker holds a0
        accepted = [worker.submit(MediaInput(f"a{i}".encode(), i * 20.0)) for i in range(1, 11)]
        self.assertEqual(accepted, [True] * 3 + [False] * 7)
        self.assertEqual(worker.queue_depth, 3)
        self.assertEqual(worker.counters.dropped, 7)
        self.assertEqual(worker.counters.max_depth, 3)
        gate.set()
        self.stop_and_wait(worker, reactor)
        self.assertEqual(results, ["a0-out", "a1-out", "a2-out", "a3-out", "flushed"])
        self.assertEqual(worker.queue_depth, 0)

    def test_video_drops_until_keyframe(self) -> None:
        """A keyframe-gated worker, after a drop, refuses items until a key frame and asks for one once."""
        gate = threading.Event()
        transcoder = EchoTranscoder(gate)
        asked: list[bool] = []
        worker, reactor, results = self.make(
            transcoder, max_queue=2, keyframe_gated=True, on_keyframe_needed=lambda: asked.append(True)
        )
        worker.submit(MediaInput(b"k0", 0.0, keyframe=True))
        self.assertTrue(transcoder.started.wait(WAIT))
        accepted = [worker.submit(MediaInput(f"p{i}".encode(), i * 33.0)) for i in (1, 2, 3)]
        self.assertEqual(accepted, [True, True, False])
        self.assertTrue(worker.waiting_for_keyframe)
        self.assertEqual(asked, [True])
        gate.set()
        for _ in range(3):  # k0, p1, p2 delivered: the queue is empty again
            reactor.run_next()
        self.assertFalse(worker.submit(MediaInput(b"p4", 132.0)))
        self.assertTrue(worker.submit(MediaInput(b"k5", 165.0, keyframe=True)))
        self.assertTrue(worker.submit(MediaInput(b"p6", 198.0)))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(results, ["k0-out", "p1-out", "p2-out", "k5-out", "p6-out", "flushed"])
        self.assertEqual(worker.counters.dropped, 2)
        self.assertEqual(asked, [True])


class StopTests(WorkerTestMixin):
    def test_stop_joins_thread(self) -> None:
        """After stop's Deferred fires the worker thread is gone from threading.enumerate()."""
        worker, reactor, _ = self.make(EchoTranscoder())
        self.assertEqual(len(worker_threads(worker.name)), 1)
        self.stop_and_wait(worker, reactor)
        self.assertEqual(worker_threads(worker.name), [])
        self.assertFalse(worker.is_alive)

    def test_submit_after_stop_is_dropped(self) -> None:
        """Items submitted after stop are refused and counted."""
        worker, reactor, results = self.make(EchoTranscoder())
        self.stop_and_wait(worker, reactor)
        self.assertFalse(worker.submit(MediaInput(b"late", 0.0)))
        self.assertEqual(worker.counters.dropped, 1)
        self.assertEqual(results, ["flushed"])

    def test_stop_twice(self) -> None:
        """A second stop returns a Deferred that fires too, and the transcoder is flushed once."""
        transcoder = EchoTranscoder()
        worker, reactor, _ = self.make(transcoder)
        second: list[object] = []
        worker.stop().addCallback(second.append)
        self.stop_and_wait(worker, reactor)
        self.assertEqual(second, [None])
        self.assertEqual(transcoder.flushed, 1)

    def test_stop_timeout_fires_anyway(self) -> None:
        """With a timeout, stop fires even if the transcoder is stuck, and logs it."""
        gate = threading.Event()
        transcoder = EchoTranscoder(gate)
        worker, reactor, _ = self.make(transcoder)
        worker.submit(MediaInput(b"stuck", 0.0))
        self.assertTrue(transcoder.started.wait(WAIT))
        fired: list[object] = []
        worker.stop(timeout=5.0).addCallback(fired.append)
        reactor.advance(5.0)
        self.assertEqual(fired, [None])
        self.assertTrue(worker.is_alive)
        gate.set()
        for thread in worker_threads(worker.name):
            thread.join(WAIT)
        self.assertEqual(worker_threads(worker.name), [])


class ErrorTests(WorkerTestMixin):
    def test_transcoder_exception_counted_thread_survives(self) -> None:
        """An exception in feed is logged and counted; later items are still processed."""
        worker, reactor, results = self.make(EchoTranscoder())
        for data in (b"a", b"boom", b"b"):
            worker.submit(MediaInput(data, 0.0))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(results, ["a-out", "b-out", "flushed"])
        self.assertEqual(worker.counters.errors, 1)
        self.assertEqual(worker.counters.processed, 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_factory_failure(self) -> None:
        """If the transcoder cannot be made, the error is counted, items are discarded, and stop works."""

        def broken() -> EchoTranscoder:
            raise RuntimeError("no codec")

        reactor = ThreadedFakeReactor()
        name = f"test-worker-{next(_names)}"
        worker: TranscodeWorker[Any] = TranscodeWorker(reactor, broken, lambda result: None, name=name)
        worker.submit(MediaInput(b"x", 0.0))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(worker.counters.errors, 1)
        self.assertEqual(worker.counters.discarded, 1)
        self.assertEqual(worker_threads(name), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_callback_exception_counted(self) -> None:
        """A callback that raises is logged and counted; the following results are still delivered."""
        reactor = ThreadedFakeReactor()
        seen: list[str] = []

        def callback(result: str) -> None:
            seen.append(result)
            if result == "a-out":
                raise ValueError("bad consumer")

        name = f"test-worker-{next(_names)}"
        worker: TranscodeWorker[Any] = TranscodeWorker(reactor, EchoTranscoder, callback, name=name)
        worker.submit(MediaInput(b"a", 0.0))
        worker.submit(MediaInput(b"b", 0.0))
        self.stop_and_wait(worker, reactor)
        self.assertEqual(seen, ["a-out", "b-out", "flushed"])
        self.assertEqual(worker.counters.callback_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_bad_max_queue(self) -> None:
        """max_queue below 1 is refused before any thread starts."""
        with self.assertRaises(ValueError) as caught:
            TranscodeWorker(ThreadedFakeReactor(), EchoTranscoder, print, max_queue=0)
        self.assertEqual(str(caught.exception), "max_queue must be at least 1, not 0")


class PoolTests(SynchronousTestCase):
    def run_until(self, reactor: ThreadedFakeReactor, done: Callable[[], bool]) -> None:
        for _ in range(10_000):
            if done():
                return
            if not reactor.from_thread.empty() or not reactor.getDelayedCalls():
                reactor.run_next()
            else:
                reactor.advance(0.01)
                threading.Event().wait(0.001)  # let the pool threads run between reactor polls
        self.fail("condition never reached")

    def test_lanes_share_threads_and_keep_their_order(self) -> None:
        """Ten lanes on a pool of two threads: two threads in all, each lane's results in its own order; a lane's
        stop flushes it only; the pool's stop joins its threads."""
        reactor = ThreadedFakeReactor()
        name = f"test-pool-{next(_names)}"
        pool = WorkerPool(reactor, 2, name=name)
        results: dict[int, list[str]] = {n: [] for n in range(10)}
        lanes = [TranscodeWorker(reactor, EchoTranscoder, results[n].append, pool=pool, name=f"lane{n}",
                                 max_queue=100) for n in range(10)]
        self.assertEqual(len([t for t in threading.enumerate() if t.name.startswith(name)]), 2)
        for i in range(20):
            for n, lane in enumerate(lanes):
                self.assertTrue(lane.submit(MediaInput(f"{n}.{i}".encode(), float(i))))
        self.run_until(reactor, lambda: all(len(r) == 20 for r in results.values()))
        for n in range(10):
            self.assertEqual(results[n], [f"{n}.{i}-out" for i in range(20)])
        stopped: list[object] = []
        lanes[0].stop().addCallback(stopped.append)
        self.run_until(reactor, lambda: bool(stopped))
        self.assertEqual(results[0][-1], "flushed")
        self.assertEqual(results[1][-1], "1.19-out")
        self.assertTrue(pool.is_alive())
        for lane in lanes[1:]:
            lane.stop()
        pool_stopped: list[object] = []
        pool.stop().addCallback(pool_stopped.append)
        self.run_until(reactor, lambda: bool(pool_stopped))
        self.assertEqual([t for t in threading.enumerate() if t.name.startswith(name)], [])
        self.assertTrue(all(r[-1] == "flushed" for r in results.values()))


    def test_thread_start_runs_first_in_each_thread(self) -> None:
        """``thread_start`` runs once in each pool thread, before its first item; an exception from it is
        logged and counted, and the thread works on."""
        reactor = ThreadedFakeReactor()
        name = f"test-pool-{next(_names)}"
        started: list[str] = []
        lock = threading.Lock()

        def thread_start() -> None:
            with lock:
                started.append(threading.current_thread().name)
                first = len(started) == 1
            if first:
                raise RuntimeError("cannot raise this thread")

        pool = WorkerPool(reactor, 2, name=name, thread_start=thread_start)
        results: dict[int, list[str]] = {n: [] for n in range(2)}
        lanes = [TranscodeWorker(reactor, EchoTranscoder, results[n].append, pool=pool, name=f"lane{n}")
                 for n in range(2)]
        for n, lane in enumerate(lanes):
            self.assertTrue(lane.submit(MediaInput(f"{n}".encode(), 0.0)))
        self.run_until(reactor, lambda: all(results.values()))
        self.assertEqual(sorted(started), [f"{name}-0", f"{name}-1"])
        self.assertEqual(pool.thread_start_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(results, {0: ["0-out"], 1: ["1-out"]})
        for lane in lanes:
            lane.stop()
        stopped: list[object] = []
        pool.stop().addCallback(stopped.append)
        self.run_until(reactor, lambda: bool(stopped))

class BatchTests(SynchronousTestCase):
    run_until = PoolTests.run_until
    def test_items_wait_for_the_batch_and_results_come_back_together(self) -> None:
        """With batch_interval, items reach the thread only when the interval is over, all at once, and their
        results come back to the reactor in one call; each lane keeps its order."""
        reactor = ThreadedFakeReactor()
        name = f"test-pool-{next(_names)}"
        pool = WorkerPool(reactor, 1, name=name, batch_interval=0.02)
        transcoders = [EchoTranscoder(), EchoTranscoder()]
        results: dict[int, list[str]] = {0: [], 1: []}
        lanes = [TranscodeWorker(reactor, lambda n=n: transcoders[n], results[n].append, pool=pool,
                                 name=f"lane{n}", max_queue=100) for n in range(2)]
        for i in range(5):
            for n, lane in enumerate(lanes):
                self.assertTrue(lane.submit(MediaInput(f"{n}.{i}".encode(), float(i))))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)  # one timer for the pool, not one per item
        self.assertFalse(transcoders[0].started.wait(0.05))  # nothing reached the thread yet
        self.assertEqual(pool.batches, 0)
        reactor.advance(0.02)
        self.assertEqual(pool.batches, 1)
        f, args = reactor.from_thread.get(timeout=WAIT)  # the whole batch's results, in one call
        f(*args)
        self.assertEqual(results, {n: [f"{n}.{i}-out" for i in range(5)] for n in range(2)})
        self.assertTrue(reactor.from_thread.empty())
        # a lane's stop is handed over with the next batch; the pool's stop hands over what is pending
        self.assertTrue(lanes[0].submit(MediaInput(b"0.5", 5.0)))
        lanes[0].stop()
        lanes[1].stop()
        pool_stopped: list[object] = []
        pool.stop().addCallback(pool_stopped.append)
        self.run_until(reactor, lambda: bool(pool_stopped))
        self.assertEqual(results[0][-2:], ["0.5-out", "flushed"])
        self.assertEqual(results[1][-1], "flushed")
        self.assertEqual(pool.batches, 2)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_hand_over_now_gives_the_batch_without_its_timer(self) -> None:
        """``hand_over_now`` hands the waiting items over at once and cancels the batch's timer (the media drains
        call it at their end); with nothing waiting it does nothing."""
        reactor = ThreadedFakeReactor()
        pool = WorkerPool(reactor, 1, name=f"test-pool-{next(_names)}", batch_interval=0.02)
        pool.hand_over_now()
        self.assertEqual(pool.batches, 0)
        results: list[str] = []
        lane = TranscodeWorker(reactor, EchoTranscoder, results.append, pool=pool, name="lane", max_queue=100)
        for i in range(3):
            self.assertTrue(lane.submit(MediaInput(f"{i}".encode(), float(i))))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        pool.hand_over_now()
        self.assertEqual((pool.batches, reactor.getDelayedCalls()), (1, []))
        f, args = reactor.from_thread.get(timeout=WAIT)  # the three items' results, in one call
        f(*args)
        self.assertEqual(results, ["0-out", "1-out", "2-out"])
        pool.hand_over_now()
        self.assertEqual(pool.batches, 1)
        lane.stop()
        stopped: list[object] = []
        pool.stop().addCallback(stopped.append)
        self.run_until(reactor, lambda: bool(stopped))

    def test_negative_interval_refused(self) -> None:
        self.assertRaises(ValueError, WorkerPool, ThreadedFakeReactor(), 1, batch_interval=-1.0)


class CollectTests(SynchronousTestCase):
    run_until = PoolTests.run_until

    def setUp(self) -> None:
        self.reactor = ThreadedFakeReactor()
        self.pool = WorkerPool(self.reactor, 1, name=f"test-pool-{next(_names)}", batch_interval=0.02)
        self.results: dict[str, list[str]] = {"audio": [], "video": []}
        self.audio = TranscodeWorker(self.reactor, EchoTranscoder, self.results["audio"].append, pool=self.pool,
                                     name="audio", max_queue=100)
        self.video = TranscodeWorker(self.reactor, EchoTranscoder, self.results["video"].append, pool=self.pool,
                                     name="video", max_queue=100, prompt=True)
        self.addCleanup(self.stop)

    def stop(self) -> None:
        self.audio.stop()
        self.video.stop()
        stopped: list[object] = []
        self.pool.stop().addCallback(stopped.append)
        self.run_until(self.reactor, lambda: bool(stopped))

    def batch(self, lane: TranscodeWorker[Any], *items: str) -> None:
        for item in items:
            self.assertTrue(lane.submit(MediaInput(item.encode(), 0.0)))
        self.pool.hand_over_now()

    def wait_waited(self, batches: int) -> None:
        """Until ``batches`` batches' results wait for the reactor (the thread's work is its own)."""
        done = threading.Event()
        for _ in range(int(WAIT * 1000)):
            if self.pool.results_waited >= batches:
                return
            done.wait(0.001)
        self.fail("the results never waited")

    def test_results_wait_for_the_reactor_while_collected(self) -> None:
        """While the pool collects results, a batch's results do not wake the reactor (no ``callFromThread``):
        they wait for ``deliver_collected``, which hands them over in order, once."""
        self.pool.collect_results(True)
        self.batch(self.audio, "a1", "a2")
        self.wait_waited(1)
        self.batch(self.audio, "a3")
        self.wait_waited(2)
        self.assertTrue(self.reactor.from_thread.empty())
        self.assertEqual(self.results["audio"], [])
        self.pool.deliver_collected()
        self.assertEqual(self.results["audio"], ["a1-out", "a2-out", "a3-out"])
        self.pool.deliver_collected()
        self.assertEqual(len(self.results["audio"]), 3)
        self.assertTrue(self.reactor.from_thread.empty())

    def test_a_prompt_lane_goes_at_once_and_takes_what_waited_along(self) -> None:
        """A batch with a prompt lane's results (video) wakes the reactor at once, and carries the results that
        waited before it in front of its own, so that each lane's stay in order."""
        self.pool.collect_results(True)
        self.batch(self.audio, "a1")
        self.wait_waited(1)
        self.assertTrue(self.video.submit(MediaInput(b"v1", 0.0)))
        self.batch(self.audio, "a2")
        self.reactor.run_next()  # one call: everything
        self.assertEqual(self.results, {"audio": ["a1-out", "a2-out"], "video": ["v1-out"]})
        self.assertEqual(self.pool.results_waited, 1)
        self.pool.deliver_collected()
        self.assertEqual(self.results["audio"], ["a1-out", "a2-out"])

    def test_results_go_at_once_when_not_collected_and_what_waited_follows_the_switch(self) -> None:
        """Without collection (the default) results come by ``callFromThread``; switching collection off hands
        what waited to the reactor's next turn."""
        self.batch(self.audio, "a1")
        self.reactor.run_next()
        self.assertEqual(self.results["audio"], ["a1-out"])
        self.pool.collect_results(True)
        self.batch(self.audio, "a2")
        self.wait_waited(1)
        self.pool.collect_results(False)
        self.assertEqual(self.results["audio"], ["a1-out"])
        self.reactor.advance(0)
        self.assertEqual(self.results["audio"], ["a1-out", "a2-out"])
        self.batch(self.audio, "a3")
        self.reactor.run_next()
        self.assertEqual(self.results["audio"], ["a1-out", "a2-out", "a3-out"])

    def test_the_pools_stop_does_not_wait_for_a_drain(self) -> None:
        """The pool's stop ends collection: the lanes' flushes and ends come back without ``deliver_collected``
        (the drains may have stopped first)."""
        self.pool.collect_results(True)
        self.batch(self.audio, "a1")
        self.wait_waited(1)
        self.stop()  # run_until never calls deliver_collected
        self.assertEqual(self.results["audio"], ["a1-out", "flushed"])
        self.assertEqual(self.results["video"], ["flushed"])


class GateTests(SynchronousTestCase):
    run_until = PoolTests.run_until

    def test_no_item_starts_while_the_gate_is_held(self) -> None:
        """While the reactor holds the pool's gate an item waits before it starts (counted), and starts once the
        gate is let go; with the gate free items do not wait."""
        reactor = ThreadedFakeReactor()
        gate = threading.Lock()
        pool = WorkerPool(reactor, 1, name=f"test-pool-{next(_names)}", gate=gate)
        transcoder = EchoTranscoder()
        results: list[str] = []
        lane = TranscodeWorker(reactor, lambda: transcoder, results.append, pool=pool, name="gated")
        with gate:
            self.assertTrue(lane.submit(MediaInput(b"a", 0.0)))
            for _ in range(int(WAIT * 1000)):
                if pool.gate_waits:
                    break
                threading.Event().wait(0.001)
            self.assertEqual(pool.gate_waits, 1)
            self.assertFalse(transcoder.started.wait(0.05))
        self.run_until(reactor, lambda: results == ["a-out"])
        self.assertTrue(lane.submit(MediaInput(b"b", 1.0)))
        self.run_until(reactor, lambda: results == ["a-out", "b-out"])
        self.assertEqual(pool.gate_waits, 1)
        self.assertEqual(pool.gate_skips, 0)
        lane.stop()
        stopped: list[object] = []
        pool.stop().addCallback(stopped.append)
        self.run_until(reactor, lambda: bool(stopped))
        self.assertEqual(results[-1], "flushed")

    def test_a_lane_that_falls_behind_goes_past_the_gate(self) -> None:
        """While the gate is held an item waits as long as few items of its lane wait (itself included); with
        ``gate_backlog`` of them it goes ahead (counted); every result comes back in order."""
        reactor = ThreadedFakeReactor()
        gate = threading.Lock()
        pool = WorkerPool(reactor, 1, name=f"test-pool-{next(_names)}", gate=gate, batch_interval=0.02)
        self.assertEqual(pool.gate_backlog, 3)
        results: list[str] = []
        lane = TranscodeWorker(reactor, EchoTranscoder, results.append, pool=pool, name="behind", max_queue=100)
        with gate:
            for n in range(2):
                self.assertTrue(lane.submit(MediaInput(b"%d" % n, float(n))))
            reactor.advance(0.02)  # one batch of two
            for _ in range(int(WAIT * 1000)):
                if pool.gate_waits:
                    break
                threading.Event().wait(0.001)
            self.assertEqual((pool.gate_waits, pool.gate_skips, results), (1, 0, []))
            self.assertTrue(lane.submit(MediaInput(b"2", 2.0)))  # three waiting: the first goes ahead
            for _ in range(int(WAIT * 1000)):  # ... and the second, two waiting, waits at the gate
                if pool.gate_waits == 2:
                    break
                threading.Event().wait(0.001)
            self.assertEqual((pool.gate_waits, pool.gate_skips), (2, 1))
        reactor.advance(0.02)
        self.run_until(reactor, lambda: len(results) == 3)
        self.assertEqual(results, ["0-out", "1-out", "2-out"])
        self.assertEqual((pool.gate_waits, pool.gate_skips), (2, 1))
        lane.stop()
        stopped: list[object] = []
        pool.stop().addCallback(stopped.append)
        self.run_until(reactor, lambda: bool(stopped))
