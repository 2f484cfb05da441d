"""Checks of the bench's own measuring code (no peers, no sockets but one to 127.0.0.1):
``PYTHONPATH=. .venv/bin/trial bench.test_bench``. Not part of ``make test``."""

from __future__ import annotations

import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from bench.report import fit
from bench.systems import Gateway, histogram_quantiles, parse_prometheus
from bench.wire import flv_nal_units, publish_name, rtmp_messages, rtp_slice_start

BEFORE = """\
# TYPE wcsgw_rtp_to_rtmp_latency_seconds histogram
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.001"} 10
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.01"} 10
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.1"} 10
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="+Inf"} 10
wcsgw_rtp_packets_received_total 1000
wcsgw_rtp_packets_lost_total 3
wcsgw_rtp_packets_late_total 1
wcsgw_gc_collections_total{generation="0"} 40
wcsgw_gc_collections_total{generation="1"} 4
wcsgw_gc_collections_total{generation="2"} 1
wcsgw_gc_pause_seconds_total{generation="0"} 0.02
wcsgw_gc_pause_seconds_total{generation="1"} 0.01
wcsgw_gc_pause_seconds_total{generation="2"} 0.05
wcsgw_media_drains_total 1000
wcsgw_media_read_interval_changes_total 1
wcsgw_media_read_interval_seconds 0.01
"""
AFTER = """\
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.001"} 60
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.01"} 108
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="0.1"} 110
wcsgw_rtp_to_rtmp_latency_seconds_bucket{media="video",le="+Inf"} 110
wcsgw_rtp_packets_received_total 5000
wcsgw_rtp_packets_lost_total 5
wcsgw_rtp_packets_late_total 2
wcsgw_call_setup_seconds_bucket{le="0.1"} 0
wcsgw_call_setup_seconds_bucket{le="0.2"} 1
wcsgw_call_setup_seconds_bucket{le="0.3"} 2
wcsgw_call_setup_seconds_bucket{le="+Inf"} 2
wcsgw_gc_collections_total{generation="0"} 90
wcsgw_gc_collections_total{generation="1"} 9
wcsgw_gc_collections_total{generation="2"} 3
wcsgw_gc_pause_seconds_total{generation="0"} 0.05
wcsgw_gc_pause_seconds_total{generation="1"} 0.03
wcsgw_gc_pause_seconds_total{generation="2"} 0.2
wcsgw_media_drains_total 1500
wcsgw_media_read_interval_changes_total 4
wcsgw_media_read_interval_seconds 0.02
"""


class PrometheusTests(SynchronousTestCase):
    def test_quantiles_of_the_window(self) -> None:
        """Quantiles come from the bucket counts added between two scrapes, linear within a bucket."""
        (p50, p99), count = histogram_quantiles(parse_prometheus(BEFORE), parse_prometheus(AFTER),
                                                "wcsgw_rtp_to_rtmp_latency_seconds", (0.5, 0.99), media="video")
        self.assertEqual(count, 100)
        self.assertAlmostEqual(p50, 0.001)
        self.assertAlmostEqual(p99, 0.055)

    def test_no_histogram(self) -> None:
        """Without the histogram there is no figure, not zero."""
        self.assertEqual(histogram_quantiles({}, {}, "nothing", (0.5,)), ([None], 0))

    def test_gateway_counters_from_metrics(self) -> None:
        """The gateway's counters over the window are read from GET /metrics at the window's start and end."""
        pages = [BEFORE, AFTER]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = pages.pop(0).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        gateway = Gateway.__new__(Gateway)
        gateway.rest_port = server.server_address[1]
        gateway.metrics_available = False
        gateway.mark()
        counters = gateway.counters()
        self.assertEqual(counters["app_lost"], 3)  # 2 lost and 1 late
        self.assertEqual(counters["app_received"], 4000)
        self.assertEqual(counters["self_latency_count"], 100)
        self.assertEqual((counters["self_setup_count"], counters["self_setup_p50"], counters["self_setup_max"]),
                         (2, 0.2, 0.3))
        # the garbage collector in the window: 2 full collections of 150 ms in all, 200 ms of pauses in all
        self.assertEqual((counters["gc_full"], counters["gc_full_pause_s"], counters["gc_pause_s"]), (2, 0.15, 0.2))
        # the media reads in the window, and their interval at its end (media_read_interval_light_ms)
        self.assertEqual((counters["media_drains"], counters["media_read_interval_s"],
                          counters["media_read_interval_changes"]), (500, 0.02, 3))
        from bench.report import _gc_text

        self.assertEqual(_gc_text(counters), "2 (150) / 200")
        self.assertEqual(_gc_text({}), "n/a")

    def test_gateway_without_metrics(self) -> None:
        """A gateway without /metrics gives no counters at all: the report prints n/a."""
        gateway = Gateway.__new__(Gateway)
        gateway.rest_port = 9  # discard: nothing listens
        gateway.metrics_available = False
        gateway.mark()
        self.assertEqual(gateway.counters(), {"metrics": False})


def _chunk0(csid: int, timestamp: int, type_id: int, payload: bytes, chunk_size: int = 128) -> bytes:
    out = bytes([csid]) + timestamp.to_bytes(3, "big") + len(payload).to_bytes(3, "big") + bytes([type_id])
    out += b"\x01\x00\x00\x00" + payload[:chunk_size]
    for start in range(chunk_size, len(payload), chunk_size):
        out += bytes([0xC0 | csid]) + payload[start:start + chunk_size]
    return out


class WireTests(SynchronousTestCase):
    def test_rtmp_messages_across_chunks_and_chunk_size(self) -> None:
        """Messages are rebuilt across chunks, after a Set Chunk Size; each ends at its last byte's offset."""
        publish = (b"\x02\x00\x07publish" + b"\x00" + struct.pack("!d", 5.0) + b"\x05"
                   + b"\x02\x00\x05gw1x0" + b"\x02\x00\x04live")
        video = b"\x17\x01\x00\x00\x00" + struct.pack("!I", 300) + b"\x65" + bytes(range(256)) + bytes(43)
        stream = bytes(3073)
        stream += _chunk0(2, 0, 1, struct.pack("!I", 200))
        stream += _chunk0(3, 0, 20, publish, 200)
        stream += _chunk0(6, 40, 9, video, 200)
        messages = rtmp_messages(stream)
        self.assertEqual([(m[0], m[1]) for m in messages], [(1, 0), (20, 0), (9, 40)])
        self.assertEqual(messages[-1][3], len(stream))
        self.assertEqual(publish_name(messages[1][2]), "gw1x0")
        units = flv_nal_units(messages[2][2])
        self.assertEqual(len(units), 1)
        self.assertEqual(units[0][:3], b"\x65\x00\x01")

    def test_slice_key_of_fu_a_and_single_nal(self) -> None:
        """A FU-A start fragment and a single NAL unit packet give the first bytes of the rebuilt NAL unit."""
        nal = b"\x65" + bytes(range(100))
        header = b"\x80\x70\x00\x01" + bytes(8)
        fu_a = header + bytes([0x60 | 28, 0x80 | 5]) + nal[1:]
        self.assertEqual(rtp_slice_start(fu_a), nal)
        self.assertEqual(rtp_slice_start(header + nal), nal)
        middle = header + bytes([0x60 | 28, 5]) + nal[1:]
        self.assertIsNone(rtp_slice_start(middle))

    def test_a_trial_holds_only_without_loss_drops_or_late_frames(self) -> None:
        """A trial holds when every stream arrived, loss and wire p99 are within bounds and no transcoding queue
        dropped an item; each failure is named."""
        from bench.run import judge

        def trial(**changes: Any) -> dict[str, Any]:
            r: dict[str, Any] = {"streams_ok": 10, "expected_packets": 100_000, "kernel_drops": 0, "app_lost": 50,
                                 "app_detail": {"worker_dropped": 0}, "wire": {"latency_p99": 0.08}}
            r.update(changes)
            judge(r, 10)
            return r

        held = trial()
        self.assertEqual((held["held"], held["not_held_because"], held["loss_pct"]), (True, [], 0.05))
        self.assertEqual(trial(app_detail={"worker_dropped": 3})["not_held_because"], ["transcoding dropped 3"])
        self.assertEqual(trial(app_lost=100, streams_ok=9, wire={"latency_p99": 0.1})["not_held_because"],
                         ["streams 9/10", "loss", "p99"])
        self.assertFalse(trial(wire={})["held"])

    def test_repeated_trials(self) -> None:
        """With --repeat, N is held when every one of its trials held, the held trials are counted per N, and the
        CPU ratio takes the median of each side's trials."""
        from bench.report import held_counts_text, ratio_sentence, ratios, summarize

        def trial(system: str, n: int, held: bool, cpu: float) -> dict[str, Any]:
            return {"system": system, "calls": n, "held": held, "streams_ok": n, "loss_pct": 0.0, "cpu_s": 1.0,
                    "cpu_per_call_min": cpu, "rss_kb": 1000 * n, "pss_kb": 500 * n}

        data = {"limits": {"loss_pct": 0.1}, "trials": [
            trial("gateway", 50, True, 0.5), trial("gateway", 50, True, 0.7),
            trial("gateway", 70, True, 0.5), trial("gateway", 70, False, 0.6), trial("gateway", 70, True, 0.9),
            trial("gateway", 100, True, 0.5),
            trial("baseline", 50, False, 0.8), trial("baseline", 50, False, 1.0),
            trial("baseline", 70, False, 0.9), trial("baseline", 70, False, 0.9), trial("baseline", 70, False, 0.9),
            trial("baseline", 100, False, 0.9)]}
        summary = summarize(data)
        self.assertEqual(summary["gateway"]["held_counts"], {50: (2, 2), 70: (2, 3), 100: (1, 1)})
        self.assertEqual((summary["gateway"]["max_n_held"], summary["gateway"]["max_n_held_is_bound"]), (50, False))
        self.assertEqual((summary["gateway"]["max_n_loss_ok"], summary["gateway"]["max_n_loss_ok_is_bound"]),
                         (100, True))
        self.assertIsNone(summary["baseline"]["max_n_held"])
        r = ratios(data, summary)
        self.assertAlmostEqual(r["cpu_per_call_min"][50], 0.9 / 0.6)
        self.assertAlmostEqual(r["cpu_per_call_min"][70], 0.9 / 0.6)
        self.assertIn("Trials held per N: gateway 50: 2/2, 70: 2/3, 100: 1/1; baseline 50: 0/2", ratio_sentence(r))
        single = {"limits": data["limits"], "trials": [trial("gateway", 50, True, 0.5),
                                                        trial("baseline", 50, False, 0.8)]}
        self.assertNotIn("Trials held per N", ratio_sentence(ratios(single, summarize(single))))
        gateway_only = {"limits": data["limits"], "trials": [t for t in data["trials"] if t["system"] == "gateway"]}
        self.assertEqual(held_counts_text({"gateway": summarize(gateway_only)["gateway"]["held_counts"]}),
                         "Trials held per N: gateway 50: 2/2, 70: 2/3, 100: 1/1 (N held: all of its trials).")

    def test_cpu_at_the_margin(self) -> None:
        """CPU per call-minute at the margin is the slope over N of the process's CPU seconds per minute (every
        complete trial a point), its base the intercept, and the ratio of the slopes is reported with the ratios
        at each N."""
        from bench.report import ratio_sentence, ratios, summarize, table

        def trial(system: str, n: int, per_minute: float) -> dict[str, Any]:
            return {"system": system, "calls": n, "held": True, "streams_ok": n, "loss_pct": 0.0, "cpu_s": 1.0,
                    "cpu_per_call_min": per_minute / n, "rss_kb": 1000 * n, "pss_kb": 500 * n}

        # the gateway: 0.6 s a minute of its own and 0.25 per call; the baseline: 0.65 per call, nothing else
        trials = [trial("gateway", n, 0.6 + 0.25 * n) for n in (1, 10, 100)]
        trials += [trial("baseline", n, 0.65 * n) for n in (1, 10, 100)]
        trials.append({"system": "gateway", "calls": 200, "skipped": "N=100 already failed"})  # not a point
        data = {"limits": {"loss_pct": 0.1}, "trials": trials,
                "machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gib": 1, "kernel": "k", "debian": "12",
                            "python": "3.11", "ffmpeg": "f", "sipp": "s", "nginx": "n", "commit": "x",
                            "loadavg_at_start": ["0", "0", "0"]},
                "media": {"video_bitrate": 1.5e6, "keyframe_interval": 2.0, "video_packets_per_second": 182},
                "args": {"duration": 20, "warmup": 5, "sample": 2}}
        summary = summarize(data)
        self.assertAlmostEqual(summary["gateway"]["cpu_per_call_min_slope"], 0.25)
        self.assertAlmostEqual(summary["gateway"]["cpu_min_base"], 0.6)
        self.assertAlmostEqual(summary["baseline"]["cpu_per_call_min_slope"], 0.65)
        self.assertAlmostEqual(summary["baseline"]["cpu_min_base"], 0.0)
        r = ratios(data, summary)
        self.assertAlmostEqual(r["cpu_per_call_min_slope"], 2.6)
        self.assertAlmostEqual(r["cpu_per_call_min"][1], 0.65 / 0.85)
        self.assertIn("CPU per call-minute at the margin (slope over N) 2.60;", ratio_sentence(r))
        self.assertIn("| gateway | 0.250 | 0.600 | 1.0 |", table(data))
        one_n = {**data, "trials": [trial("gateway", 10, 3.1), trial("baseline", 10, 6.5)]}
        self.assertIsNone(summarize(one_n)["gateway"]["cpu_per_call_min_slope"])  # no line through one N
        self.assertIn("CPU per call-minute at the margin (slope over N) n/a",
                      ratio_sentence(ratios(one_n, summarize(one_n))))

    def test_fit(self) -> None:
        """RSS per call is the slope of a least-squares line over N, base its intercept."""
        slope, intercept = fit([(1, 12.0), (5, 20.0), (10, 30.0)]) or (0, 0)
        self.assertAlmostEqual(slope, 2.0, places=1)
        self.assertIsNone(fit([(5, 1.0), (5, 2.0)]))


class ScenarioTests(SynchronousTestCase):
    def test_templates_render(self) -> None:
        """Both SIPp scenarios render with every placeholder filled."""
        from bench.peers import render

        target = Path(self.mktemp())
        target.mkdir()
        render("uas_farend.xml", target / "a.xml", {"VIDEO_PCAP": "/v.pcap", "AUDIO_ULAW": "/a.ulaw",
                                                    "VIDEO_PT": "112"})
        render("uac_baseline.xml", target / "b.xml", {"VIDEO_PT": "112"})
        self.assertIn('play_pcap_video="/v.pcap"', (target / "a.xml").read_text())
        self.assertRaises(ValueError, render, "uac_baseline.xml", target / "c.xml", {})


class PipelineTests(SynchronousTestCase):
    """``bench/pipeline.py``'s modes (the bench's media are made first if missing, with ffmpeg)."""

    def test_null_bytecodes_and_kinds(self) -> None:
        """``--null`` makes no frames and counts no gateway bytecodes; ``--bytecodes`` counts the gateway's
        functions only; ``--kinds`` feeds one medium."""
        from bench import pipeline

        video = pipeline.run(2.0, 0, kinds=("video",), bytecodes=True)
        self.assertEqual(video["audio"], 0)
        self.assertGreater(video["video"], 100)
        self.assertGreater(video["frames"], 10)
        counts = video["bytecodes"]
        self.assertTrue(all(name.startswith("wcsgw/") for name in counts))
        self.assertGreater(counts["wcsgw/rtp/session.py:_receive_in_order"], 0)
        self.assertGreater(sum(counts.values()) / video["packets"], 100)
        idle = pipeline.run(2.0, 0, null=True, bytecodes=True)
        self.assertEqual((idle["frames"], idle["rtmp_kbit_s"]), (0, 0))
        self.assertEqual(sum(idle["bytecodes"].values()), 0)
        self.assertGreater(idle["audio"], 50)
        with self.assertRaises(SystemExit):
            pipeline.main(["--kinds", "data"])

    def test_gap_before_each_drain(self) -> None:
        """``--gap-ms``: the harness sleeps that long before each drain (the sleeps are not the drains' CPU), and
        reports the CPU per drain."""
        from bench import pipeline

        slept: list[float] = []
        r = pipeline.run(1.0, 0, interval=0.04, gap=0.06, sleep=slept.append)
        self.assertEqual(slept, [0.06] * r["drains"])
        self.assertEqual(r["drains"], len(pipeline._drains(pipeline._packets(1.0), 0.04, False, 0.04)))
        self.assertGreater(r["drains"], 20)
        self.assertAlmostEqual(r["us_per_drain"], r["cpu"] / r["drains"] * 1e6)
        self.assertEqual(pipeline.run(1.0, 0, interval=0.04, sleep=slept.append)["drains"], r["drains"])
        self.assertEqual(len(slept), r["drains"])  # no gap: no sleep


class TrialOrderTests(SynchronousTestCase):
    def test_the_systems_take_turns_at_each_n(self) -> None:
        """For each N and each repeat every system runs once before the next: the trials a ratio compares run
        next to each other."""
        from bench.run import trial_order

        self.assertEqual(trial_order(["gateway", "baseline"], [10, 50], 2), [
            ("gateway", 10, 0), ("baseline", 10, 0), ("gateway", 10, 1), ("baseline", 10, 1),
            ("gateway", 50, 0), ("baseline", 50, 0), ("gateway", 50, 1), ("baseline", 50, 1)])
        self.assertEqual(trial_order(["gateway"], [1, 5], 1), [("gateway", 1, 0), ("gateway", 5, 0)])


class InstructionsTests(SynchronousTestCase):
    """``bench/pipeline.py --instructions``: what it reads from valgrind and what it makes of the four runs."""

    def test_the_count_is_read_from_the_report(self) -> None:
        from bench import pipeline

        report = ("==123== Cachegrind, a high-precision tracing profiler\n==123== \n"
                  "==123== I   refs:      1,234,567,890\n")
        self.assertEqual(pipeline.instructions_of(report), 1234567890)
        with self.assertRaises(ValueError):
            pipeline.instructions_of("==123== nothing counted\n")

    def test_the_harness_and_start_up_are_taken_off(self) -> None:
        """The gateway's share is the longer run less the shorter, less the harness's same difference."""
        from bench import pipeline

        counts = {(False, 10.0): 900_000, (False, 20.0): 1_500_000, (True, 10.0): 400_000, (True, 20.0): 500_000}
        self.assertEqual(pipeline.instructions_per_packet(counts, 250), (600_000 - 100_000) / 250)


class DrainsTests(SynchronousTestCase):
    def test_arrivals_and_held_audio(self) -> None:
        """``_drains`` hands the packets over as MediaSockets does: each drain's with the drain's time (its own
        with kernel timestamps), audio held for ``audio_hold`` (media_audio_batch_ms) and delivered together."""
        from bench.pipeline import _drains

        packets = [(0.000, "video", b"v0"), (0.001, "video", b"v1"), (0.002, "audio", b"a0"),
                   (0.022, "audio", b"a1"), (0.041, "video", b"v2"), (0.042, "audio", b"a2"),
                   (0.062, "audio", b"a3"), (0.081, "video", b"v3")]
        plain = _drains(packets, 0.01, phase=0.0)
        self.assertEqual([round(when, 3) for when, _ in plain], [0.01, 0.03, 0.05, 0.07, 0.09])
        self.assertEqual(plain[0][1], {"video": [(0.01, b"v0"), (0.01, b"v1")], "audio": [(0.01, b"a0")]})
        stamped = _drains(packets, 0.01, kernel_timestamps=True, phase=0.0)
        self.assertEqual(stamped[0][1]["video"], [(0.0, b"v0"), (0.001, b"v1")])
        # by default the drains are not in step with the far end's frames: one sent at 40 ms from the first
        # packet, a hair early (as float times are), is not split
        frame = [(0.04 - 1e-12, "video", b"f0"), (0.0402, "video", b"f1")]
        self.assertEqual([len(batch["video"]) for _, batch in _drains(frame, 0.01)], [2])
        self.assertEqual([len(batch["video"]) for _, batch in _drains(frame, 0.01, phase=0.0)], [1, 1])
        held = _drains(packets, 0.01, audio_hold=0.04, phase=0.0)
        # a0 read at once (nothing read before), then nothing until 10 + 40 + 5 ms have passed: a1, a2 and a3 at
        # the drain of 70 ms (drains of 50 and 60 ms without packets are not in the list), each at that time
        audio = [(round(when, 3), [(round(t, 3), d) for t, d in batch["audio"]]) for when, batch in held
                 if "audio" in batch]
        self.assertEqual(audio, [(0.01, [(0.01, b"a0")]), (0.07, [(0.07, b"a1"), (0.07, b"a2"), (0.07, b"a3")])])
        self.assertEqual([d for _, batch in held for _, d in batch.get("video", [])], [b"v0", b"v1", b"v2", b"v3"])
        # with kernel timestamps each packet keeps its own time: a hold of 30 ms reads again at 50 ms (40 >= 35)
        stamped_held = _drains(packets, 0.01, kernel_timestamps=True, audio_hold=0.03, phase=0.0)
        audio = [(round(when, 3), [(round(t, 3), d) for t, d in batch["audio"]]) for when, batch in stamped_held
                 if "audio" in batch]
        self.assertEqual(audio, [(0.01, [(0.002, b"a0")]), (0.05, [(0.022, b"a1"), (0.042, b"a2")])])


class AbTests(SynchronousTestCase):
    def test_rows_and_medians(self) -> None:
        """A gateway trial of ``bench/run.py`` becomes a row; the medians are per side, of numbers only."""
        from bench.ab import medians, trial_row

        trial = {"system": "gateway", "cpu_per_call_min": 0.6, "cpu_main_per_call_min": 0.4, "media_read_cpu_s": 1.2,
                 "media_deliver_cpu_s": 4.0, "media_send_cpu_s": 0.7, "loss_pct": 0.0, "held": True,
                 "wire": {"latency_p99": 0.031}}
        row = trial_row(trial)
        self.assertEqual((row["total"], row["reactor"], row["handle"], row["held"]), (0.6, 0.4, 4.0, True))
        self.assertAlmostEqual(row["wire p99 ms"], 31.0)
        self.assertIsNone(trial_row({**trial, "wire": None})["wire p99 ms"])
        rows = [("old", row), ("new", {**row, "total": 0.5}), ("old", {**row, "total": 0.7}),
                ("new", {**row, "total": 0.54, "send": None})]
        result = medians(rows)
        self.assertAlmostEqual(result["old"]["total"], 0.65)
        self.assertAlmostEqual(result["new"]["total"], 0.52)
        self.assertAlmostEqual(result["new"]["send"], 0.7)  # the run without it is left out
        self.assertNotIn("held", result["old"])


class PairTests(SynchronousTestCase):
    def test_rows_and_the_ratio_summary(self) -> None:
        """A side's row is its CPU per call-minute (all and reactor) over the window, its phases and latency p99 in
        ms; the summary of the ratios B / A is their mean, standard deviation and standard error."""
        from bench.pair import ratio_summary, side_row
        from bench.procstat import CpuSample

        row = side_row(CpuSample(total=6.0, main=4.5), 30, 20.0,
                       {"media_read_cpu_s": 0.8, "media_deliver_cpu_s": 2.1, "self_latency_p99": 0.025})
        self.assertAlmostEqual(row["total"], 0.6)  # 6 s over 30 calls for a third of a minute
        self.assertAlmostEqual(row["reactor"], 0.45)
        self.assertEqual((row["read"], row["handle"]), (0.8, 2.1))
        self.assertAlmostEqual(row["p99 ms"], 25.0)
        self.assertIsNone(side_row(CpuSample(total=1.0), 1, 60.0, {})["p99 ms"])
        summary = ratio_summary([0.96, 1.0, 1.04])
        self.assertAlmostEqual(summary["mean"], 1.0)
        self.assertAlmostEqual(summary["sd"], 0.04)
        self.assertAlmostEqual(summary["sem"], 0.04 / 3 ** 0.5)
        self.assertEqual(ratio_summary([0.9]), {"mean": 0.9, "sd": 0.0, "sem": 0.0})


class SchedulingTests(SynchronousTestCase):
    def test_scheduling_of_a_process(self) -> None:
        """``procstat.scheduling`` names a main thread's policy, with its priority when real-time; None once the
        process is gone."""
        import shutil
        import subprocess

        from bench import procstat

        self.assertEqual(procstat.scheduling(os.getpid()), "SCHED_OTHER")
        chrt = shutil.which("chrt")
        if chrt is None:
            raise SkipTest("no chrt (util-linux) to start a real-time process with")
        child = subprocess.Popen([chrt, "--rr", "3", "sleep", "30"], stderr=subprocess.PIPE)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        import time

        deadline = time.monotonic() + 30
        while child.poll() is None and time.monotonic() < deadline:  # until chrt has become sleep, or failed
            try:
                if Path(f"/proc/{child.pid}/comm").read_text().strip() == "sleep":
                    break
            except OSError:
                pass
            time.sleep(0.01)
        if child.returncode is not None:
            raise SkipTest(f"chrt may not start real-time processes here: {child.stderr.read().decode()!r}")
        self.assertEqual(procstat.scheduling(child.pid), "SCHED_RR 3")
        child.kill()
        child.wait()
        self.assertIsNone(procstat.scheduling(child.pid))

    def test_report_names_the_scheduling(self) -> None:
        """The report says how each system's main threads were scheduled, when the trials recorded it."""
        import json

        from bench.report import table

        data = json.loads((Path(__file__).parent / "results" / "bench-20261126-211319.json").read_text())
        self.assertNotIn("Scheduling of the processes' main threads", table(data))
        for trial in data["trials"]:
            trial["scheduling"] = ["SCHED_RR 5"] if trial["system"] == "gateway" else ["SCHED_OTHER"]
        self.assertIn("Scheduling of the processes' main threads (the gateway's is its reactor): "
                      "gateway SCHED_RR 5; baseline SCHED_OTHER.", table(data))
