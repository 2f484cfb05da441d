"""
Counters for ``GET /metrics`` in the Prometheus text format (version 0.0.4).

Live calls are read when scraped (their sessions, streams, workers and publishers); what ended calls counted is
folded into running totals when they end, so every ``_total`` stays monotonic.  Latency, call set-up time and
reactor lag are histograms, with quantiles over the most recent samples alongside.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet.task import LoopingCall

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
SETUP_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUANTILES = (0.5, 0.9, 0.99)


class Histogram:
    """Cumulative buckets, sum and count, plus the last ``window`` samples for quantiles."""

    def __init__(self, buckets: Sequence[float], window: int = 10000) -> None:
        self.buckets = tuple(buckets)
        if list(self.buckets) != sorted(self.buckets):
            raise ValueError(f"histogram buckets must be in increasing order: {self.buckets}")
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        self._recent.append(value)
        index = bisect_left(self.buckets, value)  # the first bucket whose bound is not below the value
        if index < len(self.counts):
            self.counts[index] += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the recent samples (nearest rank), or None without samples."""
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        rank = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def lines(self, name: str, labels: str = "") -> list[str]:
        """The text-format samples; ``labels`` (``media="audio"``) go on every sample."""
        out = []
        running = 0
        prefix = f"{labels}," if labels else ""
        plain = f"{{{labels}}}" if labels else ""
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f'{name}_bucket{{{prefix}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{prefix}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{plain} {self.sum:.6f}")
        out.append(f"{name}_count{plain} {self.count}")
        return out


class ReactorLagMonitor:
    """Measures how late the reactor runs a call scheduled every ``interval`` seconds, or, while it is stopped,
    another periodic call that reports to ``observe`` (the media drains' timer, in the gateway)."""

    def __init__(self, reactor: Any, interval: float = 0.1) -> None:
        self._reactor = reactor
        self.interval = interval
        self.histogram = Histogram(LAG_BUCKETS, window=3000)
        self.last = 0.0
        self.max = 0.0
        self._expected: float | None = None
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor

    def start(self) -> None:
        if not self._loop.running:
            self._expected = None
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def observe(self, lateness: float) -> None:
        """One sample: a periodic call ran ``lateness`` seconds after it was due."""
        self.last = lateness
        if lateness > self.max:
            self.max = lateness
        self.histogram.observe(lateness)

    def _tick(self) -> None:
        now = self._reactor.seconds()
        if self._expected is not None:
            self.observe(max(0.0, now - self._expected))
        self._expected = now + self.interval


class GcMonitor:
    """The cyclic garbage collector: its collections and pauses by generation (``gc.callbacks``), and its tuning
    while started.

    A full (generation 2) collection scans every object the collector tracks, and stops every thread meanwhile:
    in the bench at 100 calls, 46 to 110 ms each, every 5 to 10 s, over about 90 thousand objects, most of them
    start-up's (functions, classes, dicts of the libraries), and the reactor fell as far behind.  ``freeze``:
    once started, what exists is moved into the permanent generation (``gc.freeze``), which collections do not
    scan: they see only what calls made since.  ``threshold``: the youngest generation is collected after that
    many allocations (Python's default: 700); objects that live a few tens of ms (a frame on its way, a
    transcoding batch) are then mostly gone before a collection sees them, instead of being promoted to the older
    generations, whose growth is what sets off full collections."""

    def __init__(self, freeze: bool = False, threshold: int = 0, clock: Any = None) -> None:
        self.freeze = freeze
        self.threshold = threshold
        self._clock = clock or time.perf_counter
        self.collections = [0, 0, 0]
        self.collected = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]
        self.frozen = 0
        self._began: float | None = None
        self._saved_threshold: tuple[int, ...] | None = None

    def start(self) -> None:
        if self._callback in gc.callbacks:
            return
        if self.freeze:
            gc.collect()  # start-up's garbage goes first (not counted: the counts are of the running gateway)
            gc.freeze()
            self.frozen = gc.get_freeze_count()
        gc.callbacks.append(self._callback)
        if self.threshold:
            self._saved_threshold = gc.get_threshold()
            gc.set_threshold(self.threshold, *self._saved_threshold[1:])

    def stop(self) -> None:
        if self._callback not in gc.callbacks:
            return
        gc.callbacks.remove(self._callback)
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None
        if self.freeze:
            gc.unfreeze()  # back into the oldest generation: collected as usual from now on
            self.frozen = 0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        # One collection at a time, whichever thread runs it (the collector holds the GIL throughout).
        if phase == "start":
            self._began = self._clock()
            return
        if self._began is None:
            return
        pause = self._clock() - self._began
        self._began = None
        generation = info["generation"]
        self.collections[generation] += 1
        self.collected[generation] += info["collected"]
        self.seconds[generation] += pause
        if pause > self.max[generation]:
            self.max[generation] = pause


@dataclasses.dataclass
class MediaTotals:
    """What ended calls' media counted (added to the live calls' counts at scrape time)."""

    rtp_packets: int = 0
    rtp_bytes: int = 0
    rtp_lost: int = 0
    rtp_late: int = 0
    rtp_dropped: int = 0
    frames: int = 0
    keyframe_requests: int = 0
    rtmp_bytes: int = 0
    rtmp_dropped_video: int = 0
    rtmp_dropped_audio: int = 0
    rtmp_reconnects: int = 0
    worker_dropped: int = 0
    stream_dropped: int = 0

    def add(self, other: MediaTotals) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def session_counts(session: Any) -> dict[str, float]:
    """Packets, bytes, lost, late, dropped, jitter (seconds), frames and keyframe requests of one RTP session."""
    stats = list(session.stats.values())
    counters = session.counters
    dropped = (counters.dropped_unexpected_source + counters.dropped_srtp + counters.dropped_malformed
               + counters.dropped_payload_type + counters.dropped_not_receiving + counters.dropped_out_of_range)
    clock_rate = session.params.clock_rate or 1
    return {
        "packets": counters.rtp_accepted,
        "bytes": sum(s.octets for s in stats),
        "lost": max(0, sum(s.lost for s in stats)),
        "late": counters.dropped_late + sum(s.late for s in stats),
        "dropped": dropped,
        "jitter": max((s.jitter for s in stats), default=0.0) / clock_rate,
        "frames": counters.frames,
        "keyframe_requests": counters.keyframe_requests,
    }


def media_totals(media: Any) -> MediaTotals:
    """A call's media counts, as ``MediaTotals``."""
    totals = MediaTotals()
    for protocol in media.protocols.values():
        if protocol.session is None:
            continue
        counts = session_counts(protocol.session)
        totals.rtp_packets += int(counts["packets"])
        totals.rtp_bytes += int(counts["bytes"])
        totals.rtp_lost += int(counts["lost"])
        totals.rtp_late += int(counts["late"])
        totals.rtp_dropped += int(counts["dropped"])
        totals.frames += int(counts["frames"])
        totals.keyframe_requests += int(counts["keyframe_requests"])
    stream = media.stream
    if stream is not None:
        totals.stream_dropped += stream.stats.audio_dropped + stream.stats.video_dropped
        for worker in stream.workers():
            totals.worker_dropped += worker.counters.dropped
        for publisher in stream.publishers():
            totals.rtmp_bytes += publisher.stats.bytes_sent
            totals.rtmp_dropped_video += publisher.stats.dropped_video_frames
            totals.rtmp_dropped_audio += publisher.stats.dropped_audio_frames
            totals.rtmp_reconnects += publisher.stats.reconnects
    return totals


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}")

    def histogram(self, name: str, help_text: str, histograms: Histogram | dict[str, Histogram],
                  label: str = "") -> None:
        """One histogram, or one per value of ``label`` (a dict value -> Histogram)."""
        series = histograms if isinstance(histograms, dict) else {"": histograms}
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} histogram")
        for value, histogram in series.items():
            self.lines.extend(histogram.lines(name, f'{label}="{value}"' if label else ""))
        samples = []
        for value, histogram in series.items():
            for q in QUANTILES:
                quantile = histogram.quantile(q)
                if quantile is not None:
                    labels = f'{label}="{value}",' if label else ""
                    samples.append((f'{{{labels}quantile="{q:g}"}}', quantile))
        self.metric(f"{name}_recent", "gauge", f"quantiles of the last samples of {name}", samples)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(gateway: Any) -> str:
    """The whole /metrics page of a ``GatewayService``."""
    from wcsgw.model import CallStatus

    manager, backend, agent, notifier = gateway.manager, gateway.backend, gateway.agent, gateway.notifier
    out = _Writer()
    by_status = collections.Counter(call.status for call in manager.find())
    out.metric("wcsgw_calls", "gauge", "calls known to the gateway (live and recently ended), by status",
               [(f'{{status="{s.value}"}}', by_status.get(s, 0)) for s in CallStatus])
    stats = backend.stats
    out.metric("wcsgw_calls_started_total", "counter", "calls dialled", [("", stats.calls_started)])
    out.metric("wcsgw_calls_refused_total", "counter", "calls refused (no media ports, SIP not running)",
               [("", stats.calls_refused)])
    out.metric("wcsgw_media_ports_in_use", "gauge", "RTP/RTCP port pairs in use or in quarantine",
               [("", backend.allocator.in_use)])
    out.metric("wcsgw_media_ports_capacity", "gauge", "RTP/RTCP port pairs in the range",
               [("", backend.allocator.capacity)])

    live = list(backend.calls.values())
    totals = MediaTotals()
    totals.add(backend.ended_totals)
    per_call: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for media in live:
        totals.add(media_totals(media))
        call_id = _label(media.call_id)
        for kind, protocol in media.protocols.items():
            if protocol.session is None:
                continue
            labels = f'{{call_id="{call_id}",kind="{kind}"}}'
            for key, value in session_counts(protocol.session).items():
                per_call[key].append((labels, value))
        if media.stream is not None:
            for worker in media.stream.workers():
                labels = f'{{call_id="{call_id}",worker="{_label(worker.name)}"}}'
                per_call["worker_queue"].append((labels, worker.queue_depth))
                per_call["worker_dropped"].append((labels, worker.counters.dropped))
            for key, publisher in media.stream.destinations().items():
                labels = f'{{call_id="{call_id}",media_session_id="{_label(key)}"}}'
                per_call["rtmp_bytes"].append((labels, publisher.stats.bytes_sent))
                per_call["rtmp_dropped"].append((labels, publisher.stats.dropped_video_frames
                                                 + publisher.stats.dropped_audio_frames))
                per_call["rtmp_reconnects"].append((labels, publisher.stats.reconnects))

    out.metric("wcsgw_rtp_packets_received_total", "counter", "RTP packets accepted, all calls",
               [("", totals.rtp_packets)])
    out.metric("wcsgw_rtp_bytes_received_total", "counter", "RTP payload octets received, all calls",
               [("", totals.rtp_bytes)])
    out.metric("wcsgw_rtp_packets_lost_total", "counter", "RTP packets lost (RFC 3550), all calls",
               [("", totals.rtp_lost)])
    out.metric("wcsgw_rtp_packets_late_total", "counter", "RTP packets that came after their frame was released",
               [("", totals.rtp_late)])
    out.metric("wcsgw_rtp_packets_dropped_total", "counter",
               "RTP packets dropped: malformed, unexpected source, SRTP failure, payload type, out of range",
               [("", totals.rtp_dropped)])
    out.metric("wcsgw_frames_assembled_total", "counter", "audio and video frames out of the depacketizers",
               [("", totals.frames)])
    out.metric("wcsgw_keyframe_requests_total", "counter", "keyframe requests sent (RTCP PLI/FIR)",
               [("", totals.keyframe_requests)])
    out.metric("wcsgw_keyframe_requests_sip_info_total", "counter", "SIP INFO picture_fast_update sent",
               [("", stats.keyframe_requests_sip_info)])
    out.metric("wcsgw_rtmp_bytes_sent_total", "counter", "bytes written to RTMP servers", [("", totals.rtmp_bytes)])
    out.metric("wcsgw_rtmp_dropped_frames_total", "counter", "frames not sent to RTMP (waiting, back-pressure)",
               [('{kind="video"}', totals.rtmp_dropped_video), ('{kind="audio"}', totals.rtmp_dropped_audio)])
    out.metric("wcsgw_rtmp_reconnects_total", "counter", "RTMP connection attempts after the first",
               [("", totals.rtmp_reconnects)])
    out.metric("wcsgw_worker_dropped_total", "counter", "media items a full transcoding queue refused",
               [("", totals.worker_dropped)])

    out.metric("wcsgw_call_rtp_packets", "gauge", "RTP packets accepted by a live call", per_call["packets"])
    out.metric("wcsgw_call_rtp_bytes", "gauge", "RTP payload octets of a live call", per_call["bytes"])
    out.metric("wcsgw_call_rtp_lost", "gauge", "RTP packets lost by a live call", per_call["lost"])
    out.metric("wcsgw_call_rtp_late", "gauge", "late RTP packets of a live call", per_call["late"])
    out.metric("wcsgw_call_rtp_jitter_seconds", "gauge", "interarrival jitter (RFC 3550 A.8) of a live call",
               per_call["jitter"])
    out.metric("wcsgw_call_frames", "gauge", "frames assembled by a live call", per_call["frames"])
    out.metric("wcsgw_call_keyframe_requests", "gauge", "keyframe requests of a live call",
               per_call["keyframe_requests"])
    out.metric("wcsgw_worker_queue_depth", "gauge", "items waiting in a transcoding worker", per_call["worker_queue"])
    out.metric("wcsgw_call_worker_dropped", "gauge", "items a worker of a live call dropped",
               per_call["worker_dropped"])
    out.metric("wcsgw_call_rtmp_bytes", "gauge", "bytes a live call's destination wrote", per_call["rtmp_bytes"])
    out.metric("wcsgw_call_rtmp_dropped", "gauge", "frames a live call's destination dropped",
               per_call["rtmp_dropped"])
    out.metric("wcsgw_call_rtmp_reconnects", "gauge", "reconnect attempts of a live call's destination",
               per_call["rtmp_reconnects"])

    out.histogram("wcsgw_rtp_to_rtmp_latency_seconds",
                  "from the arrival of the RTP packet completing a frame to its FLV tag written to RTMP",
                  backend.latency, label="media")
    out.histogram("wcsgw_call_setup_seconds", "from call/startup to the first keyframe written to RTMP",
                  backend.setup_time)
    out.histogram("wcsgw_reactor_lag_seconds",
                  "how late the reactor ran a periodic call (the media reads' timer while they run, else one "
                  "every 100 ms)",
                  gateway.lag.histogram)
    out.metric("wcsgw_reactor_lag_max_seconds", "gauge", "largest reactor lag seen", [("", gateway.lag.max)])
    priority = getattr(gateway, "priority", None)
    if priority is not None:
        samples = [('{thread="reactor"}', priority.applied)]
        transcoding = list(getattr(gateway, "transcoding_priorities", ()))  # the threads started so far
        if transcoding:
            samples.append(('{thread="transcoding"}', min(p.applied for p in transcoding)))
        out.metric("wcsgw_realtime_priority", "gauge",
                   "real-time priority (SCHED_RR) of the reactor thread and of the transcoding threads (the lowest; "
                   "once started); 0: normal scheduling", samples)
    gc_monitor = getattr(gateway, "gc", None)
    if gc_monitor is not None:
        generations = [f'{{generation="{g}"}}' for g in range(3)]
        out.metric("wcsgw_gc_collections_total", "counter", "collections of the cyclic garbage collector",
                   zip(generations, gc_monitor.collections))
        out.metric("wcsgw_gc_collected_total", "counter", "unreachable objects the collections found",
                   zip(generations, gc_monitor.collected))
        out.metric("wcsgw_gc_pause_seconds_total", "counter", "time the collections took (every thread waits)",
                   zip(generations, gc_monitor.seconds))
        out.metric("wcsgw_gc_pause_max_seconds", "gauge", "longest collection", zip(generations, gc_monitor.max))
        out.metric("wcsgw_gc_frozen_objects", "gauge", "objects of start-up that collections skip (gc.freeze)",
                   [("", gc_monitor.frozen)])

    sockets = getattr(gateway, "media_sockets", None)
    if sockets is not None:
        out.metric("wcsgw_media_datagrams_total", "counter", "datagrams read from the media sockets",
                   [("", sockets.datagrams)])
        out.metric("wcsgw_media_drains_total", "counter", "batched reads of the media sockets",
                   [("", sockets.drains)])
        out.metric("wcsgw_media_read_interval_seconds", "gauge",
                   "time between reads of the media sockets now (media_read_interval_ms, _light_ms or _quiet_ms)",
                   [("", sockets.current_interval)])
        out.metric("wcsgw_media_read_interval_changes_total", "counter",
                   "changes between media_read_interval_ms, media_read_interval_light_ms and _quiet_ms",
                   [("", sockets.interval_changes)])
        out.metric("wcsgw_media_socket_errors_total", "counter",
                   "media socket receive errors, exceptions of the RTP code, datagrams a full send buffer dropped",
                   [('{kind="receive"}', sockets.receive_errors), ('{kind="protocol"}', sockets.protocol_errors),
                    ('{kind="send_dropped"}', sockets.send_drops)])
        phases = [('{phase="read"}', sockets.read_cpu), ('{phase="deliver"}', sockets.deliver_cpu)]
        writes = getattr(gateway, "rtmp_writes", None)
        if writes is not None:
            phases.append(('{phase="send"}', writes.cpu))
        out.metric("wcsgw_media_cpu_seconds_total", "counter",
                   "CPU time of the reactor thread reading the media sockets, handling what was read (RTP to RTMP), "
                   "and sending the RTMP writes of each reactor turn (read and deliver: the media drains' CPU split "
                   "by the share of time reading took in every eighth drain)", phases)
        if writes is not None:
            out.metric("wcsgw_rtmp_sends_total", "counter",
                       "RTMP connections written to at the end of a reactor turn (one send each)",
                       [("", writes.sends)])
            out.metric("wcsgw_rtmp_audio_held_total", "counter",
                       "audio writes of a video connection that waited for its next write (to share its send)",
                       [("", writes.held)])
            out.metric("wcsgw_rtmp_audio_held_alone_total", "counter",
                       "... of which went alone, after waiting the longest (50 ms)", [("", writes.held_alone)])

    pool = getattr(gateway, "pool", None)
    if pool is not None:
        out.metric("wcsgw_transcode_gate_waits_total", "counter",
                   "transcoding items that waited for the reactor to finish reading media or sending RTMP "
                   "(media_first)", [("", pool.gate_waits)])
        out.metric("wcsgw_transcode_gate_skips_total", "counter",
                   "of those, items that stopped waiting because their call's transcoding fell behind",
                   [("", pool.gate_skips)])
        out.metric("wcsgw_transcode_results_waited_total", "counter",
                   "batches of transcoding results that waited for the next media read instead of waking the "
                   "reactor (transcode_results_with_reads)", [("", pool.results_waited)])

    for name, value in sorted(agent.counters.items()):
        out.metric(f"wcsgw_sip_{name}_total", "counter", f"SIP user agent: {name.replace('_', ' ')}",
                   [("", value)])
    notifier_stats = notifier.stats
    out.metric("wcsgw_callapp_events_total", "counter", "CallApp events by outcome",
               [(f'{{outcome="{field.name}"}}', getattr(notifier_stats, field.name))
                for field in dataclasses.fields(notifier_stats)])
    return out.text()
