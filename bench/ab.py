"""A/B of the gateway alone between commits or trees, the runs alternating, on this machine.

    .venv/bin/python bench/ab.py --calls 50 --runs 2 5810ece HEAD
    .venv/bin/python bench/ab.py --calls 70 HEAD /path/to/a/tree -- --gateway-arg=--config --gateway-arg=x.properties

Each side is a directory holding a tree of the project, or a commit (checked out with ``git worktree`` into a
temporary directory, removed at the end; its ``bench/work`` is this tree's, so the media are made once).  For each
run, side after side, ``bench/run.py --systems gateway`` measures that side's gateway at N calls; arguments after
``--`` go to it.  Printed: per run, CPU seconds per call-minute in all and of the reactor thread, the reactor's
phases in the window (reading the sockets, handling, RTMP sends, from ``/metrics``), loss and wire p99; then the
median of each side.  Single runs at 50 calls differ by about 8 % on this machine: alternate and repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

COLUMNS = ("total", "reactor", "read", "handle", "send", "loss %", "wire p99 ms", "held")


def trial_row(trial: dict[str, Any]) -> dict[str, Any]:
    """The figures of one gateway trial of ``bench/run.py``'s JSON that an A/B compares."""
    wire = trial.get("wire") or {}
    p99 = wire.get("latency_p99")
    return {"total": trial["cpu_per_call_min"], "reactor": trial["cpu_main_per_call_min"],
            "read": trial.get("media_read_cpu_s"), "handle": trial.get("media_deliver_cpu_s"),
            "send": trial.get("media_send_cpu_s"), "loss %": trial["loss_pct"],
            "wire p99 ms": None if p99 is None else p99 * 1000.0, "held": trial["held"]}


def medians(rows: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per side, the median of each numeric figure over its runs (figures a run lacks are left out)."""
    sides: dict[str, dict[str, list[float]]] = {}
    for side, row in rows:
        figures = sides.setdefault(side, {})
        for name in COLUMNS:
            value = row.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                figures.setdefault(name, []).append(float(value))
    return {side: {name: statistics.median(values) for name, values in figures.items()}
            for side, figures in sides.items()}


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _tree(side: str, scratch: Path, made: list[Path]) -> Path:
    if Path(side).is_dir():
        return Path(side).resolve()
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{side}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = scratch / commit[:12]
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        made.append(tree)
        work = tree / "bench" / "work"
        if not work.exists():
            work.symlink_to(ROOT / "bench" / "work")
    return tree


def _run(tree: Path, calls: int, duration: float, extra: list[str], results: Path) -> dict[str, Any]:
    results.mkdir(parents=True)
    subprocess.run([sys.executable, str(tree / "bench" / "run.py"), "--systems", "gateway", "--calls", str(calls),
                    "--duration", str(duration), "--results", str(results), *extra],
                   cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree)), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = json.loads(next(p for p in results.glob("*.json") if p.name != "latest.json").read_text())
    return trial_row(next(t for t in data["trials"] if t["system"] == "gateway"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sides", nargs="+", help="commits or directories of trees, two or more")
    parser.add_argument("--calls", type=int, default=50, help="N (default 50)")
    parser.add_argument("--runs", type=int, default=2, help="runs of each side (default 2)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured window per run, s (default 20)")
    args = parser.parse_args(own)
    if len(args.sides) < 2:
        parser.error("give two sides or more")
    scratch = Path(tempfile.mkdtemp(prefix="wcsgw-ab-"))
    made: list[Path] = []
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        trees = {side: _tree(side, scratch, made) for side in args.sides}
        print("run  side  " + "  ".join(COLUMNS), flush=True)
        for run in range(1, args.runs + 1):
            for side, tree in trees.items():
                row = _run(tree, args.calls, args.duration, extra, scratch / f"results-{run}-{len(rows)}")
                rows.append((side, row))
                print(f"{run}  {side}  " + "  ".join(_format(row[name]) for name in COLUMNS), flush=True)
    finally:
        for tree in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print("median")
    for side, figures in medians(rows).items():
        print(f"  {side}  " + "  ".join(_format(figures.get(name)) for name in COLUMNS if name != "held"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
