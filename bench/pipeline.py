"""The reactor thread's work per RTP packet of N calls, in process, without sockets or threads.

    .venv/bin/python -m bench.pipeline                 # 30 s of the bench's media, cost per packet
    .venv/bin/python -m bench.pipeline --profile 25    # and the 25 costliest functions (cProfile)
    .venv/bin/python -m bench.pipeline --calls 10      # ten calls side by side
    .venv/bin/python -m bench.pipeline --null          # the harness's own cost (the datagrams go nowhere)
    .venv/bin/python -m bench.pipeline --bytecodes 20 --kinds video  # Python bytecodes per packet, by function
    .venv/bin/python -m bench.pipeline --instructions --calls 2      # machine instructions per packet (valgrind)
    .venv/bin/python -m bench.pipeline --gap-ms 60 --seconds 10     # each drain after 60 ms asleep, as the reactor

The bench's media (``bench/media.py``: 720p H.264 at 1.5 Mbit/s and PCMU at 20 ms) goes through the gateway's
own classes: the datagrams of each ``--interval-ms`` into ``MediaSocketProtocol.datagrams_arrived``, as
``MediaSockets`` delivers them with the gateway's defaults (each with its drain's time as its arrival; audio held
``--audio-batch-ms``; the gateway reads a G.711 call's audio instead when its AAC job can be complete, about every
256 ms, which this harness does not follow: its audio deliveries are smaller and more) (RTP parse, latch, stats,
jitter buffer, depacketizer, events), then
``CallStream`` (clock, FLV tags) and ``RtmpPublisher`` over a ``StringTransport`` (after a scripted RTMP
handshake), with a ``MemoryReactorClock`` advanced to each drain's time, so the timers run as they would.

Audio goes to AAC as in the bench (8 kHz, G.711 payloads gathered into one worker job per AAC frame), but the
jobs are dropped instead of transcoded: the worker threads are ``bench/run.py``'s to measure; ``--audio
passthrough`` makes G.711 tags here instead.  What this leaves out: reading the sockets (epoll, ``recvmsg``), the
kernel's work, and the GIL shared with the worker threads; ``bench/run.py`` measures the whole process, which
costs about twice this per packet.

It prints microseconds of CPU per packet and what that makes in seconds per call-minute at the bench's packet
rates.  Use it to see what a change to the per-packet path costs without running the whole bench.  Its figures
include its own work (reading the capture, the batches, the fake reactor and RTMP server): ``--null`` measures
that alone, to be taken off.  ``--bytecodes`` counts the Python bytecodes the gateway's own code runs per packet
(deterministic, unlike CPU time on this noisy machine; C work such as copies and system calls is not in it).
``--instructions`` counts the machine instructions the gateway's work takes per packet, C work included, under
valgrind (``apt-get install valgrind``; about half a minute on two cores): the run of ``2 * seconds`` of media less the run of
``seconds`` (what starting up costs is the same in both), less the same difference with ``--null`` (the
harness), with address-space randomisation off and a fixed hash seed.  Repeated runs agree to about 0.5 %, where
CPU time here varies by 10 % or more: this is the measure to compare two versions of the per-packet path with
(a change that takes 5 % fewer instructions here took about a third as much less CPU in the gateway at 100
calls, whose time goes largely into cache misses that this does not see).

``--gap-ms`` sleeps that long before each drain, as the gateway's reactor waits for its next timed read: the same
work then costs what it costs after the machine has done other things (or idled) in between, which is what one call
alone costs in the gateway.  It prints the CPU per drain; compare it with a run without the gap.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import functools
import gc
import math
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.media import ensure_media, read_pcap_rtp  # noqa: E402
from tests.rtmp_fakes import FakeRtmpServer  # noqa: E402
from wcsgw.rtmp.publisher import RtmpPublisher  # noqa: E402
from wcsgw.rtp.packet import RtpPacket  # noqa: E402
from wcsgw.rtp.params import MediaParams, SessionConfig  # noqa: E402
from wcsgw.rtp.protocol import MediaStreamProtocol  # noqa: E402
from wcsgw.rtp.session import MediaStreamSession  # noqa: E402
from wcsgw.stream import CallStream, StreamOptions  # noqa: E402

FAR = ("127.0.0.1", 40000)
DRAIN_PHASE = 0.0037  # seconds between the far end's frame clock and the drains (see _drains)


@functools.lru_cache(maxsize=2)
def _packets(seconds: float) -> list[tuple[float, str, bytes]]:
    """(time, kind, datagram) of ``seconds`` of the bench's call, video and audio merged in time order."""
    media = ensure_media()
    video = read_pcap_rtp(Path(media.video_pcap))
    start = video[0][0]
    out = [(t - start, "video", data) for t, data in video if t - start < seconds]
    tone = Path(media.audio_ulaw).read_bytes()
    for n in range(int(seconds / 0.02)):
        payload = tone[(n * 160) % (len(tone) - 160):][:160]
        packet = RtpPacket(payload_type=0, sequence_number=n % 65536, timestamp=(n * 160) % 2**32, ssrc=0x1234,
                           payload=payload)
        out.append((n * 0.02, "audio", bytes(packet)))
    out.sort(key=lambda item: item[0])
    return out


def _drains(packets: list[tuple[float, str, bytes]], interval: float, kernel_timestamps: bool = False,
            audio_hold: float = 0.0, phase: float = DRAIN_PHASE
            ) -> list[tuple[float, dict[str, list[tuple[float, bytes]]]]]:
    """The packets as MediaSockets delivers them: every ``interval`` seconds (0: one by one), per socket, each
    with its arrival time: the drain's (as MediaSockets without ``kernel_timestamps``), or its own.  Audio is
    held as ``MediaSockets.bind``'s ``hold`` does (media_audio_batch_ms), with an interval: read only by a drain
    ``hold`` and half an interval after the one that last read it."""
    out: list[tuple[float, dict[str, list[tuple[float, bytes]]]]] = []
    waiting: list[tuple[float, bytes]] = []  # held audio not read yet: (its own time, the datagram)
    read_at = -math.inf  # the drain that last read the held audio
    for when, kind, data in packets:
        # The drains run DRAIN_PHASE after the far end's clock: drains at whole multiples of the interval from the
        # first packet split a frame whose first packet is sent at such a multiple (every 40 ms frame of the
        # capture) from the rest of it; in the gateway the two clocks have no such relation.
        due = when if not interval else (math.floor((when - phase) / interval) + 1) * interval + phase
        if not out or out[-1][0] != due:
            if waiting and out and out[-1][0] - read_at >= audio_hold + interval / 2:
                read_at = out[-1][0]
                out[-1][1]["audio"] = [(own if kernel_timestamps else read_at, datagram) for own, datagram in waiting]
                waiting = []
            out.append((due, {}))
        arrival = when if kernel_timestamps or not interval else due
        if kind == "audio" and audio_hold and interval:
            waiting.append((when, data))
        else:
            out[-1][1].setdefault(kind, []).append((arrival, data))
    return out


class _DiscardingPool:
    """Stands in for the transcoding WorkerPool: items handed to the workers are counted and dropped (the bench
    measures the worker threads; this measures what the reactor thread does to hand them over)."""

    def __init__(self) -> None:
        self.items = 0

    def _assign(self) -> int:
        return 0

    def _release(self, index: int) -> None:
        pass

    def _put(self, index: int, entry: Any) -> None:
        self.items += 1
        lane, _item = entry
        with lane._lock:
            lane._depth -= 1


class Call:
    """One call's reactor-side objects, wired as the backend wires them."""

    def __init__(self, reactor: MemoryReactorClock, audio_output: str = "aac") -> None:
        self.reactor = reactor
        audio = MediaParams(kind="audio", codec="PCMU", payload_type=0, clock_rate=8000, remote_rtp_addr=FAR[0],
                            remote_rtp_port=FAR[1])
        video = MediaParams(kind="video", codec="H264", payload_type=112, clock_rate=90000,
                            remote_rtp_addr=FAR[0], remote_rtp_port=FAR[1] + 2)
        self.pool = _DiscardingPool()
        options = StreamOptions(audio_output=audio_output, aac_sample_rate=0)
        self.stream = CallStream(reactor, "bench", options, audio=audio, video=video,
                                 request_keyframe=lambda: None, publisher_factory=RtmpPublisher,
                                 pool=self.pool)  # type: ignore[arg-type]
        config = SessionConfig()
        now = reactor.seconds()
        self.protocols = {
            kind: MediaStreamProtocol(reactor, MediaStreamSession(params, config, now),
                                      lambda event, kind=kind: self.stream.media_event(kind, event,
                                                                                       reactor.seconds()),
                                      on_events=lambda events, kind=kind: self.stream.media_events(
                                          kind, events, reactor.seconds()))
            for kind, params in (("audio", audio), ("video", video))
        }
        self.publisher = self.stream.add_destination("bench", "rtmp://127.0.0.1/live", "bench", lambda *a: None)
        factory = reactor.tcpClients[-1][2]
        self.rtmp = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.server = FakeRtmpServer()
        self.rtmp.makeConnection(self.transport)
        for _ in range(20):
            data = self.transport.value()
            self.transport.clear()
            if not data:
                break
            reply = self.server.receive(data)
            if reply:
                self.rtmp.dataReceived(reply)
        if not self.publisher.active:
            raise RuntimeError("the scripted RTMP server did not accept the publish")
        self.rtmp_bytes = 0

    def drain(self) -> None:
        self.rtmp_bytes += len(self.transport.value())
        self.transport.clear()


def _count_bytecodes(counts: collections.Counter[str]) -> Any:
    """A ``sys.settrace`` function counting the bytecodes run in each function of the gateway's own code."""
    package = str(ROOT / "wcsgw")

    def trace(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(package):
            return None
        frame.f_trace_opcodes = True
        key = f"{Path(code.co_filename).relative_to(ROOT)}:{code.co_name}"

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                counts[key] += 1
            return local
        return local
    return trace


def run(seconds: float, profile: int, calls: int = 1, interval: float = 0.010, audio: str = "aac",
        kinds: tuple[str, ...] = ("audio", "video"), null: bool = False, bytecodes: bool = False,
        kernel_timestamps: bool = False, audio_hold: float = 0.04, gap: float = 0.0,
        sleep: Any = time.sleep) -> dict[str, Any]:
    """``kinds``: the media fed; ``null``: the protocols drop the datagrams (the harness's own cost);
    ``bytecodes``: count the gateway's bytecodes (``result["bytecodes"]``, by function) instead of profiling;
    ``kernel_timestamps`` and ``audio_hold``: the settings media_kernel_timestamps and media_audio_batch_ms;
    ``gap``: seconds to ``sleep`` before each drain (its CPU is not counted)."""
    packets = [packet for packet in _packets(seconds) if packet[1] in kinds]
    gc.collect()
    reactor = MemoryReactorClock()
    all_calls = [Call(reactor, audio) for _ in range(calls)]
    call = all_calls[0]
    if null:
        for one in all_calls:
            for protocol in one.protocols.values():
                protocol.rtp_protocol.datagrams_arrived = lambda datagrams: None  # type: ignore[method-assign]
    addrs = {"audio": FAR, "video": (FAR[0], FAR[1] + 2)}
    profiler = cProfile.Profile() if profile else None
    counted: collections.Counter[str] = collections.Counter()
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    if bytecodes:
        sys.settrace(_count_bytecodes(counted))
    base = reactor.seconds()
    drains = _drains(packets, interval, kernel_timestamps, audio_hold)
    asleep = 0.0  # CPU time charged within the sleeps (their wake-ups'), which is not the drains'
    for when, batch in drains:
        delay = base + when - reactor.seconds()
        if delay > 0:
            reactor.advance(delay)
        if gap:
            before = time.process_time()
            sleep(gap)
            asleep += time.process_time() - before
        for one in all_calls:  # the same packets to every call, as N far ends sending the same file would
            for kind, datagrams in batch.items():
                one.protocols[kind].rtp_protocol.datagrams_arrived(
                    [(data, addrs[kind], base + arrival) for arrival, data in datagrams])
            one.drain()
    if bytecodes:
        sys.settrace(None)
    if profiler is not None:
        profiler.disable()
    cpu = time.process_time() - started - asleep
    call.drain()
    counts = {kind: sum(1 for _w, k, _d in packets if k == kind) for kind in ("audio", "video")}
    result = {"seconds": seconds, "calls": calls, "packets": len(packets) * calls, **counts, "cpu": cpu,
              "us_per_packet": cpu / len(packets) / calls * 1e6, "s_per_call_minute": cpu / seconds * 60 / calls,
              "drains": len(drains), "us_per_drain": cpu / len(drains) * 1e6 if drains else 0.0,
              "rtmp_kbit_s": call.rtmp_bytes * 8 / seconds / 1000,
              "frames": call.protocols["video"].session.counters.frames if call.protocols["video"].session else 0,
              "bytecodes": dict(counted)}
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    return result


_VALGRIND = ["setarch", "-R", "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]


def instructions_of(report: str) -> int:
    """The instruction count in a cachegrind report (its ``I refs`` line, as ``valgrind`` prints it)."""
    for line in report.splitlines():
        fields = line.split()
        if "refs:" in fields and fields[fields.index("refs:") - 1] == "I":
            return int(fields[-1].replace(",", ""))
    raise ValueError("no 'I refs' line in valgrind's report")


def instructions_per_packet(counts: dict[tuple[bool, float], int], packets: int) -> float:
    """The gateway's instructions per packet from the four runs ``(null, seconds) -> instructions``: the longer
    run less the shorter, less the same for the harness alone, over the packets of the difference."""
    (short, long_) = sorted({seconds for _null, seconds in counts})
    work = counts[(False, long_)] - counts[(False, short)]
    harness = counts[(True, long_)] - counts[(True, short)]
    return (work - harness) / packets


def _instructions(args: argparse.Namespace, kinds: tuple[str, ...]) -> int:
    """``--instructions``: this module under valgrind four times (two at a time), then the count per packet."""
    import concurrent.futures
    import os
    import shutil
    import subprocess

    if shutil.which("valgrind") is None or shutil.which("setarch") is None:
        print("--instructions needs valgrind (apt-get install valgrind) and setarch", file=sys.stderr)
        return 2
    base = [sys.executable, "-m", "bench.pipeline", "--repeat", "1", "--calls", str(args.calls),
            "--interval-ms", str(args.interval_ms), "--kinds", ",".join(kinds), "--audio", args.audio,
            "--audio-batch-ms", str(args.audio_batch_ms)] + (["--kernel-timestamps"] if args.kernel_timestamps else [])
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))

    def count(key: tuple[bool, float]) -> tuple[tuple[bool, float], int]:
        null, seconds = key
        command = _VALGRIND + base + ["--seconds", str(seconds)] + (["--null"] if null else [])
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
        return key, instructions_of(done.stderr)

    keys = [(null, seconds) for null in (False, True) for seconds in (args.seconds, 2 * args.seconds)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        counts = dict(pool.map(count, keys))
    packets = [packet for packet in _packets(2 * args.seconds) if packet[1] in kinds]
    extra = (len(packets) - sum(1 for packet in _packets(args.seconds) if packet[1] in kinds)) * args.calls
    print(f"{instructions_per_packet(counts, extra):.0f} instructions of the gateway's work per packet "
          f"({', '.join(kinds)}; {args.calls} call(s), {args.seconds:g} s of media against {2 * args.seconds:g})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None,
                        help="media time to push through (default 30; 10 with --instructions)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest functions")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the cheapest is reported (default 5)")
    parser.add_argument("--calls", type=int, default=1, help="calls fed side by side (default 1)")
    parser.add_argument("--audio", choices=("aac", "passthrough"), default="aac",
                        help="rtmp_audio: aac (payloads gathered for the workers, which are left out) or passthrough "
                             "(G.711 tags made here)")
    parser.add_argument("--interval-ms", type=float, default=40.0,
                        help="media_read_interval_ms: datagrams come in batches this far apart "
                             "(default 40, as the gateway)")
    parser.add_argument("--kinds", default="audio,video", help="the media fed: audio, video or both (default)")
    parser.add_argument("--kernel-timestamps", action="store_true",
                        help="media_kernel_timestamps: each datagram arrives at its own time, not its drain's")
    parser.add_argument("--audio-batch-ms", type=float, default=40.0,
                        help="media_audio_batch_ms: audio is held this long for larger deliveries (default 40)")
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="sleep this long before each drain, as the reactor between its reads (default 0)")
    parser.add_argument("--null", action="store_true",
                        help="the protocols drop the datagrams: what the harness itself costs, to be taken off")
    parser.add_argument("--bytecodes", type=int, default=0, metavar="N",
                        help="count the Python bytecodes of the gateway's code per packet (one slow run) and list "
                             "the N functions that run the most")
    parser.add_argument("--instructions", action="store_true",
                        help="count the machine instructions of the gateway's work per packet under valgrind "
                             "(--seconds of media against twice that; default here 10 s)")
    args = parser.parse_args(argv)
    kinds = tuple(kind for kind in args.kinds.split(",") if kind)
    if not kinds or not set(kinds) <= {"audio", "video"}:
        parser.error(f"--kinds takes audio, video or both, not {args.kinds!r}")
    if args.seconds is None:
        args.seconds = 10.0 if args.instructions else 30.0
    if args.instructions:
        return _instructions(args, kinds)
    if args.bytecodes:
        r = run(args.seconds, 0, args.calls, args.interval_ms / 1000.0, args.audio, kinds, args.null, True,
                args.kernel_timestamps, args.audio_batch_ms / 1000.0)
        total = sum(r["bytecodes"].values())
        print(f"{total / r['packets']:.0f} Python bytecodes of the gateway's code per packet ({', '.join(kinds)})")
        for name, count in sorted(r["bytecodes"].items(), key=lambda item: -item[1])[:args.bytecodes]:
            print(f"{count / r['packets']:8.1f}  {name}")
        return 0
    r = min((run(args.seconds, args.profile, args.calls, args.interval_ms / 1000.0, args.audio, kinds, args.null,
                 False, args.kernel_timestamps, args.audio_batch_ms / 1000.0, args.gap_ms / 1000.0)
             for _ in range(max(1, args.repeat))),
            key=lambda r: r["cpu"])
    print(f"{r['calls']} call(s), {r['packets']} packets ({r['video']} video, {r['audio']} audio per call) in "
          f"{r['seconds']:g} s of media: "
          f"{r['cpu']:.3f} s CPU, {r['us_per_packet']:.1f} us per packet, {r['s_per_call_minute']:.3f} s per "
          f"call-minute on the reactor thread; {r['us_per_drain']:.0f} us per drain"
          + (f" after {args.gap_ms:g} ms asleep" if args.gap_ms else "")
          + f"; {r['frames']} video frames, RTMP {r['rtmp_kbit_s']:.0f} kbit/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
