"""The one module that touches threads: transcoding lanes on a small pool of worker threads.

Each transcoded track of a call is a *lane* (`TranscodeWorker`): its own transcoder, its own bound and drop
policy (audio drops single items, video drops until the next keyframe), its items processed in order.  Lanes
share a `WorkerPool` of a few threads (as many as cores by default): a lane is pinned to one pool thread, so its
order holds, and the process has a handful of threads instead of one or two per call.  With 100 calls on 2 cores
a thread per track meant a hundred threads taking turns at the GIL for every 20 ms packet; a pool keeps the cores
busy with FFmpeg (PyAV releases the GIL inside it) and the GIL hand-overs few.  The codecs themselves are
single-threaded (``thread_count=1``, see `wcsgw.media.transcoder`).  A lane made without a pool gets a private
pool of one thread, stopped with it.  With a ``batch_interval`` the pool hands work to its threads, and results
back, in batches: fewer thread wake-ups, each of which costs here about what encoding an AAC frame does.

Threads are an implementation detail here: the reactor side calls `TranscodeWorker.submit` (never blocks) and
`TranscodeWorker.stop` (a Deferred), and results come back on the reactor thread, in order, through the callback.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Protocol, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

__all__ = ["MediaInput", "Transcoder", "TranscodeWorker", "WorkerCounters", "WorkerPool", "WorkerReactor",
           "holding_if_free"]

log = Logger()

ResultT = TypeVar("ResultT")


class WorkerReactor(Protocol):
    """The reactor methods a worker uses (``IReactorTime.callLater`` and ``IReactorThreads.callFromThread``)."""

    def callLater(self, delay: float, callable: Callable[..., object], *args: object) -> IDelayedCall: ...

    def callFromThread(self, callable: Callable[..., object], *args: object) -> None: ...


ResultT_co = TypeVar("ResultT_co", covariant=True)


@dataclass(frozen=True, slots=True)
class MediaInput:
    """One unit of media for a worker: an RTP audio payload, a VP8 frame or an H.264 access unit (NAL units).

    ``keyframe`` matters only to a keyframe-gated (video) worker: after a drop it waits for one.
    """

    data: bytes | Sequence[bytes]
    timestamp_ms: float
    keyframe: bool = False


class Transcoder(Protocol[ResultT_co]):
    """What a worker drives: `wcsgw.media.transcoder.AudioTranscoder` and `VideoTranscoder` fit."""

    def feed(self, data: Any, timestamp_ms: float, /) -> Sequence[ResultT_co]: ...

    def flush(self) -> Sequence[ResultT_co]: ...


@dataclass(slots=True)
class WorkerCounters:
    """Counters for metrics.  ``dropped``/``submitted`` are written on the reactor thread, the rest by the worker."""

    submitted: int = 0  # items accepted into the queue
    dropped: int = 0  # items refused: queue full, waiting for a key frame, or stopping
    processed: int = 0  # items the transcoder took
    results: int = 0  # results delivered to the callback
    errors: int = 0  # exceptions raised by the transcoder (or its factory), logged
    discarded: int = 0  # items the worker could not process because the factory failed
    callback_errors: int = 0  # exceptions raised by the callback on the reactor, logged
    max_depth: int = 0  # deepest the queue has been


_STOP = object()  # the sentinel


@contextmanager
def holding_if_free(gate: threading.Lock | None) -> Iterator[None]:
    """The reactor's side of a `WorkerPool` gate: hold ``gate`` for the block when it is free, else run the block
    anyway (a pool thread holds it only for an instant; the reactor never waits for it)."""
    held = gate is not None and gate.acquire(False)
    try:
        yield
    finally:
        if held:
            gate.release()  # type: ignore[union-attr]


class WorkerPool:
    """A few threads that run every lane's work; stop it once all its lanes are stopped."""

    def __init__(self, reactor: WorkerReactor, threads: int = 2, *, name: str = "transcode",
                 poll_interval: float = 0.01, batch_interval: float = 0.0,
                 gate: threading.Lock | None = None, thread_start: Callable[[], object] | None = None) -> None:
        """``batch_interval`` (seconds, 0: none): work waits up to this long on the reactor, then goes to each
        thread in one batch, and each batch's results come back to the reactor together.  A thread then wakes once
        per batch instead of once per item, and the reactor once per batch instead of once per result: on this
        machine a wake-up costs 45-85 us of CPU alone, and the job after it runs on cold caches (an AAC frame of
        PCMU: 0.53 ms, against 0.23 ms in a tight loop).

        ``gate``: a lock the reactor holds while it does work that must not wait (`wcsgw.rtp.udp.MediaSockets`
        holds it while it reads and delivers media).  A pool thread starts no item while it is held: an item
        takes the GIL several times (FFmpeg runs without it, the Python around it with it), and each time the
        reactor, which needs it back at once, waits for the thread's next release.  Items then run while the
        reactor waits for the next drain.  An item of a lane that falls behind (``gate_backlog`` items waiting
        in it, the item included: 384 ms of AAC audio) goes on regardless: on a loaded machine the reactor holds
        the gate most of the time (also while the scheduler has it wait for a core), and the work must not starve.
        (Counting the batches queued for the thread instead was not enough: a reactor that runs late hands over
        fewer, larger batches, and AAC frames were dropped at 100 calls.)

        Results can wait for the reactor instead of waking it (`collect_results`): a wake-up costs 50-100 us
        of CPU here, as much as the turn it wakes for.

        ``thread_start``: called first in each pool thread (`wcsgw.priority.RealtimePriority` raises the thread); an
        exception from it is logged and counted in ``thread_start_errors``, and the thread works on."""
        if threads < 1:
            raise ValueError(f"a worker pool needs at least one thread, not {threads}")
        if batch_interval < 0:
            raise ValueError(f"batch_interval must not be negative, not {batch_interval}")
        self._reactor = reactor
        self.name = name
        self._gate = gate
        self._thread_start = thread_start
        self.thread_start_errors = 0
        self.gate_backlog = 3  # items waiting in a lane from which on its items no longer wait at the gate
        self.gate_recheck = 0.005  # seconds between looks at the backlog while waiting at the gate
        self.gate_waits = 0  # items that found the gate held (written by the pool threads)
        self.gate_skips = 0  # items that went ahead of a held gate because the thread was behind
        self._poll_interval = poll_interval
        self.batch_interval = batch_interval
        self._pending: list[list[tuple[Any, Any]]] = [[] for _ in range(threads)]  # per thread, for the next batch
        self._timer: IDelayedCall | None = None
        self.batches = 0  # batches handed to the threads
        self._queues: list[queue.Queue[Any]] = [queue.Queue() for _ in range(threads)]
        self._lanes = [0] * threads
        self._threads = [threading.Thread(target=self._run, args=(q,), daemon=True,
                                          name=name if threads == 1 else f"{name}-{n}")
                         for n, q in enumerate(self._queues)]
        self._started = False  # threads start with the first lane
        self._stopped: Deferred[None] | None = None
        # Results that wait for `deliver_collected` (see `collect_results`): the pool threads add, the reactor
        # takes, both under the lock, which also guards the switch.
        self._results_lock = threading.Lock()
        self._collecting = False
        self._collected: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]] = []
        self.results_waited = 0  # batches whose results waited for deliver_collected

    @property
    def threads(self) -> int:
        return len(self._threads)

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _assign(self) -> int:
        """The pool thread a new lane goes to: the one with fewest lanes."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        index = min(range(len(self._lanes)), key=self._lanes.__getitem__)
        self._lanes[index] += 1
        return index

    def _release(self, index: int) -> None:
        self._lanes[index] -= 1

    def _put(self, index: int, entry: tuple[Any, Any]) -> None:
        """Queue ``(lane, item)`` for thread ``index``: at once, or with the next batch."""
        if not self.batch_interval:
            self._queues[index].put_nowait([entry])
            return
        self._pending[index].append(entry)
        if self._timer is None:
            self._timer = self._reactor.callLater(self.batch_interval, self._hand_over)

    def hand_over_now(self) -> None:
        """Give the threads what waits for the batch timer at once, in place of that timer: called at the end of
        a turn that queued work (a media drain, ``MediaSockets.after_drain``) when no more is due before the timer,
        it spares the reactor a turn of its own for the hand-over."""
        if self._timer is None:
            return
        if self._timer.active():
            self._timer.cancel()
        self._hand_over()

    def _hand_over(self) -> None:
        """Give each thread what waits for it, in one batch."""
        self._timer = None
        for index, pending in enumerate(self._pending):
            if pending:
                self._pending[index] = []
                self._queues[index].put_nowait(pending)
                self.batches += 1

    def collect_results(self, collecting: bool) -> None:
        """While ``collecting``, a batch's results wait until the reactor calls `deliver_collected` (at the end
        of each media drain: the reactor wakes for those anyway) instead of waking it with a ``callFromThread`` of
        their own.  A batch with results of a ``prompt`` lane (video) goes at once, with what waited before it (a
        lane's results stay in order).  Turning it off hands what waits to the reactor in its next turn (or with
        the next batch's results, in front of them, if those come first)."""
        with self._results_lock:
            self._collecting = collecting
            flush = not collecting and bool(self._collected)
        if flush:
            self._reactor.callLater(0, self.deliver_collected)

    def deliver_collected(self) -> None:
        """On the reactor: the results that waited, each lane's in order."""
        with self._results_lock:
            waiting, self._collected = self._collected, []
        if waiting:
            self._deliver(waiting)

    def _hand_back(self, done: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]]) -> None:
        """On a pool thread: a batch's results to the reactor, now or with the next `deliver_collected`."""
        with self._results_lock:
            if self._collecting and not any(lane.prompt for lane, _ in done):
                self._collected.extend(done)
                self.results_waited += 1
                return
            if self._collected:
                done = self._collected + done
                self._collected = []
        self._reactor.callFromThread(self._deliver, done)

    def stop(self) -> Deferred[None]:
        """End every thread (after the work queued before this call); fires once all are joined."""
        if self._stopped is None:
            self._stopped = Deferred()
            if not self._started:
                self._stopped.callback(None)
                return _chain(self._stopped)
            if self._timer is not None:
                self._timer.cancel()
            self.collect_results(False)  # the lanes' ends must not wait for drains that may have stopped
            self._hand_over()
            for q in self._queues:
                q.put_nowait(_STOP)
            self._reactor.callLater(0, self._join)
        return _chain(self._stopped)

    def _join(self) -> None:
        # Poll instead of joining so the reactor never blocks on a thread.
        if self.is_alive():
            self._reactor.callLater(self._poll_interval, self._join)
            return
        for thread in self._threads:
            thread.join()
        assert self._stopped is not None
        if not self._stopped.called:
            self._stopped.callback(None)

    def _run(self, work: queue.Queue[Any]) -> None:
        """A pool thread: batches of ``(lane, item)`` in, each batch's results out in one ``callFromThread``."""
        _name_os_thread(threading.current_thread().name)
        if self._thread_start is not None:
            try:
                self._thread_start()
            except Exception:  # the thread works on as it is
                self.thread_start_errors += 1
                log.failure("pool {name}: thread_start failed", name=self.name)
        while True:
            batch = work.get()
            if batch is _STOP:
                return
            done: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]] = []
            gate = self._gate
            for lane, item in batch:
                if gate is not None:
                    self._pass_gate(gate, lane)
                lane._work(item, done)
            if done:
                self._hand_back(done)

    def _pass_gate(self, gate: threading.Lock, lane: TranscodeWorker[Any]) -> None:
        """Wait (without the GIL) while the reactor holds ``gate``, unless ``lane`` is behind: with
        ``gate_backlog`` of its items waiting (this one included) the item goes ahead (a reactor that holds the
        gate most of the time, on a loaded machine, must not starve the work, whose queues are bounded)."""
        if gate.acquire(False):
            gate.release()
            return
        self.gate_waits += 1
        while not gate.acquire(timeout=self.gate_recheck):
            if lane._depth >= self.gate_backlog:  # read without the lane's lock: a late look is harmless
                self.gate_skips += 1
                return
        gate.release()

    @staticmethod
    def _deliver(done: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]]) -> None:
        """On the reactor: each lane's results in order; None says a lane has ended."""
        for lane, results in done:
            if results is None:
                lane._finished()
            else:
                lane._deliver(results)


class TranscodeWorker(Generic[ResultT]):
    """One lane: a transcoder fed in order through a bounded queue, on a pool thread.

    ``make_transcoder`` is called *on the pool thread* with the lane's first item (codec contexts are opened and
    used only there).  Each submitted `MediaInput` goes to ``transcoder.feed(data, timestamp_ms)``; results are
    handed to ``callback`` on the reactor thread, in order (one ``reactor.callFromThread`` per batch of the pool
    thread: a batch is one item, or with the pool's ``batch_interval`` what gathered meanwhile).

    ``submit`` never blocks: with ``max_queue`` items waiting the item is dropped and counted.  With
    ``keyframe_gated`` (video) a drop also drops every following item until one with ``keyframe=True``, and
    ``on_keyframe_needed`` (reactor thread) is told so the caller can ask the far end for a key frame.

    ``stop`` queues the end after the queued items: they are finished, ``transcoder.flush()``'s results
    delivered, and the returned Deferred fires (with None) without blocking the reactor.  A lane with a private
    pool also ends and joins that pool's thread.
    """

    def __init__(
        self,
        reactor: WorkerReactor,
        make_transcoder: Callable[[], Transcoder[ResultT]],
        callback: Callable[[ResultT], object],
        *,
        max_queue: int = 50,
        name: str = "transcode",
        keyframe_gated: bool = False,
        on_keyframe_needed: Callable[[], object] | None = None,
        poll_interval: float = 0.01,
        pool: WorkerPool | None = None,
        prompt: bool = False,
    ) -> None:
        """``prompt``: the lane's results go to the reactor at once even while the pool collects results (see
        `WorkerPool.collect_results`)."""
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self._reactor = reactor
        self._make_transcoder = make_transcoder
        self._callback = callback
        self._max_queue = max_queue
        self.name = name
        self._keyframe_gated = keyframe_gated
        self._on_keyframe_needed = on_keyframe_needed
        self.prompt = prompt
        self._own_pool = pool is None
        self._pool = pool if pool is not None else WorkerPool(reactor, 1, name=name, poll_interval=poll_interval)
        self._index = self._pool._assign()
        self._lock = threading.Lock()
        self._depth = 0  # items submitted and not yet processed (reactor adds, pool thread subtracts)
        self.counters = WorkerCounters()
        self._waiting_for_keyframe = False
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        # Pool-thread side.
        self._transcoder: Transcoder[ResultT] | None = None
        self._made = False

    # -- reactor side -------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting."""
        return self._depth

    @property
    def is_alive(self) -> bool:
        """The lane's pool thread runs (a lane of a shared pool keeps it after its own stop)."""
        return self._pool.is_alive()

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting_for_keyframe

    def submit(self, item: MediaInput) -> bool:
        """Queue ``item``; False (and counted in ``counters.dropped``) when it is dropped.  Never blocks."""
        if self._stopping:
            self.counters.dropped += 1
            return False
        if self._keyframe_gated and self._waiting_for_keyframe:
            if not item.keyframe:
                self.counters.dropped += 1
                return False
            self._waiting_for_keyframe = False
        with self._lock:
            depth = self._depth
            if depth < self._max_queue:
                self._depth = depth + 1
        if depth >= self._max_queue:
            self.counters.dropped += 1
            if self._keyframe_gated:
                self._waiting_for_keyframe = True
                if self._on_keyframe_needed is not None:
                    self._on_keyframe_needed()
            return False
        self._pool._put(self._index, (self, item))
        self.counters.submitted += 1
        self.counters.max_depth = max(self.counters.max_depth, depth + 1)
        return True

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """Finish the queued items, flush; the Deferred fires once that is done (and a private pool joined).

        With ``timeout`` (seconds) the Deferred fires anyway after that long, logging that the work is still
        running (daemon threads: they cannot keep the process alive).  Calling stop again returns the same
        result.
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        self._stopping = True
        self._stopped = Deferred()
        self._pool._put(self._index, (self, _STOP))
        if self._own_pool:  # its thread ends right after this lane's last work
            self._pool_stopped = self._pool.stop()
        if timeout is not None:
            self._reactor.callLater(timeout, self._give_up, timeout)
        return _chain(self._stopped)

    def _give_up(self, timeout: float) -> None:
        if self._stopped is not None and not self._stopped.called:
            log.error("worker {name} still running {timeout}s after stop", name=self.name, timeout=timeout)
            self._stopped.callback(None)

    def _deliver(self, results: Sequence[ResultT]) -> None:
        for result in results:
            try:
                self._callback(result)
            except Exception:
                self.counters.callback_errors += 1
                log.failure("callback of worker {name} failed", name=self.name)

    def _finished(self) -> None:
        self._pool._release(self._index)
        if self._own_pool:
            self._pool_stopped.addBoth(lambda _: self._fire())
        else:
            self._fire()

    def _fire(self) -> None:
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- pool thread --------------------------------------------------------------------------------------------

    def _work(self, item: object, done: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]]) -> None:
        """Process ``item`` on the pool thread; what goes back to the reactor is added to ``done``."""
        if not self._made:
            self._made = True
            try:
                self._transcoder = self._make_transcoder()
            except Exception:
                self.counters.errors += 1
                log.failure("worker {name} could not make its transcoder; dropping its input", name=self.name)
        if item is _STOP:
            self._end(done)
            return
        with self._lock:
            self._depth -= 1
        transcoder = self._transcoder
        if transcoder is None:
            self.counters.discarded += 1
            return
        assert isinstance(item, MediaInput)
        try:
            results = transcoder.feed(item.data, item.timestamp_ms)
        except Exception:
            self.counters.errors += 1
            log.failure("transcoder of worker {name} failed on an item", name=self.name)
            return
        self.counters.processed += 1
        if results:
            self.counters.results += len(results)
            done.append((self, list(results)))

    def _end(self, done: list[tuple[TranscodeWorker[Any], Sequence[Any] | None]]) -> None:
        transcoder, self._transcoder = self._transcoder, None
        if transcoder is not None:
            try:
                results = transcoder.flush()
            except Exception:
                self.counters.errors += 1
                log.failure("transcoder of worker {name} failed to flush", name=self.name)
            else:
                if results:
                    self.counters.results += len(results)
                    done.append((self, list(results)))
        done.append((self, None))


PR_SET_NAME = 15


def _name_os_thread(name: str) -> None:
    """Give the OS thread the Python thread's name (Linux prctl; at most 15 bytes), so that top, ps and /proc show
    which threads transcode."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode("ascii", "replace")[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _chain(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` does, so each caller of stop gets its own."""
    out: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out
