"""Tests for wcsgw.priority: a media thread at real-time priority, and back."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from wcsgw.priority import RealtimePriority

ROOT = Path(__file__).resolve().parents[1]


class FakeSystem:
    """What RealtimePriority uses of ``os``, recording the calls; ``refuse`` makes sched_setscheduler raise it."""

    SCHED_OTHER = 0
    SCHED_RR = 2
    SCHED_RESET_ON_FORK = 0x40000000

    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.policy = self.SCHED_OTHER
        self.param = self.sched_param(0)
        self.calls: list[tuple[Any, ...]] = []

    @staticmethod
    def sched_param(priority: int) -> tuple[str, int]:
        return ("param", priority)

    def sched_getscheduler(self, pid: int) -> int:
        self.calls.append(("get", pid))
        return self.policy

    def sched_getparam(self, pid: int) -> tuple[str, int]:
        return self.param

    def sched_setscheduler(self, pid: int, policy: int, param: tuple[str, int]) -> None:
        self.calls.append(("set", pid, policy, param))
        if self.refuse is not None:
            raise PermissionError(self.refuse, os.strerror(self.refuse))
        self.policy, self.param = policy, param


class RealtimePriorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("log_level") == LogLevel.warn]

    def test_start_raises_the_calling_thread_and_stop_puts_it_back(self) -> None:
        """``start`` sets SCHED_RR at the priority, with SCHED_RESET_ON_FORK (the threads started later begin
        normal), on the calling thread (pid 0); ``stop`` sets what was there before."""
        system = FakeSystem()
        priority = RealtimePriority(5, system)
        self.assertTrue(priority.start())
        self.assertEqual(system.calls, [("get", 0), ("set", 0, 2 | 0x40000000, ("param", 5))])
        self.assertEqual((priority.applied, priority.error), (5, None))
        self.assertTrue(priority.start())  # started already: nothing more
        self.assertEqual(len(system.calls), 2)
        priority.stop()
        self.assertEqual(system.calls[-1], ("set", 0, 0, ("param", 0)))
        self.assertEqual((system.policy, priority.applied), (0, 0))
        priority.stop()  # stopped already: nothing more
        self.assertEqual(len(system.calls), 3)

    def test_not_permitted_warns_and_runs_normal(self) -> None:
        """Without the right to it (EPERM), the gateway says how to grant it, once, and runs at normal priority;
        ``stop`` then changes nothing."""
        system = FakeSystem(refuse=errno.EPERM)
        priority = RealtimePriority(5, system)
        self.assertFalse(priority.start())
        self.assertEqual((priority.applied, priority.error), (0, os.strerror(errno.EPERM)))
        [warning] = self.warnings()
        self.assertIn("LimitRTPRIO", warning["log_format"])
        self.assertEqual(warning["priority"], 5)
        calls = len(system.calls)
        priority.stop()
        self.assertEqual(len(system.calls), calls)

    def test_quiet_logs_nothing(self) -> None:
        """A quiet one (a transcoding thread's) says nothing either way; its error is kept."""
        priority = RealtimePriority(5, FakeSystem(refuse=errno.EPERM), quiet=True)
        self.assertFalse(priority.start())
        self.assertEqual(priority.error, os.strerror(errno.EPERM))
        self.assertTrue(RealtimePriority(5, FakeSystem(), quiet=True).start())
        self.assertEqual(self.events, [])

    def test_zero_leaves_the_scheduling_alone(self) -> None:
        """``realtime_priority=0``: no call to the scheduler, no warning."""
        system = FakeSystem(refuse=errno.EPERM)
        priority = RealtimePriority(0, system)
        self.assertFalse(priority.start())
        priority.stop()
        self.assertEqual((system.calls, priority.error, self.warnings()), ([], None, []))

    def test_platform_without_round_robin(self) -> None:
        """Where ``os`` has no SCHED_RR (not Linux), the gateway runs normal and says why."""
        priority = RealtimePriority(5, object())
        self.assertFalse(priority.start())
        self.assertIn("no SCHED_RR", priority.error or "")

    def test_priority_range(self) -> None:
        """Real-time priorities are 1 to 99; 0 means none."""
        for bad in (-1, 100):
            with self.assertRaises(ValueError):
                RealtimePriority(bad)

    def test_on_this_kernel(self) -> None:
        """On Linux, in a child process: the thread that starts it runs SCHED_RR at the priority, a thread it
        starts afterwards runs normal (SCHED_RESET_ON_FORK), and stop returns the first to normal."""
        if not sys.platform.startswith("linux"):
            raise SkipTest("SCHED_RR and SCHED_RESET_ON_FORK as Linux has them")
        script = textwrap.dedent("""
            import os, threading
            from wcsgw.priority import RealtimePriority
            def policy():
                return os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK, os.sched_getparam(0).sched_priority
            priority = RealtimePriority(7)
            if not priority.start():
                print("refused", priority.error)
                raise SystemExit(0)
            seen = []
            child = threading.Thread(target=lambda: seen.append(policy()))
            child.start(); child.join()
            print(policy(), seen[0], end=" ")
            priority.stop()
            print(policy())
        """)
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.assertEqual(done.returncode, 0, done.stderr)
        if done.stdout.startswith("refused"):
            raise SkipTest(f"this process may not use real-time priorities: {done.stdout.strip()}")
        self.assertEqual(done.stdout.strip(), f"({os.SCHED_RR}, 7) (0, 0) (0, 0)")
