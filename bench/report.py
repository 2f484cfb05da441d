"""The results of a bench run: a table (Markdown, also printed), the JSON of every trial, and a PNG plot of CPU and
memory against N for both systems, in ``bench/results/`` with the machine, date and commit; and the ratios the
README quotes."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from wcsgw.media.transcoder import aac_bitrate

ROOT = Path(__file__).resolve().parents[1]
NA = "n/a"


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return NA
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else NA


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return result.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict[str, Any]:
    cpu = NA
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), NA)
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            mem_kb = int(next(line for line in info if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration, ValueError):
        pass
    commit = _git("rev-parse", "--short=12", "HEAD") or NA
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    debian = NA
    if os.path.exists("/etc/debian_version"):
        debian = Path("/etc/debian_version").read_text().strip()
    sipp = _first_line(["sipp", "-v"])
    found = re.search(r"SIPp v[\w.\-]+", sipp)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "debian": debian,
        "python": platform.python_version(),
        "ffmpeg": _first_line(["ffmpeg", "-version"]).split(" Copyright")[0],
        "sipp": found.group(0) if found else sipp,
        "nginx": _first_line(["nginx", "-v"]),
        "commit": commit + ("+dirty" if dirty else ""),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# ------------------------------------------------------------------------------------------------------- numbers

def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares (slope, intercept) of y over x; ``None`` with fewer than two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x


def _complete(trial: dict[str, Any]) -> bool:
    """A trial whose per-call figures mean something: no error and every stream arrived."""
    return "error" not in trial and trial.get("streams_ok") == trial["calls"] and trial.get("cpu_s") is not None


def summarize(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per system: RSS/PSS per call (slope) and base (intercept), largest N held, CPU per call-minute at the
    largest complete N."""
    out: dict[str, dict[str, Any]] = {}
    systems = sorted({t["system"] for t in data["trials"]}, key=["gateway", "baseline"].index)
    for system in systems:
        trials = sorted((t for t in data["trials"] if t["system"] == system), key=lambda t: t["calls"])
        ran = [t for t in trials if "skipped" not in t]
        complete = [t for t in trials if _complete(t)]
        summary: dict[str, Any] = {"tested": [t["calls"] for t in trials]}
        for key in ("rss_kb", "pss_kb"):
            line = fit([(t["calls"], t[key]) for t in complete if t.get(key)])
            summary[f"{key}_per_call"] = line[0] if line else None
            summary[f"{key}_base"] = line[1] if line else None
        # CPU as RSS: the process's CPU seconds per minute over N; the slope is what one more call costs (CPU s
        # per call-minute at the margin), the intercept what the system costs with no call (its fixed part, which
        # CPU per call-minute at a given N spreads over that N's calls)
        line = fit([(t["calls"], t["cpu_per_call_min"] * t["calls"]) for t in complete
                    if t.get("cpu_per_call_min") is not None])
        summary["cpu_per_call_min_slope"] = line[0] if line else None
        summary["cpu_min_base"] = line[1] if line else None
        idle = [t["idle_rss_kb"] for t in trials if t.get("idle_rss_kb")]
        summary["idle_rss_kb"] = sum(idle) / len(idle) if idle else None
        by_n: dict[int, list[dict[str, Any]]] = {}
        for trial in trials:
            by_n.setdefault(trial["calls"], []).append(trial)
        # with --repeat, N counts as held when every one of its trials held
        summary["held_counts"] = {n: (sum(1 for t in group if t.get("held")), len(group)) for n, group in by_n.items()}
        for key, test in (("max_n_held", lambda t: t.get("held")),
                          ("max_n_loss_ok", lambda t: _complete(t) and t.get("loss_pct") is not None
                           and t["loss_pct"] < data["limits"]["loss_pct"])):
            best = None
            for n, group in by_n.items():
                if not all(test(trial) for trial in group):
                    break
                best = n
            summary[key] = best
            summary[f"{key}_is_bound"] = best is not None and bool(ran) and best == ran[-1]["calls"]
        if complete:
            last = complete[-1]
            summary["cpu_per_call_min_at"] = (last["calls"], last["cpu_per_call_min"])
        out[system] = summary
    return out


def ratios(data: dict[str, Any], summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """baseline / gateway (above 1: the gateway needs less) of CPU per call-minute at each N both systems
    completed, and of RSS and PSS per call; and the largest N each held."""
    if not {"gateway", "baseline"} <= summary.keys():
        return {}
    runs: dict[tuple[str, int], list[float]] = {}
    for t in data["trials"]:
        if _complete(t):
            runs.setdefault((t["system"], t["calls"]), []).append(t["cpu_per_call_min"])
    by = {key: statistics.median(values) for key, values in runs.items()}  # the median of repeated trials
    cpu = {}
    for (system, n), value in by.items():
        other = by.get(("gateway", n))
        if system == "baseline" and other and other > 0:
            cpu[n] = value / other
    out: dict[str, Any] = {"cpu_per_call_min": dict(sorted(cpu.items()))}
    for key in ("cpu_per_call_min_slope", "rss_kb_per_call", "pss_kb_per_call"):
        gateway, baseline = summary["gateway"].get(key), summary["baseline"].get(key)
        out[key] = baseline / gateway if gateway and baseline and gateway > 0 else None
    for key in ("max_n_held", "max_n_loss_ok"):
        out[key] = {system: _n_text(summary[system], key) for system in ("gateway", "baseline")}
    out["held_counts"] = {system: summary[system]["held_counts"] for system in ("gateway", "baseline")}
    return out


def _n_text(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    if value is None:
        return "none"
    return f">= {value}" if summary.get(f"{key}_is_bound") else str(value)


# ------------------------------------------------------------------------------------------------------- text

def _f(value: Any, spec: str = ".2f", scale: float = 1.0) -> str:
    if value is None:
        return NA
    return format(value * scale, spec)


def _gc_text(trial: dict[str, Any]) -> str:
    """The gateway's garbage collections in the window: full ones (their pauses in ms) / every pause in ms."""
    if trial.get("gc_full") is None:
        return NA
    return (f"{trial['gc_full']} ({_f(trial.get('gc_full_pause_s'), '.0f', 1e3)}) "
            f"/ {_f(trial.get('gc_pause_s'), '.0f', 1e3)}")


def _ok(trial: dict[str, Any]) -> str:
    return NA if trial.get("streams_ok") is None else f"{trial['streams_ok']}/{trial['calls']}"


def table(data: dict[str, Any]) -> str:
    m = data["machine"]
    aac_rate = data["args"].get("aac_rate", 44100)  # runs saved before --aac-rate resampled to 44.1 kHz
    lines = [
        f"# wcsgw bench, {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Debian {m['debian']}; "
        f"Python {m['python']}, {m['ffmpeg']}, {m['sipp']}, {m['nginx']}. Commit {m['commit']}. "
        f"Load average at start: {' '.join(m['loadavg_at_start'])}.",
        "",
        f"Media per call: H.264 1280x720 25 fps {data['media']['video_bitrate'] / 1e6:.2f} Mbit/s, keyframe every "
        f"{data['media']['keyframe_interval']} s, {data['media']['video_packets_per_second']} video packets/s, "
        f"and PCMU 20 ms (50 packets/s); RTMP: H.264 copied, AAC {aac_rate / 1000:g} kHz mono "
        f"{aac_bitrate(0, aac_rate) // 1000} kbit/s (both systems; AAC coder: gateway "
        f"{data['args'].get('aac_coder', 'twoloop')}, ffmpeg twoloop, its default). "
        f"Window {data['args']['duration']:.0f} s after {data['args']['warmup']:.0f} s of warm-up. "
        "The load generators (SIPp, nginx, tcpdump) share the machine's cores with the system measured.",
        "",
        "| system | N | streams ok | CPU s per call-min | main thread | other threads | CPU % of a core | RSS MB "
        "| PSS MB | threads | loss % | wire latency p50/p99 ms | self latency p50/p99 ms | wire setup s p50/max "
        "| self setup s p50/max | held |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in data["trials"]:
        wire = t.get("wire") or {}
        setups = wire.get("setup") or []
        setup = f"{_f(setups[len(setups) // 2], '.2f')}/{_f(max(setups), '.2f')}" if setups else NA
        self_setup = (f"{_f(t.get('self_setup_p50'), '.2f')}/{_f(t.get('self_setup_max'), '.2f')}"
                      if t.get("self_setup_count") else NA)
        wire_lat = (f"{_f(wire.get('latency_p50'), '.1f', 1e3)}/{_f(wire.get('latency_p99'), '.1f', 1e3)}"
                    if wire.get("latency_p50") is not None else NA)
        self_lat = (f"{_f(t.get('self_latency_p50'), '.1f', 1e3)}/{_f(t.get('self_latency_p99'), '.1f', 1e3)}"
                    if t.get("self_latency_count") else NA)
        held = "yes" if t.get("held") else "no (" + ", ".join(t.get("not_held_because", [])) + ")"
        if "error" in t:
            held = f"no ({t['error'][:80]})"
        if "skipped" in t:
            held = f"not run ({t['skipped']})"
        loss = _f(t.get("loss_pct"), ".3f")
        if t.get("loss_pct") is not None and t.get("loss_source") == "kernel only":
            loss += " (kernel)"
        lines.append(
            f"| {t['system']} | {t['calls']} | {_ok(t)} "
            f"| {_f(t.get('cpu_per_call_min'), '.3f')} | {_f(t.get('cpu_main_per_call_min'), '.3f')} "
            f"| {_f(t.get('cpu_other_per_call_min'), '.3f')} | {_f(t.get('cpu_percent'), '.1f')} "
            f"| {_f(t.get('rss_kb'), '.0f', 1 / 1024)} | {_f(t.get('pss_kb'), '.0f', 1 / 1024)} "
            f"| {t.get('threads', NA)} | {loss} | {wire_lat} | {self_lat} | {setup} | {self_setup} | {held} |")
    lines += ["", "| system | N | machine busy % (100 per core) | SIPp, nginx, tcpdump % of a core | kernel drops "
              "| own lost+late | transcoding dropped | RTMP frames dropped | reactor lag p99 ms "
              "| GC full collections (ms) / all ms | slowest stream kbit/s | teardown s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in data["trials"]:
        if "skipped" in t:
            continue
        detail = t.get("app_detail") or t.get("app_lost_detail") or {}
        lines.append(
            f"| {t['system']} | {t['calls']} | {_f(t.get('machine_busy_percent'), '.0f')} "
            f"| {_f(t.get('generators_cpu_percent'), '.0f')} | {t.get('kernel_drops', NA)} | {t.get('app_lost', NA)} "
            f"| {detail.get('worker_dropped', NA)} | {detail.get('rtmp_dropped_frames', NA)} "
            f"| {_f(t.get('reactor_lag_p99'), '.0f', 1e3)} | {_gc_text(t)} "
            f"| {t.get('stream_kbit_min', NA)} | {t.get('teardown_s', NA)} |")
    summary = summarize(data)
    lines += ["", "| system | CPU s per call-min at the margin | base CPU s per min | RSS per call MB | base RSS MB "
              "| PSS per call MB | base PSS MB | idle RSS MB "
              "| largest N held (loss < 0.1 %, wire p99 < 100 ms, no transcoding drops) "
              "| largest N with loss < 0.1 % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for system, s in summary.items():
        lines.append(
            f"| {system} | {_f(s['cpu_per_call_min_slope'], '.3f')} | {_f(s['cpu_min_base'], '.3f')} "
            f"| {_f(s['rss_kb_per_call'], '.1f', 1 / 1024)} | {_f(s['rss_kb_base'], '.1f', 1 / 1024)} "
            f"| {_f(s['pss_kb_per_call'], '.1f', 1 / 1024)} | {_f(s['pss_kb_base'], '.1f', 1 / 1024)} "
            f"| {_f(s['idle_rss_kb'], '.1f', 1 / 1024)} | {_n_text(s, 'max_n_held')} | {_n_text(s, 'max_n_loss_ok')} |")
    lines += ["", "('>= N': every N tested held, the limit is higher. At the margin and per call: the slope of a "
              "least-squares line over N of the system's CPU seconds per minute (CPU per call-minute times N) or "
              "RSS, every complete trial a point; base: its intercept; idle: the gateway's RSS before its first "
              "call.)"]
    r = ratios(data, summary)
    if r:
        lines += ["", "Ratios " + ratio_sentence(r)]
    else:
        counts = held_counts_text({system: s["held_counts"] for system, s in summary.items()})
        if counts:
            lines += ["", counts]
    threads = [f"N={t['calls']}: " + ", ".join(f"{name} {sec:.2f}" for name, sec in t["cpu_threads_s"].items())
               + (f" (of the main thread: media read {t['media_read_cpu_s']:.2f}, media deliver "
                  f"{t['media_deliver_cpu_s']:.2f}"
                  + (f", RTMP send {t['media_send_cpu_s']:.2f}" if t.get("media_send_cpu_s") is not None else "")
                  + ")" if t.get("media_read_cpu_s") is not None
                  and t.get("media_deliver_cpu_s") is not None else "")
               + (f", media reads {1000 * t['window_s'] / t['media_drains']:.1f} ms apart"
                  if t.get("media_drains") and t.get("window_s") else "")
               for t in data["trials"] if t["system"] == "gateway" and t.get("cpu_threads_s")]
    if threads:
        lines += ["", "Gateway CPU seconds in the window by thread name: " + "; ".join(threads) + "."]
    scheduling: dict[str, set[str]] = {}
    for t in data["trials"]:
        scheduling.setdefault(t["system"], set()).update(t.get("scheduling") or ())
    if any(scheduling.values()):
        lines += ["", "Scheduling of the processes' main threads (the gateway's is its reactor): " + "; ".join(
            f"{system} {', '.join(sorted(policies))}" for system, policies in scheduling.items() if policies) + "."]
    lines += [
        "",
        "CPU: utime+stime of the system's processes in the window (gateway: the twistd process; its main thread is "
        "the reactor; baseline: the sum of the N ffmpeg processes). RSS: median of 1 s samples of the sum of VmRSS; "
        "PSS shares library pages among the processes that map them. Loss: datagrams the kernel dropped on the "
        "system's sockets and the losses the system itself reports (ffmpeg's 'RTP: missed N packets'; the "
        "gateway's wcsgw_rtp_packets_lost_total), the larger, over the packets the far ends sent in the window. "
        f"Wire latency and setup: the {data['args']['sample']} sampled calls of each trial, from tcpdump (see "
        "bench/wire.py); setup starts at call/startup (gateway) or at the INVITE (baseline, ffmpeg already "
        "listening); video frames only. self: the gateway's own histograms wcsgw_rtp_to_rtmp_latency_seconds (every "
        "frame, audio too, within the window) and wcsgw_call_setup_seconds (every call of the trial), quantiles "
        "interpolated within their buckets.",
    ]
    return "\n".join(lines) + "\n"


def ratio_sentence(r: dict[str, Any]) -> str:
    """The ratios in words, baseline / gateway: above 1 the gateway needs less than one ffmpeg per call."""
    parts = []
    if r.get("cpu_per_call_min"):
        parts.append("CPU per call-minute " + ", ".join(f"{v:.2f} at N={n}" for n, v in r["cpu_per_call_min"].items()))
    else:
        parts.append(f"CPU per call-minute {NA}")
    for key, label, spec in (("cpu_per_call_min_slope", "CPU per call-minute at the margin (slope over N)", ".2f"),
                             ("rss_kb_per_call", "RSS per call", ".1f"), ("pss_kb_per_call", "PSS per call", ".1f")):
        parts.append(f"{label} {_f(r.get(key), spec)}")
    text = "baseline / gateway (above 1: the gateway needs less): " + "; ".join(parts) + ". "
    held, loss = r.get("max_n_held", {}), r.get("max_n_loss_ok", {})
    text += (f"Largest N held (loss < 0.1 %, wire p99 < 100 ms, no transcoding drops): gateway "
             f"{held.get('gateway', NA)}, baseline {held.get('baseline', NA)}; on loss alone: gateway "
             f"{loss.get('gateway', NA)}, baseline {loss.get('baseline', NA)} ('>=': every N tested held).")
    counts = held_counts_text(r.get("held_counts") or {})
    return text + (" " + counts if counts else "")


def held_counts_text(counts: dict[str, dict[int, tuple[int, int]]]) -> str:
    """With repeated trials: the trials held per system and N (empty when every N had one trial)."""
    if not any(total > 1 for per_n in counts.values() for _, total in per_n.values()):
        return ""
    return "Trials held per N: " + "; ".join(
        f"{system} " + ", ".join(f"{n}: {held_n}/{total}" for n, (held_n, total) in per_n.items())
        for system, per_n in counts.items()) + " (N held: all of its trials)."


# ------------------------------------------------------------------------------------------------------- plot

def plot(data: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not any(t.get("cpu_s") is not None for t in data["trials"]):
        return False
    colors = {"gateway": "tab:blue", "baseline": "tab:orange"}
    fig, (cpu_ax, mem_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for system in ("gateway", "baseline"):
        trials = sorted((t for t in data["trials"] if t["system"] == system and t.get("cpu_s") is not None),
                        key=lambda t: t["calls"])
        if not trials:
            continue
        ns = [t["calls"] for t in trials]
        cpu_ax.plot(ns, [t["cpu_percent"] for t in trials], "o-", color=colors[system], label=f"{system} total")
        if system == "gateway":
            cpu_ax.plot(ns, [100 * t["cpu_main_s"] / t["window_s"] for t in trials], "s--", color=colors[system],
                        alpha=0.6, label="gateway reactor thread")
        for t in trials:
            if _complete(t):
                continue
            cpu_ax.annotate("incomplete", (t["calls"], t["cpu_percent"]), fontsize=7, color="red")
        mem_ax.plot(ns, [t["rss_kb"] / 1024 for t in trials if t.get("rss_kb")], "o-", color=colors[system],
                    label=f"{system} RSS")
        mem_ax.plot(ns, [t["pss_kb"] / 1024 for t in trials if t.get("pss_kb")], "^:", color=colors[system],
                    label=f"{system} PSS")
    cpu_ax.set_xlabel("concurrent calls N")
    cpu_ax.set_ylabel("CPU, % of one core")
    cpu_ax.set_title("CPU of the system's processes")
    mem_ax.set_xlabel("concurrent calls N")
    mem_ax.set_ylabel("memory, MB")
    mem_ax.set_title("memory of the system's processes")
    for ax in (cpu_ax, mem_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    m = data["machine"]
    fig.suptitle(f"wcsgw bench {m['date']}, commit {m['commit']}: {m['cpu']}, {m['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------------- files

def write(data: dict[str, Any], directory: Path, *, quick: bool) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(data["started"])) + ("-quick" if quick else "")
    text = table(data)
    data = dict(data, summary=summarize(data))
    data["ratios"] = ratios(data, data["summary"])
    paths: dict[str, Any] = {"text": text}
    base = directory / f"bench-{stamp}"
    Path(f"{base}.md").write_text(text, encoding="utf-8")
    Path(f"{base}.json").write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    paths["md"], paths["json"] = Path(f"{base}.md"), Path(f"{base}.json")
    if plot(data, Path(f"{base}.png")):
        paths["png"] = Path(f"{base}.png")
    for kind in ("md", "json", "png"):
        if kind in paths:
            shutil.copyfile(paths[kind], directory / f"latest.{kind}")
    return paths


README_START = ".. bench-results-start"
README_END = ".. bench-results-end"


def readme_block(data: dict[str, Any]) -> str:
    summary = summarize(data)
    r = ratios(data, summary)
    m = data["machine"]
    counts = ", ".join(str(n) for n in data["args"]["call_counts"])
    return (f"Latest ``bench/run.py`` ({m['date'][:10]}, commit {m['commit']}, {m['cpu']}, {m['cores']} cores, "
            f"N = {counts}, {data['args']['duration']:.0f} s windows), one ffmpeg per call against the gateway, "
            f"{ratio_sentence(r) if r else NA} Full table: ``bench/results/latest.md``.")


def update_readme(data: dict[str, Any]) -> bool:
    """Rewrite the block between the README's markers; False (and the block printed) when they are missing."""
    readme = ROOT / "README.rst"
    text = readme.read_text(encoding="utf-8")
    block = readme_block(data)
    if README_START not in text or README_END not in text:
        print(f"README.rst has no {README_START} / {README_END} markers; the block would be:\n\n{block}\n")
        return False
    head, rest = text.split(README_START, 1)
    _old, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n\n{block}\n\n{README_END}{tail}", encoding="utf-8")
    return True
