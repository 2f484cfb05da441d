"""What the kernel says about a set of processes: CPU time per process and per thread, memory, UDP drops.

Everything comes from /proc and costs a few file reads, so sampling perturbs the measured processes very little:

* CPU: ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``, in clock ticks) of the process, and of each
  thread in ``/proc/PID/task/TID/stat``, named by the thread's ``comm``. The thread whose id is the process id is
  the main thread: the reactor thread of the gateway. A thread that ended between two samples takes its CPU time
  with it from the per-thread view, never from the process total (the kernel adds it to the process).
* memory: ``VmRSS`` of ``/proc/PID/status`` and ``Pss`` of ``/proc/PID/smaps_rollup``. RSS counts shared library
  pages once per process, so a sum of RSS over many ffmpeg processes overstates what they take together; PSS
  splits shared pages among their users and sums correctly.
* UDP: the ``drops`` column of ``/proc/net/udp`` for the sockets these processes hold (found by inode through
  ``/proc/PID/fd``), and the machine-wide ``RcvbufErrors``/``InErrors`` of ``/proc/net/snmp``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_times(path: str) -> tuple[str, float] | None:
    """(comm, utime+stime seconds) of a /proc stat file; None when the task is gone."""
    try:
        with open(path, "rb") as stat_file:
            raw = stat_file.read().decode("ascii", "replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return comm, (int(fields[11]) + int(fields[12])) / CLK_TCK


_POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}


def scheduling(pid: int) -> str | None:
    """The scheduling of the main thread of ``pid``: "SCHED_OTHER", or a real-time policy with its priority
    ("SCHED_RR 5"); None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    priority, policy = int(fields[37]), int(fields[38])  # rt_priority is field 40, policy field 41
    name = _POLICIES.get(policy, f"policy {policy}")
    return f"{name} {priority}" if priority else name


@dataclass
class CpuSample:
    """CPU seconds used so far: per process (total), per thread group name, and of the main threads."""

    total: float = 0.0
    main: float = 0.0
    by_thread: dict[str, float] = field(default_factory=dict)  # comm ("comm (main)") -> seconds, summed by name
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)  # tid -> (comm, seconds)

    def minus(self, earlier: CpuSample) -> CpuSample:
        """The CPU used between ``earlier`` and this sample; per-thread figures only for threads in both."""
        by_thread: dict[str, float] = defaultdict(float)
        threads: dict[int, tuple[str, float]] = {}
        for tid, (comm, seconds) in self.threads.items():
            before = earlier.threads.get(tid, (comm, 0.0))[1]
            threads[tid] = (comm, seconds - before)
            by_thread[comm] += seconds - before
        return CpuSample(self.total - earlier.total, self.main - earlier.main, dict(by_thread), threads)


def cpu_sample(pids: list[int]) -> CpuSample:
    """CPU times of ``pids`` (processes that are gone count 0) and of their threads, keyed by tid."""
    sample = CpuSample()
    by_thread: dict[str, float] = defaultdict(float)
    for pid in pids:
        proc = _stat_times(f"/proc/{pid}/stat")
        if proc is None:
            continue
        sample.total += proc[1]
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            task = _stat_times(f"/proc/{pid}/task/{tid}/stat")
            if task is None:
                continue
            comm, seconds = task
            if tid == pid:
                sample.main += seconds
                comm += " (main)"
            sample.threads[tid] = (comm, seconds)
            by_thread[comm] += seconds
    sample.by_thread = dict(by_thread)
    return sample


def _status_kb(pid: int, key: str, name: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{name}", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pids: list[int]) -> int:
    """Sum of VmRSS (kB)."""
    return sum(_status_kb(pid, "VmRSS") for pid in pids)


def pss_kb(pids: list[int]) -> int:
    """Sum of Pss (kB) from smaps_rollup (0 where the kernel has none)."""
    return sum(_status_kb(pid, "Pss", "smaps_rollup") for pid in pids)


def thread_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return total


def socket_inodes(pids: list[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def udp_sockets(pids: list[int]) -> dict[int, tuple[int, int]]:
    """inode -> (local port, drops) of the UDP sockets that ``pids`` hold."""
    inodes = socket_inodes(pids)
    found: dict[int, tuple[int, int]] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines)
                for line in lines:
                    parts = line.split()
                    inode = int(parts[9])
                    if inode in inodes:
                        found[inode] = (int(parts[1].rsplit(":", 1)[1], 16), int(parts[12]))
        except (OSError, ValueError, IndexError):
            continue
    return found


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped on the sockets of ``pids`` since each socket was made (receive buffer full)."""
    return sum(drops for _port, drops in udp_sockets(pids).values())


def snmp_udp() -> dict[str, int]:
    """The ``Udp:`` counters of /proc/net/snmp (machine-wide): InDatagrams, RcvbufErrors, InErrors, ..."""
    with open("/proc/net/snmp", encoding="ascii") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]
    return {name: int(value) for name, value in zip(rows[0][1:], rows[1][1:], strict=True)}


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat (busy: not idle or
    iowait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    total = sum(fields)
    return (total - fields[3] - fields[4]) / CLK_TCK, total / CLK_TCK


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/PID/task/*/children)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as children:
                found += [int(c) for c in children.read().split()]
    except OSError:
        pass
    return found
