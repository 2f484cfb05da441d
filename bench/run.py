"""wcsgw bench (issue 6): the gateway against one ffmpeg per call, on this machine, in one run.

    .venv/bin/python bench/run.py --quick                      # make bench: N = 1, 5, 10; 15 s windows
    .venv/bin/python bench/run.py --calls 1,10,20,40 --duration 60
    .venv/bin/python bench/run.py --systems baseline --calls 1,5,10
    .venv/bin/python bench/run.py --calls 50,70,100 --repeat 3 --duration 20   # N held: all 3 trials held

For each system and each N (a trial): a fresh far end (SIPp answering and sending 720p H.264 at ~1.5 Mbit/s and
PCMU, from files made once by bench/media.py), the system (the gateway process, or N ffmpeg processes), N calls
placed; once every stream publishes at nginx-rtmp and ``--warmup`` seconds passed, a window of ``--duration``
seconds is measured; then everything of the trial is stopped. nginx-rtmp runs for the whole run.

Measured in the window, for the system's processes only (see procstat.py, wire.py): CPU seconds per call-minute
(the gateway's reactor thread and other threads apart), RSS and PSS (per call: the slope over N; base: the
intercept, and the gateway's RSS before any call), UDP datagrams the kernel dropped on the system's sockets and
the system's own loss counters, RTP-to-RTMP latency of the sampled calls on the wire (and the gateway's own
histogram), call setup (start of the call to its first keyframe at RTMP). A trial *holds* when every stream
arrived at nginx at a plausible rate, loss < 0.1 %, wire p99 latency < 100 ms, and the gateway's transcoding
queues dropped nothing (wcsgw_worker_dropped_total: an AAC frame dropped is 128 ms of audio). What cannot be measured is
printed as n/a. Results: bench/results/ (table, JSON, PNG), with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import procstat, report  # noqa: E402
from bench.media import WORK, Media, ensure_media  # noqa: E402
from bench.peers import MAIN_FAR_END_MEDIA, SAMPLE_FAR_END_MEDIA, FarEnd, Nginx  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.systems import Baseline, Call, CallAppSink, Gateway  # noqa: E402
from bench.wire import Capture, analyze  # noqa: E402

LOSS_LIMIT = 0.1  # percent
P99_LIMIT = 0.100  # seconds
MIN_RATE = 0.5  # a stream "arrives" when nginx gets at least this share of the media's bit rate
KEEP_RUNS = 5  # bench/work/runs/ keeps the logs of this many runs


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = q * (len(ordered) - 1)
    low = int(index)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def aac_setting(rate: int) -> str:
    """The gateway's aac_sample_rate for the bench's ``--aac-rate``: PCMU's own rate is ``source``."""
    return "source" if rate == 8000 else str(rate)


def judge(r: dict[str, Any], n: int) -> None:
    """Whether trial ``r`` of ``n`` calls held: sets ``loss_pct``, ``loss_source``, ``held`` and
    ``not_held_because``.  Held: every stream arrived, loss < LOSS_LIMIT, wire p99 < P99_LIMIT, and no media item
    dropped by a full transcoding queue (an AAC frame dropped is 128 ms of a call's audio missing)."""
    reasons = []
    if "error" in r:
        reasons.append("error")
    if r.get("streams_ok") != n:
        reasons.append(f"streams {r.get('streams_ok', 0)}/{n}")
    expected = r.get("expected_packets") or 0
    lost = max(r.get("kernel_drops") or 0, r.get("app_lost") or 0)
    r["loss_pct"] = 100.0 * lost / expected if expected else None
    r["loss_source"] = "app+kernel" if "app_lost" in r else "kernel only"
    if r["loss_pct"] is None or r["loss_pct"] >= LOSS_LIMIT:
        reasons.append("loss")
    transcoding_dropped = (r.get("app_detail") or {}).get("worker_dropped")
    if transcoding_dropped:
        reasons.append(f"transcoding dropped {transcoding_dropped}")
    p99 = (r.get("wire") or {}).get("latency_p99")
    if p99 is None:
        reasons.append("p99 n/a")
    elif p99 >= P99_LIMIT:
        reasons.append("p99")
    r["held"] = not reasons
    r["not_held_because"] = reasons


class Trial:
    """One system with N calls."""

    def __init__(self, args: argparse.Namespace, procs: Processes, nginx: Nginx, media: Media,
                 callapp: CallAppSink | None, system_name: str, n: int, run_dir: Path, repeat: int = 0) -> None:
        self.args = args
        self.procs = procs
        self.nginx = nginx
        self.media = media
        self.callapp = callapp
        self.system_name = system_name
        self.n = n
        self.dir = run_dir / (f"{system_name}-{n}" + (f"-{repeat + 1}" if repeat else ""))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"system": system_name, "calls": n, "repeat": repeat}

    def hold(self) -> float:
        return self.args.setup_timeout + self.args.warmup + self.args.duration + 15

    def run(self) -> dict[str, Any]:
        args, n = self.args, self.n
        sampled = min(args.sample, n)
        far_ends: list[FarEnd] = []
        capture: Capture | None = None
        system: Baseline | Gateway
        if self.system_name == "baseline":
            system = Baseline(self.procs, self.dir / "ffmpeg", self.media, hold=self.hold(), aac_rate=args.aac_rate,
                              realtime_priority=args.baseline_realtime_priority)
        else:
            assert self.callapp is not None
            system = Gateway(self.procs, self.dir / "gateway", self.media, callapp=self.callapp,
                             extra_args=["--aac-sample-rate", aac_setting(args.aac_rate), "--aac-coder",
                                         args.aac_coder, *args.gateway_arg])
        try:
            sample_far = main_far = None
            if sampled:
                sample_far = FarEnd(self.procs, self.dir / "sipp", self.media, name="farend-sample",
                                    media_port=SAMPLE_FAR_END_MEDIA, trace_msg=True)
                far_ends.append(sample_far)
            if n > sampled:
                main_far = FarEnd(self.procs, self.dir / "sipp", self.media, name="farend",
                                  media_port=MAIN_FAR_END_MEDIA)
                far_ends.append(main_far)
            calls = []
            for i in range(n):
                is_sampled = i < sampled
                far = sample_far if is_sampled else main_far
                assert far is not None
                url = self.nginx.sample_url if is_sampled else self.nginx.url
                calls.append(Call(f"{system.prefix}{n}x{i}", far, url, is_sampled))
            if sample_far is not None:
                capture = Capture(self.procs, self.dir / "wire.pcap", rtmp_port=self.nginx.sample_port,
                                  video_source_port=sample_far.video_source_port, sip_port=sample_far.port)
            log(f"{self.system_name} N={n}: starting")
            system.start(calls)
            idle_rss = statistics.median(self._sample_memory(system, 3, 0.3)["rss"]) if system.pids() else 0
            self.result["idle_rss_kb"] = idle_rss if self.system_name == "gateway" else None
            placed = system.place_calls(calls)
            setup_ok = self._wait_streams(system, calls)
            log(f"{self.system_name} N={n}: {setup_ok}/{n} streams publishing; warming up {args.warmup:.0f} s")
            time.sleep(args.warmup)
            self._measure(system, calls)
            if capture is not None:
                capture.stop()
                self.result["tcpdump_dropped"] = capture.dropped
                self._wire(capture, placed if self.system_name == "gateway" else None)
        except Exception as exc:
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            log(f"{self.system_name} N={n}: failed: {exc}")
            with open(self.dir / "error.txt", "w", encoding="utf-8") as error_file:
                traceback.print_exc(file=error_file)
        finally:
            if capture is not None and capture.child.running:
                capture.stop()
            t_stop = time.monotonic()
            system.stop()
            self.procs.stop_many([far.child for far in far_ends], grace=3.0)
            self.result["teardown_s"] = round(time.monotonic() - t_stop, 2)
            if not args.keep_work and capture is not None:
                capture.path.unlink(missing_ok=True)
        self._judge()
        return self.result

    # -- phases ---------------------------------------------------------------------------------------------------

    def _publishing(self, calls: list[Call]) -> int:
        try:
            streams = self.nginx.streams()
        except OSError:
            return 0
        return sum(1 for c in calls if c.name in streams and streams[c.name].publishing
                   and streams[c.name].bytes_in > 0 and streams[c.name].video_codec)

    def _wait_streams(self, system: Baseline | Gateway, calls: list[Call]) -> int:
        deadline = time.monotonic() + self.args.setup_timeout
        count = 0
        while time.monotonic() < deadline:
            count = self._publishing(calls)
            if count == len(calls):
                break
            if not system.pids():
                raise RuntimeError(f"{self.system_name} exited while the calls were set up")
            time.sleep(0.5)
        states = system.call_states()
        self.result["call_states_at_setup"] = _tally(states)
        return count

    def _generator_pids(self, system_pids: list[int]) -> list[int]:
        """The run's other processes (SIPp, nginx and its workers, tcpdump): the load on the same cores."""
        pids = [c.pid for c in self.procs.children if c.running and c.pid not in system_pids]
        return pids + [w for pid in pids for w in procstat.children_of(pid) if w not in system_pids]

    def _sample_memory(self, system: Baseline | Gateway, count: int, interval: float) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"rss": [], "pss": [], "threads": []}
        for i in range(count):
            pids = system.pids()
            out["rss"].append(procstat.rss_kb(pids))
            out["pss"].append(procstat.pss_kb(pids))
            out["threads"].append(procstat.thread_count(pids))
            if i + 1 < count:
                time.sleep(interval)
        return out

    def _measure(self, system: Baseline | Gateway, calls: list[Call]) -> None:
        args, r = self.args, self.result
        pids = system.pids()
        r["processes"] = len(pids)
        r["scheduling"] = sorted({policy for policy in map(procstat.scheduling, pids) if policy})
        streams0 = self.nginx.streams()
        snmp0 = procstat.snmp_udp()
        drops0 = procstat.udp_drops(pids)
        system.mark()
        generators = self._generator_pids(pids)
        machine0 = procstat.machine_busy()
        generators0 = procstat.cpu_sample(generators)
        cpu0 = procstat.cpu_sample(pids)
        t0 = time.time()
        memory: dict[str, list[int]] = {"rss": [], "pss": [], "threads": []}
        while time.time() - t0 < args.duration:
            sample = self._sample_memory(system, 1, 0)
            for key in memory:
                memory[key] += sample[key]
            time.sleep(max(0.0, min(1.0, args.duration - (time.time() - t0))))
        cpu1 = procstat.cpu_sample(pids)
        generators1 = procstat.cpu_sample(generators)
        machine1 = procstat.machine_busy()
        t1 = time.time()
        drops1 = procstat.udp_drops(pids)
        snmp1 = procstat.snmp_udp()
        counters = system.counters()
        streams1 = self.nginx.streams()
        window = t1 - t0
        r["window"] = (t0, t1)
        r["window_s"] = round(window, 3)
        cpu = cpu1.minus(cpu0)
        r["cpu_s"] = round(cpu.total, 3)
        r["cpu_main_s"] = round(cpu.main, 3)
        r["cpu_threads_s"] = {k: round(v, 3) for k, v in sorted(cpu.by_thread.items(), key=lambda kv: -kv[1])}
        r["cpu_per_call_min"] = cpu.total / (self.n * window / 60.0)
        r["cpu_main_per_call_min"] = cpu.main / (self.n * window / 60.0)
        # The process total and its main thread's own figure are read a moment apart: never below zero.
        r["cpu_other_per_call_min"] = max(0.0, cpu.total - cpu.main) / (self.n * window / 60.0)
        r["cpu_percent"] = 100.0 * cpu.total / window
        busy, total = machine1[0] - machine0[0], machine1[1] - machine0[1]
        r["machine_busy_percent"] = 100.0 * busy / total * (os.cpu_count() or 1) if total > 0 else None
        r["generators_cpu_percent"] = 100.0 * generators1.minus(generators0).total / window
        r["rss_kb"] = statistics.median(memory["rss"]) if memory["rss"] else None
        r["pss_kb"] = statistics.median(memory["pss"]) if memory["pss"] else None
        r["threads"] = max(memory["threads"]) if memory["threads"] else None
        r["kernel_drops"] = drops1 - drops0
        r["rcvbuf_errors_machine"] = snmp1["RcvbufErrors"] - snmp0["RcvbufErrors"]
        r["expected_packets"] = int(self.n * self.media.packets_per_second * window)
        r.update(counters)
        # Every stream must arrive, at a plausible rate, with H.264 video and AAC audio.
        ok, rates = 0, []
        for call in calls:
            before, after = streams0.get(call.name), streams1.get(call.name)
            if before is None or after is None or not after.publishing:
                continue
            rate = (after.bytes_in - before.bytes_in) * 8 / window
            rates.append(rate)
            if rate >= MIN_RATE * self.media.video_bitrate and after.video_codec == "H264" \
                    and after.audio_codec == "AAC" and (after.width, after.height) == (1280, 720):
                ok += 1
        r["streams_ok"] = ok
        r["stream_kbit_min"] = round(min(rates) / 1000) if rates else None
        r["stream_kbit_mean"] = round(sum(rates) / len(rates) / 1000) if rates else None
        sample_stream = streams1.get(calls[0].name) if calls else None
        if sample_stream is not None:
            r["stream_meta"] = {"video": f"{sample_stream.video_codec} {sample_stream.width}x{sample_stream.height}",
                                "audio": f"{sample_stream.audio_codec} {sample_stream.sample_rate} Hz"}
        r["call_states_at_end"] = _tally(system.call_states())
        log(f"{self.system_name} N={self.n}: {ok}/{self.n} streams ok, CPU {r['cpu_percent']:.1f} % of a core, "
            f"RSS {r['rss_kb'] / 1024 if r['rss_kb'] else 0:.0f} MB")

    def _wire(self, capture: Capture, starts: dict[str, float] | None) -> None:
        r = self.result
        calls = analyze(capture.path, rtmp_port=self.nginx.sample_port, window=tuple(r["window"]), starts=starts,
                        video_pt=self.media.video_pt)
        latencies = [x for c in calls.values() for x in c.latencies]
        setups = [c.setup for c in calls.values() if c.setup is not None]
        r["wire"] = {
            "calls": len(calls),
            "frames": sum(c.frames_written for c in calls.values()),
            "unmatched": sum(c.frames_unmatched for c in calls.values()),
            "latency_p50": percentile(latencies, 0.50),
            "latency_p99": percentile(latencies, 0.99),
            "latency_max": max(latencies) if latencies else None,
            "setup": sorted(setups),
            "notes": sorted({c.note for c in calls.values() if c.note}),
        }

    def _judge(self) -> None:
        judge(self.result, self.n)


def _tally(states: dict[str, str]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for state in states.values():
        tally[state] = tally.get(state, 0) + 1
    return tally


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--calls", help="N values, comma separated (default 1,5,10,20,40; --quick: 1,5,10)")
    parser.add_argument("--duration", type=float, help="measured window per trial, s (default 60; --quick: 15)")
    parser.add_argument("--warmup", type=float, help="wait after all streams publish, s (default 5; --quick: 3)")
    parser.add_argument("--setup-timeout", type=float, default=30.0, help="longest wait for the streams, s")
    parser.add_argument("--systems", default="gateway,baseline", help="gateway, baseline or both")
    parser.add_argument("--sample", type=int, default=2, help="calls per trial whose wire latency is captured")
    parser.add_argument("--quick", action="store_true", help="the short run of make bench (a few minutes)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="trials per system and N (default 1); N is held when every one of its trials held")
    parser.add_argument("--aac-rate", type=int, choices=(8000, 44100), default=8000,
                        help="AAC sample rate of both systems: 8000 is the issue's baseline command as written "
                             "(ffmpeg keeps PCMU's rate) and the gateway's aac_sample_rate=source; 44100 makes "
                             "both resample (the gateway's default setting)")
    parser.add_argument("--aac-coder", choices=("fast", "twoloop"), default="fast",
                        help="the gateway's aac_coder (its default: fast); ffmpeg's own default is twoloop")
    parser.add_argument("--gateway-arg", action="append", default=[], help="extra twistd wcsgw option (repeat)")
    parser.add_argument("--baseline-realtime-priority", type=int, default=0, metavar="N",
                        help="run each ffmpeg under chrt --rr N, as the gateway runs its media threads by default "
                             "(0: normal priority, the default: the baseline as people run it)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--keep-work", action="store_true", help="keep the trial's capture in bench/work/")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only render a saved run's JSON again (table printed, .md and .png beside it)")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the block between '.. bench-results-start' and '.. bench-results-end' "
                             "in README.rst with the latest ratios")
    args = parser.parse_args(argv)
    defaults = ("1,5,10", 15.0, 3.0) if args.quick else ("1,5,10,20,40", 60.0, 5.0)
    for name, default in zip(("calls", "duration", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    args.call_counts = sorted({int(x) for x in args.calls.split(",") if x.strip()})
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    for system in args.system_list:
        if system not in ("gateway", "baseline"):
            parser.error(f"unknown system {system!r}")
    if not args.call_counts or min(args.call_counts) < 1:
        parser.error("--calls needs positive numbers")
    if args.repeat < 1:
        parser.error("--repeat needs a positive number")
    return args


def trial_order(systems: list[str], counts: list[int], repeat: int) -> list[tuple[str, int, int]]:
    """``(system, N, repeat)`` in the order the trials run: for each N and each repeat, every system one after the
    other, so that the trials a ratio compares run a minute apart, not the length of a whole system's series (this
    machine's speed drifts: ffmpeg's CPU per call-minute at 10 calls was 0.87 in one run and 0.93 in another 15
    minutes later)."""
    return [(system, n, index) for n in counts for index in range(repeat) for system in systems]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        data = json.loads(args.report.read_text(encoding="utf-8"))
        print(report.table(data))
        args.report.with_suffix(".md").write_text(report.table(data), encoding="utf-8")
        report.plot(data, args.report.with_suffix(".png"))
        if args.update_readme:
            report.update_readme(data)
        return 0
    started = time.time()
    machine = report.machine_info()
    log(f"wcsgw bench: {', '.join(args.system_list)} with N = {args.call_counts}, {args.duration:.0f} s windows, "
        f"on {machine['cpu']} ({machine['cores']} cores); commit {machine['commit']}")
    hold = args.setup_timeout + args.warmup + args.duration + 20
    media = ensure_media(hold, log=log)
    run_dir = WORK / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted((WORK / "runs").iterdir())[:-KEEP_RUNS]:  # the logs of the last runs only
        shutil.rmtree(old, ignore_errors=True)
    results: list[dict[str, Any]] = []
    interrupted = False
    with Processes() as procs:
        callapp = CallAppSink() if "gateway" in args.system_list else None
        if callapp is not None:
            procs.add_cleanup(callapp.stop)
        nginx = Nginx(procs, run_dir)
        try:
            collapsed: dict[str, str] = {}  # system -> why its larger N are not run
            for system, n, repeat in trial_order(args.system_list, args.call_counts, args.repeat):
                if system in collapsed:
                    results.append({"system": system, "calls": n, "skipped": collapsed[system]})
                    log(f"{system} N={n}: not run ({collapsed[system]})")
                    continue
                trial = Trial(args, procs, nginx, media, callapp, system, n, run_dir, repeat)
                result = trial.run()
                results.append(result)
                if "error" in result or (result.get("streams_ok") or 0) < n / 2:
                    collapsed[system] = f"N={n} already failed"
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: stopping every process of the run")
    data = {"machine": machine, "started": started, "finished": time.time(), "interrupted": interrupted,
            "args": {k: v for k, v in vars(args).items() if k not in ("results",)}, "media": media.__dict__,
            "trials": results, "limits": {"loss_pct": LOSS_LIMIT, "p99_s": P99_LIMIT}}
    paths = report.write(data, args.results, quick=args.quick)
    print()
    print(paths["text"])
    log(f"results: {', '.join(str(p) for k, p in paths.items() if k != 'text')}; wall time "
        f"{time.time() - started:.0f} s")
    if args.update_readme:
        report.update_readme(data)
    return 130 if interrupted else 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
