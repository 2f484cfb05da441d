"""Two versions of the gateway side by side, at the same time, each with N calls: a lower-noise A/B.

    .venv/bin/python bench/pair.py --calls 50 --runs 3 HEAD /path/to/a/tree
    .venv/bin/python bench/pair.py --calls 50 HEAD HEAD            # A/A: what the pairing leaves of the noise
    .venv/bin/python bench/pair.py --calls 50 HEAD HEAD -- --gateway-arg=--aac-frames-per-job --gateway-arg=3
        (arguments after ``--`` go to the second side's gateway only)

``bench/ab.py`` runs the sides one after the other, minutes apart, and this machine's speed drifts between runs by
as much as the changes worth measuring (the same code at 100 calls: 0.26 to 0.39 s per call-minute in one
morning).  Here both gateways run in the same window on the same cores, each with its own far end (SIPp) and N
calls, placed alternately, to one nginx-rtmp: what the machine does to one it does to the other.  Each run
prints both sides' CPU seconds per call-minute (all threads, and the reactor's), their reading and handling
phases (``/metrics``) and the ratio B / A; at the end the mean ratio, its standard deviation and the standard
error of the mean.  The sides swap places (ports, far ends, which starts first) from one run to the next.  Each
gateway runs at the machine's load of 2N calls: measure the changes at the N they are for, halved.

A side is a commit (checked out with ``git worktree`` into a temporary directory, removed at the end) or a
directory holding a tree of the project, as in ``bench/ab.py``.  No wire capture: latency is the gateways' own
(``wcsgw_rtp_to_rtmp_latency_seconds``, p99 printed).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import procstat  # noqa: E402
from bench.ab import _tree  # noqa: E402
from bench.media import WORK, ensure_media  # noqa: E402
from bench.peers import FarEnd, Nginx  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.run import log  # noqa: E402
from bench.systems import Call, CallAppSink, Gateway  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: per place (0 and 1): the gateway's RTP port range and its far end's first media port
PLACES = (((28000, 29998), 20000), ((30000, 31998), 22500))


def ratio_summary(ratios: list[float]) -> dict[str, float]:
    """Mean of the per-run ratios B / A, their standard deviation and the standard error of the mean (0 with
    one run)."""
    mean = statistics.fmean(ratios)
    sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    return {"mean": mean, "sd": sd, "sem": sd / math.sqrt(len(ratios)) if len(ratios) > 1 else 0.0}


def side_row(cpu: procstat.CpuSample, n: int, window: float, counters: dict[str, Any]) -> dict[str, Any]:
    """One side's figures over the window: CPU seconds per call-minute in all and of the reactor thread, the
    reactor's reading and handling phases (seconds of the window), its own latency p99 (ms)."""
    minutes = n * window / 60.0
    p99 = counters.get("self_latency_p99")
    return {"total": cpu.total / minutes, "reactor": cpu.main / minutes, "read": counters.get("media_read_cpu_s"),
            "handle": counters.get("media_deliver_cpu_s"), "p99 ms": None if p99 is None else p99 * 1000.0}


def _format(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def run_pair(procs: Processes, nginx: Nginx, callapp: CallAppSink, media: Any, trees: list[Path],
             extras: list[list[str]], n: int, args: argparse.Namespace, run_dir: Path, swap: bool
             ) -> list[dict[str, Any]]:
    """Both gateways with ``n`` calls each over one window; their rows, side A first."""
    order = (1, 0) if swap else (0, 1)  # the place (ports, far end) of side A, then B
    gateways: list[Gateway] = []
    far_ends: list[FarEnd] = []
    try:
        calls: list[list[Call]] = []
        for side, place in enumerate(order):
            ports, far_port = PLACES[place]
            work = run_dir / f"side{side}"
            far = FarEnd(procs, work / "sipp", media, name=f"farend{side}", media_port=far_port)
            far_ends.append(far)
            gateway = Gateway(procs, work / "gateway", media, callapp=callapp, root=trees[side], media_ports=ports,
                              extra_args=["--aac-sample-rate", "source", "--aac-coder", "fast", *extras[side]])
            gateways.append(gateway)
            calls.append([Call(f"p{side}n{n}x{i}", far, nginx.url, False) for i in range(n)])
        first = (1, 0) if swap else (0, 1)  # which side starts, and places each pair of calls, first
        for side in first:
            gateways[side].start(calls[side])
        for i in range(n):  # alternately, so that both set up under the same load
            for side in first:
                gateways[side].place_calls([calls[side][i]])
        names = [c.name for side in calls for c in side]
        deadline = time.monotonic() + args.setup_timeout
        while time.monotonic() < deadline:
            streams = nginx.streams()
            if all(name in streams and streams[name].publishing and streams[name].bytes_in > 0 for name in names):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"not every stream published within {args.setup_timeout:.0f} s")
        time.sleep(args.warmup)
        pids = [gateway.pids() for gateway in gateways]
        for gateway in gateways:
            gateway.mark()
        before = [procstat.cpu_sample(p) for p in pids]
        started = time.time()
        time.sleep(args.duration)
        after = [procstat.cpu_sample(p) for p in pids]
        window = time.time() - started
        counters = [gateway.counters() for gateway in gateways]
        return [side_row(after[side].minus(before[side]), n, window, counters[side]) for side in (0, 1)]
    finally:
        for gateway in gateways:
            gateway.stop()
        procs.stop_many([far.child for far in far_ends], grace=3.0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sides", nargs=2, help="two commits or directories of trees (A, then B)")
    parser.add_argument("--calls", type=int, default=50, help="N per side (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured window per run, s (default 20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="wait after every stream publishes, s")
    parser.add_argument("--setup-timeout", type=float, default=60.0, help="longest wait for the streams, s")
    args = parser.parse_args(own)
    gateway_args = [value.split("=", 1)[1] for value in extra if value.startswith("--gateway-arg=")]
    scratch = Path(tempfile.mkdtemp(prefix="wcsgw-pair-"))
    made: list[Path] = []
    ratios: list[float] = []
    try:
        trees = [_tree(side, scratch, made) for side in args.sides]
        media = ensure_media(args.setup_timeout + args.warmup + args.duration + 30, log=log)
        run_dir = WORK / "runs" / time.strftime("pair-%Y%m%d-%H%M%S")
        run_dir.mkdir(parents=True, exist_ok=True)
        columns = ("total", "reactor", "read", "handle", "p99 ms")
        print("run  side  " + "  ".join(columns) + "  B/A", flush=True)
        with Processes() as procs:
            callapp = CallAppSink()
            procs.add_cleanup(callapp.stop)
            nginx = Nginx(procs, run_dir)
            for run in range(args.runs):
                rows = run_pair(procs, nginx, callapp, media, trees, [[], gateway_args], args.calls, args,
                                run_dir / f"run{run + 1}", swap=bool(run % 2))
                ratio = rows[1]["total"] / rows[0]["total"]
                ratios.append(ratio)
                for name, row in zip("AB", rows):
                    print(f"{run + 1}  {name}  " + "  ".join(_format(row[c]) for c in columns)
                          + (f"  {ratio:.3f}" if name == "B" else ""), flush=True)
    finally:
        for tree in made:
            _remove_worktree(tree)
        shutil.rmtree(scratch, ignore_errors=True)
    summary = ratio_summary(ratios)
    print(f"B/A over {len(ratios)} runs: mean {summary['mean']:.3f}, sd {summary['sd']:.3f}, "
          f"sem {summary['sem']:.3f}")
    return 0


def _remove_worktree(tree: Path) -> None:
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
