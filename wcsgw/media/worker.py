"""The one module that touches threads: a worker thread per transcoded track, fed by a bounded queue.

Why one thread per transcoded *track* (not per call): a call's audio and video have different costs (an AAC
frame takes well under a millisecond, a 640x360 H.264 frame several), different drop policies (audio drops
single packets, video drops until the next key frame) and different queue bounds.  In one shared queue a slow
video frame would hold back the audio behind it.  Most calls transcode only audio (H.264 passes through), so for
them this is one thread per call anyway; a call that transcodes both gets two.  An idle worker blocks in
``queue.get`` and costs no CPU.  PyAV releases the GIL inside FFmpeg, so encoders of different calls run on
different cores.  The codecs themselves are single-threaded (``thread_count=1``, see `wcsgw.media.transcoder`):
with 100 calls on 2 cores, extra codec threads only add contention.

Threads are an implementation detail here: the reactor side calls `TranscodeWorker.submit` (never blocks) and
`TranscodeWorker.stop` (a Deferred), and results come back on the reactor thread, in order, through the callback.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

__all__ = ["MediaInput", "Transcoder", "TranscodeWorker", "WorkerCounters", "WorkerReactor"]

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


class TranscodeWorker(Generic[ResultT]):
    """Run a transcoder in its own thread, in order, behind a bounded queue.

    ``make_transcoder`` is called *in the worker thread* (codec contexts are opened there and used only
    there).  Each submitted `MediaInput` goes to ``transcoder.feed(data, timestamp_ms)``; its results are
    handed to ``callback`` on the reactor thread (one ``reactor.callFromThread`` per input, which calls
    ``callback(result)`` for each result of that input, in order).

    ``submit`` never blocks: with ``max_queue`` items waiting the item is dropped and counted.  With
    ``keyframe_gated`` (video) a drop also drops every following item until one with ``keyframe=True``, and
    ``on_keyframe_needed`` (reactor thread) is told so the caller can ask the far end for a key frame.

    ``stop`` puts a sentinel after the queued items: the worker finishes them, calls ``transcoder.flush()``,
    delivers those results and ends; the returned Deferred fires (with None) after the thread has been
    joined, without blocking the reactor.
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
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self._reactor = reactor
        self._make_transcoder = make_transcoder
        self._callback = callback
        self._max_queue = max_queue
        self.name = name
        self._keyframe_gated = keyframe_gated
        self._on_keyframe_needed = on_keyframe_needed
        self._poll_interval = poll_interval
        # One slot more than the bound we enforce, so the sentinel always fits: put never blocks.
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue + 1)
        self.counters = WorkerCounters()
        self._waiting_for_keyframe = False
        self._stopping = False
        self._stopped: Deferred[None] | None = None
        self._finished_seen = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- reactor side -------------------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting (the sentinel not counted)."""
        return min(self._queue.qsize(), self._max_queue)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

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
        # Only this (reactor) thread puts, so a depth below the bound stays below it until our put.
        depth = self._queue.qsize()
        if depth >= self._max_queue:
            self.counters.dropped += 1
            if self._keyframe_gated:
                self._waiting_for_keyframe = True
                if self._on_keyframe_needed is not None:
                    self._on_keyframe_needed()
            return False
        self._queue.put_nowait(item)
        self.counters.submitted += 1
        self.counters.max_depth = max(self.counters.max_depth, depth + 1)
        return True

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """Finish the queued items, flush, end the thread; the Deferred fires once it is joined.

        With ``timeout`` (seconds) the Deferred fires anyway after that long, logging that the thread is still
        running (a daemon thread: it cannot keep the process alive).  Calling stop again returns the same
        result.
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        self._stopping = True
        self._stopped = Deferred()
        self._queue.put_nowait(_STOP)
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
        # The worker's last act was to schedule this; join as soon as the thread is really gone, polling so
        # the reactor never blocks on join.
        if self._thread.is_alive():
            self._reactor.callLater(self._poll_interval, self._finished)
            return
        self._thread.join()
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    # -- worker thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        reactor = self._reactor
        transcoder: Transcoder[ResultT] | None = None
        try:
            transcoder = self._make_transcoder()
        except Exception:
            self.counters.errors += 1
            log.failure("worker {name} could not make its transcoder; dropping its input", name=self.name)
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if transcoder is None:
                self.counters.discarded += 1
                continue
            assert isinstance(item, MediaInput)
            try:
                results = transcoder.feed(item.data, item.timestamp_ms)
            except Exception:
                self.counters.errors += 1
                log.failure("transcoder of worker {name} failed on an item", name=self.name)
                continue
            self.counters.processed += 1
            if results:
                self.counters.results += len(results)
                reactor.callFromThread(self._deliver, list(results))
        if transcoder is not None:
            try:
                results = transcoder.flush()
            except Exception:
                self.counters.errors += 1
                log.failure("transcoder of worker {name} failed to flush", name=self.name)
            else:
                if results:
                    self.counters.results += len(results)
                    reactor.callFromThread(self._deliver, list(results))
        reactor.callFromThread(self._finished)


def _chain(d: Deferred[None]) -> Deferred[None]:
    """A new Deferred that fires (with None) when ``d`` does, so each caller of stop gets its own."""
    out: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out
