"""The two systems a bench run compares, behind one small interface used by ``run.py``:

``start(calls)`` starts what exists before the calls; ``place_calls(calls)`` places them (and returns when each
was placed); ``pids()`` are the processes measured; ``counters()`` the system's own loss counters and latency
figures (anything it cannot tell is absent, never guessed); ``call_states()`` how many calls are up; ``stop()``.

* :class:`Baseline`: one ``ffmpeg -protocol_whitelist file,udp,rtp -i call.sdp -c:v copy -c:a aac ... -f flv``
  per call, listening on the ports of its ``call.sdp``, and SIPp placing each call to the far end with an offer of
  those ports. ffmpeg's AAC is set as the gateway's (``--aac-rate``: 8 kHz by default, the rate ffmpeg keeps
  when told just ``-c:a aac``, or 44.1 kHz; mono; the gateway's default AAC bit rate for that rate) so both do
  the same work.
* :class:`Gateway`: ``twistd -n wcsgw`` driven through its REST API (``call/startup``, ``call/find_all``,
  ``call/terminate``) with its ``GET /metrics`` (Prometheus text) read at the start and end of the window.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.media import Media
from bench.peers import BaselineCaller, FarEnd
from wcsgw.media.transcoder import aac_bitrate

from bench.procs import Child, Processes, free_tcp_port, free_udp_port, tcp_accepts, udp_blocks, udp_bound, wait_until

ROOT = Path(__file__).resolve().parents[1]
BASELINE_PORTS = 26000  # ffmpeg's RTP/RTCP ports: four per call from here
GATEWAY_MEDIA_PORTS = (28000, 31998)


@dataclass(frozen=True)
class Call:
    """One call of a trial: its name (RTMP stream, callee user part, callId), far end and RTMP URL."""

    name: str
    far_end: FarEnd
    rtmp_url: str
    sampled: bool


# ------------------------------------------------------------------------------------------------------- baseline

_CALL_SDP = """v=0
o=- 0 0 IN IP4 127.0.0.1
s={name}
c=IN IP4 127.0.0.1
t=0 0
m=audio {audio} RTP/AVP 0
a=rtpmap:0 PCMU/8000
m=video {video} RTP/AVP {pt}
a=rtpmap:{pt} H264/90000
a=fmtp:{pt} packetization-mode=1;profile-level-id=42e01f
"""

_MISSED = re.compile(r"RTP: missed (\d+) packets")
_LATE = re.compile(r"RTP: dropping old packet received too late")


def _bound(ports: tuple[int, ...]) -> Callable[[], bool]:
    return lambda: all(udp_bound(port) for port in ports)


class Baseline:
    name = "baseline"
    prefix = "base"

    def __init__(self, procs: Processes, workdir: Path, media: Media, *, hold: float, aac_rate: int = 8000,
                 realtime_priority: int = 0) -> None:
        """``realtime_priority`` (0: none): each ffmpeg runs under ``chrt --rr`` at it, all its threads, as the
        gateway runs its media threads by default (``realtime_priority``)."""
        self.procs = procs
        self.aac_rate = aac_rate
        self.realtime_priority = realtime_priority
        self.workdir = workdir
        self.media = media
        self.hold = hold
        self.ffmpegs: dict[str, Child] = {}
        self.ports: dict[str, tuple[int, int]] = {}
        self.callers: list[BaselineCaller] = []
        self._offsets: dict[str, int] = {}

    def start(self, calls: list[Call]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        blocks = udp_blocks(BASELINE_PORTS, len(calls), 4)
        for call, port in zip(calls, blocks, strict=True):
            self.ports[call.name] = (port, port + 2)
            sdp = self.workdir / f"{call.name}.sdp"
            sdp.write_text(_CALL_SDP.format(name=call.name, audio=port, video=port + 2, pt=self.media.video_pt))
            argv = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning",
                    "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
                    "-c:v", "copy", "-c:a", "aac", "-ar", str(self.aac_rate), "-ac", "1",
                    "-b:a", str(aac_bitrate(0, self.aac_rate)),
                    "-f", "flv", f"{call.rtmp_url}/{call.name}"]
            if self.realtime_priority:
                argv = ["chrt", "--rr", str(self.realtime_priority), *argv]
            self.ffmpegs[call.name] = self.procs.start(f"ffmpeg {call.name}", argv, cwd=self.workdir,
                                                       log=self.workdir / f"{call.name}.log")
        for call in calls:
            wait_until(_bound(self.ports[call.name]), 20, f"{call.name}'s ffmpeg RTP sockets",
                       alive=self.ffmpegs[call.name])

    def place_calls(self, calls: list[Call]) -> dict[str, float]:
        by_far_end: dict[int, list[Call]] = {}
        for call in calls:
            by_far_end.setdefault(call.far_end.port, []).append(call)
        placed: dict[str, float] = {}
        for index, group in enumerate(by_far_end.values()):
            rows = [(*self.ports[c.name], c.name) for c in group]
            now = time.time()
            self.callers.append(BaselineCaller(self.procs, self.workdir, self.media, group[0].far_end, rows,
                                               self.hold, name=f"caller{index}", rate=100.0))
            placed.update({c.name: now for c in group})
        return placed

    def pids(self) -> list[int]:
        return [child.pid for child in self.ffmpegs.values() if child.running]

    def call_states(self) -> dict[str, str]:
        return {name: "RUNNING" if child.running else f"EXITED {child.popen.returncode}"
                for name, child in self.ffmpegs.items()}

    def mark(self) -> None:
        """Start of the window for :meth:`counters` (ffmpeg's log is read from here)."""
        self._offsets = {name: child.log_size() for name, child in self.ffmpegs.items()}

    def counters(self) -> dict[str, Any]:
        """ffmpeg's own loss reports within the window: ``RTP: missed N packets`` and late packets dropped."""
        missed = late = 0
        for name, child in self.ffmpegs.items():
            try:
                with open(child.log_path, "rb") as log:
                    log.seek(self._offsets.get(name, 0))
                    text = log.read().decode("utf-8", "replace")
            except OSError:
                continue
            missed += sum(int(m) for m in _MISSED.findall(text))
            late += len(_LATE.findall(text))
        return {"app_lost": missed + late, "app_lost_detail": {"missed": missed, "late": late}}

    def end_calls(self) -> None:
        self.procs.stop_many([caller.child for caller in self.callers], grace=3.0)
        self.callers.clear()

    def stop(self) -> None:
        self.end_calls()
        self.procs.stop_many(list(self.ffmpegs.values()), grace=5.0)


# ------------------------------------------------------------------------------------------------------- gateway

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus text exposition: (name, sorted labels) -> value."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match.group(3) or "")))
        try:
            samples[(match.group(1), labels)] = float(match.group(4))
        except ValueError:
            continue
    return samples


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_sum(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; ``None`` when there is none."""
    values = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    return sum(values) if values else None


def histogram_quantiles(before: Samples, after: Samples, name: str, quantiles: tuple[float, ...],
                        **labels: str) -> tuple[list[float | None], int]:
    """Quantiles of the observations of histogram ``name`` made between two scrapes (bucket counts subtracted,
    linear within a bucket, as Prometheus's ``histogram_quantile``), and how many there were."""
    buckets: dict[float, float] = {}
    for (n, ls), value in after.items():
        if n != f"{name}_bucket" or not set(labels.items()) <= set(ls):
            continue
        le = dict(ls).get("le")
        if le is None:
            continue
        bound = float("inf") if le == "+Inf" else float(le)
        earlier = before.get((n, ls), 0.0)
        buckets[bound] = buckets.get(bound, 0.0) + value - earlier
    if not buckets:
        return [None for _ in quantiles], 0
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    results: list[float | None] = []
    for q in quantiles:
        if total <= 0:
            results.append(None)
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        estimate: float | None = None
        for bound in bounds:
            count = buckets[bound]
            if count >= rank:
                if bound == float("inf"):
                    estimate = lower_bound  # above the largest finite bucket: its bound is all we know
                else:
                    span = count - lower_count
                    estimate = lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
                break
            lower_bound, lower_count = bound, count
        results.append(estimate)
    return results, int(total)


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pooled client expects

    def do_POST(self) -> None:  # noqa: N802 -- http.server's name
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"{}"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway gave up on this event (its POST timed out, or it is stopping): nothing to answer

    def log_message(self, *_args: Any) -> None:
        pass


class CallAppSink:
    """A CallApp receiver that answers every event 200 at once, so that the gateway does not retry."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", free_tcp_port()), _Sink)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/CallApp"
        self._thread = threading.Thread(target=self.server.serve_forever, name="callapp-sink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gateway:
    name = "gateway"
    prefix = "gw"

    # The gateway's GET /metrics (wcsgw/metrics.py).
    LATENCY = "wcsgw_rtp_to_rtmp_latency_seconds"  # histogram, every frame (audio and video), no media label yet
    SETUP = "wcsgw_call_setup_seconds"  # histogram: call/startup to the first keyframe written to RTMP
    LAG = "wcsgw_reactor_lag_seconds"  # histogram
    MEDIA_CPU = "wcsgw_media_cpu_seconds_total"  # counter, phase="read" | "deliver" | "send"
    RECEIVED = "wcsgw_rtp_packets_received_total"
    LOST = "wcsgw_rtp_packets_lost_total"  # RFC 3550
    LATE = "wcsgw_rtp_packets_late_total"  # came after their frame was released: lost for the output
    DROPPED = "wcsgw_rtp_packets_dropped_total"  # malformed, unexpected source, payload type...
    RTMP_DROPPED = "wcsgw_rtmp_dropped_frames_total"  # not sent to RTMP (waiting for a keyframe, back-pressure)
    WORKER_DROPPED = "wcsgw_worker_dropped_total"
    GC_COLLECTIONS = "wcsgw_gc_collections_total"  # counter, generation="0" | "1" | "2"
    GC_PAUSE = "wcsgw_gc_pause_seconds_total"  # counter, generation

    def __init__(self, procs: Processes, workdir: Path, media: Media, *, callapp: CallAppSink,
                 extra_args: list[str] | None = None, root: Path = ROOT,
                 media_ports: tuple[int, int] = GATEWAY_MEDIA_PORTS) -> None:
        """``root``: the tree whose gateway runs (``bench/pair.py`` runs two); ``media_ports``: its RTP range."""
        self.procs = procs
        self.workdir = workdir
        self.media = media
        self.callapp = callapp
        self.extra_args = extra_args or []
        self.root = root
        self.media_ports = media_ports
        self.child: Child | None = None
        self.rest_port = 0
        self._before: Samples = {}
        self.metrics_available = False

    # -- REST ---------------------------------------------------------------------------------------------------

    def _post(self, method: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}/rest-api/{method}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                content = response.read()
                return response.status, json.loads(content) if content else None
        except TimeoutError:
            raise RuntimeError(f"the gateway did not answer {method} within {timeout:.0f} s") from None
        except urllib.error.HTTPError as error:
            content = error.read()
            try:
                return error.code, json.loads(content) if content else None
            except ValueError:
                return error.code, content.decode("utf-8", "replace")

    def scrape(self) -> Samples:
        """``GET /metrics``; empty when the gateway has none (yet)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/metrics", timeout=5) as response:
                samples = parse_prometheus(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, ValueError):
            return {}
        self.metrics_available = self.metrics_available or bool(samples)
        return samples

    # -- the interface ------------------------------------------------------------------------------------------

    def start(self, calls: list[Call]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rest_port = free_tcp_port()
        twistd = str(Path(sys.executable).with_name("twistd"))
        argv = [twistd, "-n", "--pidfile=", "wcsgw", "--rest-port", str(self.rest_port),
                "--sip-port", str(free_udp_port()), "--sip-address", "127.0.0.1", "--public-address", "127.0.0.1",
                "--media-ports", f"{self.media_ports[0]}-{self.media_ports[1]}",
                "--callapp-url", self.callapp.url, "--state-dir", str(self.workdir / "var"), *self.extra_args]
        env = dict(os.environ, PYTHONPATH=str(self.root))
        self.child = self.procs.start("gateway", argv, cwd=self.workdir, log=self.workdir / "gateway.log", env=env)
        wait_until(lambda: tcp_accepts(self.rest_port), 60, "the gateway's REST port", alive=self.child)

    def place_calls(self, calls: list[Call]) -> dict[str, float]:
        placed: dict[str, float] = {}
        for call in calls:
            body = {"callId": call.name, "callee": call.name, "toStream": call.name, "sipDomain": "127.0.0.1",
                    "sipPort": call.far_end.port, "rtmpUrl": call.rtmp_url, "rtmpStream": call.name,
                    "hasAudio": True, "hasVideo": True, "visibleName": "wcsgw bench"}
            started = time.time()
            code, answer = self._post("call/startup", body)
            if code != 200:
                raise RuntimeError(f"call/startup {call.name}: HTTP {code} {answer}")
            placed[call.name] = started
        return placed

    def pids(self) -> list[int]:
        return [self.child.pid] if self.child is not None and self.child.running else []

    def call_states(self) -> dict[str, str]:
        try:
            code, answer = self._post("call/find_all", {}, timeout=10.0)
        except (RuntimeError, OSError) as exc:
            return {"?": f"no answer ({exc})"}
        if code != 200 or not isinstance(answer, list):
            return {}
        return {c.get("callId", "?"): f"{c.get('status')}/{c.get('rtmpStreamStatus')}" for c in answer}

    def mark(self) -> None:
        self._before = self.scrape()

    def counters(self) -> dict[str, Any]:
        """The gateway's counters over the window (the scrapes at its start and end); only what it exposes."""
        after = self.scrape()
        out: dict[str, Any] = {"metrics": bool(after)}
        if not after:
            return out
        before = self._before

        def delta(name: str) -> int | None:
            value = metric_sum(after, name)
            return None if value is None else int(value - (metric_sum(before, name) or 0.0))

        counts = {key: delta(name) for key, name in (
            ("received", self.RECEIVED), ("lost", self.LOST), ("late", self.LATE), ("dropped", self.DROPPED),
            ("rtmp_dropped_frames", self.RTMP_DROPPED), ("worker_dropped", self.WORKER_DROPPED))}
        out["app_detail"] = counts
        if counts["lost"] is not None:
            out["app_lost"] = counts["lost"] + (counts["late"] or 0)
        if counts["received"] is not None:
            out["app_received"] = counts["received"]
        (p50, p99), count = histogram_quantiles(before, after, self.LATENCY, (0.5, 0.99), media="video")
        if count == 0:
            (p50, p99), count = histogram_quantiles(before, after, self.LATENCY, (0.5, 0.99))
        if count:
            out.update(self_latency_p50=p50, self_latency_p99=p99, self_latency_count=count)
        out["self_latency_recent"] = {dict(ls).get("quantile"): v for (n, ls), v in after.items()
                                      if n == f"{self.LATENCY}_recent"}
        for phase in ("read", "deliver", "send"):  # the reactor thread's CPU in media drains and RTMP sends
            spent = metric_sum(after, self.MEDIA_CPU, phase=phase)
            if spent is not None:
                out[f"media_{phase}_cpu_s"] = round(spent - (metric_sum(before, self.MEDIA_CPU, phase=phase) or 0.0), 3)
        full = metric_sum(after, self.GC_COLLECTIONS, generation="2")
        if full is not None:  # the garbage collector's full collections in the window, and their pauses
            out["gc_full"] = int(full - (metric_sum(before, self.GC_COLLECTIONS, generation="2") or 0.0))
            out["gc_full_pause_s"] = round((metric_sum(after, self.GC_PAUSE, generation="2") or 0.0)
                                           - (metric_sum(before, self.GC_PAUSE, generation="2") or 0.0), 4)
            out["gc_pause_s"] = round((metric_sum(after, self.GC_PAUSE) or 0.0)
                                      - (metric_sum(before, self.GC_PAUSE) or 0.0), 4)
        drains = delta("wcsgw_media_drains_total")
        if drains:  # how far apart the media reads were in the window, on average (media_read_interval_light_ms)
            out["media_drains"] = drains
        changes = delta("wcsgw_media_read_interval_changes_total")
        if changes is not None:
            out["media_read_interval_changes"] = changes
        interval = metric_sum(after, "wcsgw_media_read_interval_seconds")
        if interval is not None:
            out["media_read_interval_s"] = interval
        (lag_p99,), lag_count = histogram_quantiles(before, after, self.LAG, (0.99,))
        if lag_count:
            out["reactor_lag_p99"] = lag_p99
        # Set-up happens before the window: the process is this trial's, so its whole histogram is these calls.
        (setup_p50, setup_max), setups = histogram_quantiles({}, after, self.SETUP, (0.5, 1.0))
        if setups:
            out.update(self_setup_p50=setup_p50, self_setup_max=setup_max, self_setup_count=setups)
        return out

    def stop(self) -> None:
        """SIGTERM: the gateway ends its calls itself (BYE) as it shuts down; SIGKILL after 15 s."""
        if self.child is not None:
            self.procs.stop(self.child, grace=15.0)
