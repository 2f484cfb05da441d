"""Tests for wcsgw.tap: command-line options, their errors, and the service tree for each profile."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from wcsgw import config
from wcsgw.backend import CallMedia
from wcsgw.metrics import render
from wcsgw.rtp import udp
from wcsgw.tap import GatewayService, Options, transcode_thread_count


class _UdpPort:
    def __init__(self, port: int) -> None:
        self.port = port

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", self.port or 40000)

    def stopListening(self) -> None:
        return None


class MemoryReactorUdp(MemoryReactorClock):
    """MemoryReactorClock plus listenUDP, which records the UDP ports bound."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[tuple[int, str]] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> _UdpPort:
        self.udpPorts.append((port, interface))
        return _UdpPort(port)


class RecordingConnection:
    """An RTMP connection for ``WriteBatch``: its send says "sent" in ``events``."""

    transport = None
    _held = None

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def _send_queued(self) -> None:
        self.events.append("sent")


def parse(*args: str) -> config.Settings:
    options = Options()
    options.parseOptions(list(args))
    return options.settings


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Run in an empty directory so that no etc/wcsgw.properties is picked up by default.
        self.cwd = Path(self.mktemp()).resolve()
        self.cwd.mkdir()
        old = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, old)

    def test_embedded_defaults(self) -> None:
        """Without options or a settings file the embedded defaults apply: dev profile, REST on 8081."""
        settings = parse()
        self.assertEqual(settings, config.build_settings())
        self.assertEqual((settings.profile, settings.rest_port), ("dev", 8081))

    def test_every_option(self) -> None:
        """Each documented option sets its setting."""
        settings = parse("--profile", "production", "--rest-port", "9001", "--https-port", "9444",
                         "--sip-port", "5070", "--sip-address", "127.0.0.1", "--public-address", "192.0.2.7",
                         "--media-ports", "40000-40100", "--callapp-url", "http://127.0.0.1:9/CallApp",
                         "--state-dir", "/tmp/wcsgw-state")
        self.assertEqual(
            (settings.profile, settings.rest_port, settings.https_port, settings.sip_port, settings.ip_local,
             settings.ip, settings.media_port_from, settings.media_port_to, settings.callapp_url, settings.state_dir),
            ("production", 9001, 9444, 5070, "127.0.0.1", "192.0.2.7", 40000, 40100, "http://127.0.0.1:9/CallApp",
             "/tmp/wcsgw-state"))

    def test_help_documents_options(self) -> None:
        """--help text names every option with its setting and default."""
        text = str(Options())
        for option in ("--config", "--profile", "--rest-port", "--https-port", "--sip-port", "--sip-address",
                       "--public-address", "--media-ports", "--callapp-url", "--state-dir"):
            self.assertIn(option, text)
        self.assertIn("default 8081", text)

    def test_bad_values_name_the_option(self) -> None:
        """A bad value is a usage error naming the option."""
        cases = [
            (["--rest-port", "http"], "--rest-port: expected an integer"),
            (["--https-port", "70000"], "--https-port: expected an integer from 0 to 65535"),
            (["--profile", "prod"], "--profile: expected one of dev, production"),
            (["--sip-address", "localhost"], "--sip-address: expected an IP address"),
            (["--public-address", "a b"], "--public-address: expected an IP address or host name"),
            (["--media-ports", "40000"], "--media-ports: expected FROM-TO"),
            (["--media-ports", "40100-40000"], "--media-ports: FROM must be below TO"),
            (["--callapp-url", "localhost:9091"], "--callapp-url: expected an http:// or https:// URL"),
            (["--config", "/nonexistent/wcsgw.properties"], "--config: cannot read /nonexistent/wcsgw.properties"),
        ]
        for args, message in cases:
            with self.assertRaises(UsageError) as caught:
                parse(*args)
            self.assertIn(message, str(caught.exception))

    def test_config_file_and_override(self) -> None:
        """--config reads a settings file; command-line options override it."""
        path = self.cwd / "my.properties"
        path.write_text("rest_port=9100\nsip_port=5080\n")
        settings = parse("--config", str(path), "--rest-port", "9200")
        self.assertEqual((settings.rest_port, settings.sip_port), (9200, 5080))

    def test_default_config_file_when_present(self) -> None:
        """etc/wcsgw.properties in the working directory is read when no --config is given."""
        (self.cwd / "etc").mkdir()
        (self.cwd / "etc" / "wcsgw.properties").write_text("sip_port=5090\n")
        self.assertEqual(parse().sip_port, 5090)

    def test_bad_config_line_reported_with_file_and_line(self) -> None:
        """A bad line of the settings file is a usage error with file and line number."""
        path = self.cwd / "bad.properties"
        path.write_text("# ok\nrest_port=8081\nmedia_port_from=ten\n")
        with self.assertRaises(UsageError) as caught:
            parse("--config", str(path))
        self.assertIn(f"{path}:3: media_port_from: expected an integer", str(caught.exception))


class ServiceTests(SynchronousTestCase):
    def test_dev_profile_listens_http_only(self) -> None:
        """The dev profile serves REST over HTTP on 127.0.0.1 only, without TLS."""
        reactor = MemoryReactorUdp()
        service = GatewayService(reactor, config.build_settings({"state_dir": self.mktemp()}))
        service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(8081, "127.0.0.1")])
        self.assertEqual(reactor.sslServers, [])
        self.assertEqual(reactor.udpPorts, [(5060, "0.0.0.0")])  # the SIP user agent
        self.successResultOf(service.stopService())

    def test_transcoding_threads_leave_the_reactor_a_core(self) -> None:
        """``transcode_threads=0`` starts one thread per core but one, at least one; a number given is taken."""
        self.assertEqual(transcode_thread_count(0, 2), 1)
        self.assertEqual(transcode_thread_count(0, 8), 7)
        self.assertEqual(transcode_thread_count(0, 1), 1)
        self.assertEqual(transcode_thread_count(0, None), 1)
        self.assertEqual(transcode_thread_count(3, 2), 3)
        service = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp()}))
        self.assertEqual(len(service.pool._threads), transcode_thread_count(0, os.cpu_count()))
        service = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp(),
                                                                            "transcode_threads": 3}))
        self.assertEqual(len(service.pool._threads), 3)

    def test_media_sockets_take_the_read_settings(self) -> None:
        """``media_read_interval_ms``, ``media_read_interval_light_ms`` and ``media_read_interval_quiet_ms``
        (each taken only when longer than the one before, which it needs) and ``media_kernel_timestamps`` reach
        the media sockets."""
        for stamps, every in (("false", False), ("audio", False), ("true", True)):
            service = GatewayService(MemoryReactorUdp(), config.build_settings(
                {"state_dir": self.mktemp(), "media_read_interval_ms": 20, "media_kernel_timestamps": stamps}))
            if service.media_sockets is None:
                raise SkipTest("no epoll here")
            self.assertEqual((service.media_sockets.interval, service.media_sockets.light_interval,
                              service.media_sockets.quiet_interval), (0.02, 0.06, 0.08))
            self.assertIs(service.media_sockets.kernel_timestamps, every)
        for overrides, intervals in (({}, (0.04, 0.06, 0.08)),
                                     ({"media_read_interval_light_ms": 0}, (0.04, 0.0, 0.0)),
                                     ({"media_read_interval_light_ms": 30}, (0.04, 0.0, 0.0)),
                                     ({"media_read_interval_light_ms": 90}, (0.04, 0.09, 0.0)),
                                     ({"media_read_interval_quiet_ms": 0}, (0.04, 0.06, 0.0)),
                                     ({"media_read_interval_quiet_ms": 60}, (0.04, 0.06, 0.0)),
                                     ({"media_read_interval_quiet_ms": 100}, (0.04, 0.06, 0.1)),
                                     ({"media_read_interval_ms": 0}, (0.0, 0.0, 0.0))):
            service = GatewayService(MemoryReactorUdp(), config.build_settings(
                {"state_dir": self.mktemp(), **overrides}))
            sockets = service.media_sockets
            assert sockets is not None
            self.assertEqual((sockets.interval, sockets.light_interval, sockets.quiet_interval), intervals,
                             overrides)
            self.assertIn(f"wcsgw_media_read_interval_seconds {sockets.current_interval:g}\n", render(service))

    def test_transcoding_batches_follow_light_reads(self) -> None:
        """While the media reads are light the transcoding batches wait ``transcode_batch_light_ms`` (40) instead
        of ``transcode_batch_ms`` (20), and back; 0 for the light one keeps the other; no batches stay none."""
        for overrides, light, normal in (({}, 0.04, 0.02), ({"transcode_batch_light_ms": 0}, 0.02, 0.02),
                                         ({"transcode_batch_ms": 0}, 0.0, 0.0)):
            service = GatewayService(MemoryReactorUdp(), config.build_settings(
                {"state_dir": self.mktemp(), **overrides}))
            if service.media_sockets is None:
                raise SkipTest("no epoll here")
            self.assertEqual(service.media_sockets._on_light, service._reads_light)
            self.assertEqual(service.pool.batch_interval, normal)
            service._reads_light(True)
            self.assertEqual(service.pool.batch_interval, light, overrides)
            service._reads_light(False)
            self.assertEqual(service.pool.batch_interval, normal, overrides)

    def _call_ports(self, overrides: dict[str, Any]) -> dict[tuple[str, str], Any]:
        """The media sockets a call binds with these settings, by (kind, channel)."""
        service = GatewayService(MemoryReactorUdp(), config.build_settings(
            {"state_dir": self.mktemp(), "ip_local": "127.0.0.1", **overrides}))
        sockets = service.media_sockets
        if sockets is None:
            raise SkipTest("no epoll here")
        self.addCleanup(sockets.close)
        media = CallMedia(service.backend, None)  # type: ignore[arg-type]
        media.bind()
        return {(kind, channel): port for kind, protocol in media.protocols.items()
                for channel, port in protocol._ports.items()}

    def test_rtmp_chunk_size_reaches_the_streams(self) -> None:
        """``rtmp_chunk_size`` (65536 by default) is what every call's RTMP destinations send with."""
        for overrides, size in (({}, 65536), ({"rtmp_chunk_size": 4096}, 4096)):
            service = GatewayService(MemoryReactorUdp(), config.build_settings(
                {"state_dir": self.mktemp(), "ip_local": "127.0.0.1", **overrides}))
            if service.media_sockets is not None:
                self.addCleanup(service.media_sockets.close)
            self.assertEqual(service.backend.stream_options.rtmp_chunk_size, size)
        for text in ("rtmp_chunk_size=65537", "rtmp_chunk_size=127"):
            with self.assertRaises(config.ConfigError):
                config.read_properties(text, "wcsgw.properties")

    def test_audio_rtp_is_held_for_media_audio_batch_ms(self) -> None:
        """``media_audio_batch_ms`` is the ``hold`` of each call's audio RTP socket; video RTP and every RTCP
        socket deliver at each read; 0: audio too."""
        for batch_ms, hold in ((40, 0.04), (0, 0.0)):
            holds = {key: port.hold for key, port in self._call_ports({"media_audio_batch_ms": batch_ms}).items()}
            self.assertEqual(holds, {("audio", "rtp"): hold, ("audio", "rtcp"): 0.0, ("video", "rtp"): 0.0,
                                     ("video", "rtcp"): 0.0})

    def test_kernel_timestamps_stamp_the_sockets_of_the_media_asked_for(self) -> None:
        """``media_kernel_timestamps``: audio (the default) stamps each call's audio RTP and RTCP sockets with
        the kernel's receive times and not its video's, the audio RTP socket's first datagram of each read only;
        audio-each, every audio datagram; true, every datagram of every socket; false, none."""
        for stamps, kinds, sampled in ((None, {"audio"}, True), ("audio", {"audio"}, True),
                                       ("audio-each", {"audio"}, False), ("true", {"audio", "video"}, False),
                                       ("false", set(), False)):
            overrides = {} if stamps is None else {"media_kernel_timestamps": stamps}
            stamped = {key: (port.stamped, port.socket.getsockopt(socket.SOL_SOCKET, udp.SO_TIMESTAMP),
                             port.stamp_each)
                       for key, port in self._call_ports(overrides).items()}
            self.assertEqual(stamped, {(kind, channel): (kind in kinds, int(kind in kinds),
                                                         not (sampled and (kind, channel) == ("audio", "rtp")))
                                       for kind in ("audio", "video") for channel in ("rtp", "rtcp")}, stamps)

    def test_the_media_drains_carry_the_lag_sample_the_rtmp_sends_and_the_transcoding_batch(self) -> None:
        """While a call's media sockets are read, each timed drain ends with what would otherwise wake the reactor
        for turns of its own: a reactor lag sample (how late the drain's timer ran; the lag monitor's own
        100 ms timer stops meanwhile and comes back after the last call), the RTMP writes queued in the drain
        (``WriteBatch``'s ``callLater(0)``) and the transcoding pool's batch (its 20 ms timer)."""
        reactor = MemoryReactorUdp()
        service = GatewayService(reactor, config.build_settings({"state_dir": self.mktemp(),
                                                                 "ip_local": "127.0.0.1"}))
        sockets = service.media_sockets
        if sockets is None:
            raise SkipTest("no epoll here")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(service.lag._loop.running)
        media = CallMedia(service.backend, None)  # type: ignore[arg-type]
        media.bind()
        self.assertFalse(service.lag._loop.running)
        events: list[str] = []

        def work_of_the_drain() -> None:  # runs first among the hooks: as if the drain's deliveries did it
            service.rtmp_writes.add(RecordingConnection(events))  # type: ignore[arg-type]
            service.pool._put(0, (None, None))
            events.append("queued")

        sockets.after_drain.insert(0, work_of_the_drain)
        sockets.after_drain.append(lambda: events.append(f"drain over, batches {service.pool.batches}"))
        samples = service.lag.histogram.count
        reactor.advance(sockets.current_interval + 0.005)
        self.assertEqual(events, ["queued", "sent", "drain over, batches 1"])
        self.assertEqual(service.lag.histogram.count, samples + 1)
        self.assertAlmostEqual(service.lag.last, 0.005)
        for port in {port for protocol in media.protocols.values() for port in protocol._ports.values()}:
            port.stopListening()
        self.assertTrue(service.lag._loop.running)

    def test_transcoding_results_wait_for_the_drains_and_ride_with_their_writes(self) -> None:
        """While a call's media sockets are read (timed drains), the transcoding pool collects its results, and
        each drain hands them over before its RTMP writes go; after the last call's sockets the pool no longer
        collects.  With transcode_results_with_reads=false it never does."""
        for enabled in (True, False):
            reactor = MemoryReactorUdp()
            service = GatewayService(reactor, config.build_settings({
                "state_dir": self.mktemp(), "ip_local": "127.0.0.1",
                "transcode_results_with_reads": enabled}))
            sockets = service.media_sockets
            if sockets is None:
                raise SkipTest("no epoll here")
            service.startService()
            self.addCleanup(service.stopService)
            self.assertFalse(service.pool._collecting)
            media = CallMedia(service.backend, None)  # type: ignore[arg-type]
            media.bind()
            self.assertEqual(service.pool._collecting, enabled)
            events: list[str] = []

            class Lane:
                def _deliver(self, results: list[str]) -> None:
                    events.extend(results)

            def work_of_the_drain() -> None:  # as if the drain's deliveries queued a write
                service.rtmp_writes.add(RecordingConnection(events))  # type: ignore[arg-type]

            sockets.after_drain.insert(0, work_of_the_drain)
            service.pool._collected.append((Lane(), ["aac"]))  # type: ignore[arg-type]
            reactor.advance(sockets.current_interval + 0.005)
            self.assertEqual(events, ["aac", "sent"])
            for port in {port for protocol in media.protocols.values() for port in protocol._ports.values()}:
                port.stopListening()
            self.assertFalse(service.pool._collecting)

    def test_media_first_shares_one_gate(self) -> None:
        """``media_first`` (the default) gives the transcoding pool, the media sockets and the RTMP sends one lock
        (the reactor holds it while it reads media or sends, the pool's threads wait at it); false: none."""
        reactor = MemoryReactorUdp()
        service = GatewayService(reactor, config.build_settings({"state_dir": self.mktemp()}))
        if service.media_sockets is None:
            raise SkipTest("no epoll here")
        gate = service.pool._gate
        self.assertIsNotNone(gate)
        self.assertIs(service.media_sockets._gate, gate)
        self.assertIs(service.rtmp_writes.gate, gate)
        service = GatewayService(reactor, config.build_settings({"state_dir": self.mktemp(), "media_first": False}))
        self.assertIsNone(service.pool._gate)
        self.assertIsNone(service.media_sockets._gate)  # type: ignore[union-attr]
        self.assertIsNone(service.rtmp_writes.gate)

    def test_switch_interval_while_running(self) -> None:
        """While the gateway runs, threads hand the GIL back after 1 ms instead of 5 (the reactor waits less for
        the transcoding threads); stopping restores the interval it found."""
        before = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, before)
        sys.setswitchinterval(0.004)
        service = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp()}))
        service.startService()
        self.assertEqual(sys.getswitchinterval(), 0.001)
        self.successResultOf(service.stopService())
        self.assertEqual(sys.getswitchinterval(), 0.004)

    def test_garbage_collector_tuned_while_running(self) -> None:
        """Started, the gateway freezes what start-up made (full collections skip it) and sets the youngest
        generation's threshold (``gc_freeze``, ``gc_threshold``); its collections show in /metrics; stopping
        gives the collector back as it was.  ``gc_freeze=false`` and ``gc_threshold=0`` leave it alone."""
        import gc

        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)
        service = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp()}))
        service.startService()
        self.assertGreater(gc.get_freeze_count(), 1000)
        self.assertEqual(gc.get_threshold()[0], 20_000)
        gc.collect(0)
        page = render(service)
        self.assertIn('wcsgw_gc_collections_total{generation="0"} ', page)
        self.assertIn(f"wcsgw_gc_frozen_objects {service.gc.frozen}", page)
        self.assertGreaterEqual(service.gc.collections[0], 1)
        self.successResultOf(service.stopService())
        self.assertEqual((gc.get_freeze_count(), gc.get_threshold()), (0, threshold))
        service = GatewayService(MemoryReactorUdp(), config.build_settings(
            {"state_dir": self.mktemp(), "gc_freeze": False, "gc_threshold": 0}))
        service.startService()
        self.assertEqual((gc.get_freeze_count(), gc.get_threshold()), (0, threshold))
        self.successResultOf(service.stopService())

    def test_media_threads_at_realtime_priority_while_running(self) -> None:
        """Started, the gateway raises the thread that starts it (the reactor's) to ``realtime_priority`` (5 by
        default), and each transcoding thread raises itself to the same as it starts; /metrics shows both;
        stopping puts the reactor thread's scheduling back.  A transcoding thread stays normal when the reactor's
        could not be raised."""
        from tests.test_priority import FakeSystem
        from wcsgw.priority import RealtimePriority

        service = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp()}))
        self.assertEqual(service.priority.priority, 5)
        system = FakeSystem()
        service.priority = RealtimePriority(service.priority.priority, system)
        service.startService()
        self.assertEqual((system.policy, system.param), (2 | 0x40000000, ("param", 5)))
        self.assertIn('wcsgw_realtime_priority{thread="reactor"} 5\n', render(service))
        self.assertNotIn('thread="transcoding"', render(service))  # none started yet
        self.assertIs(service.pool._thread_start.__func__, GatewayService._raise_transcoding_thread)
        service.transcoding_priorities.append(RealtimePriority(5, FakeSystem()))  # as a thread's start() would
        service.transcoding_priorities[0].start()
        self.assertIn('wcsgw_realtime_priority{thread="transcoding"} 5\n', render(service))
        self.successResultOf(service.stopService())
        self.assertEqual((system.policy, system.param), (0, ("param", 0)))
        self.assertIn('wcsgw_realtime_priority{thread="reactor"} 0\n', render(service))

        refused = GatewayService(MemoryReactorUdp(), config.build_settings({"state_dir": self.mktemp()}))
        refused.priority = RealtimePriority(5, FakeSystem(refuse=1))
        refused.startService()
        refused._raise_transcoding_thread()  # what a transcoding thread does first: nothing to follow
        self.assertEqual(refused.transcoding_priorities, [])
        self.successResultOf(refused.stopService())
        service = GatewayService(MemoryReactorUdp(), config.build_settings(
            {"state_dir": self.mktemp(), "realtime_priority": 0}))
        self.assertEqual(service.priority.priority, 0)

    def test_production_profile_adds_https_and_generates_certificate(self) -> None:
        """Production serves HTTP and HTTPS on every interface and makes a self-signed certificate once."""
        state = Path(self.mktemp())
        reactor = MemoryReactorUdp()
        settings = config.build_settings({"profile": "production", "state_dir": str(state)})
        service = GatewayService(reactor, settings)
        service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers], [(8081, "0.0.0.0")])
        self.assertEqual([(port, interface) for port, _, _, _, interface in reactor.sslServers], [(8444, "0.0.0.0")])
        cert = (state / "tls" / "wcsgw-cert.pem").read_bytes()
        self.assertIn(b"BEGIN CERTIFICATE", cert)
        self.assertEqual((state / "tls" / "wcsgw-key.pem").stat().st_mode & 0o777, 0o600)
        self.successResultOf(service.stopService())
        GatewayService(MemoryReactorClock(), settings)
        self.assertEqual((state / "tls" / "wcsgw-cert.pem").read_bytes(), cert)

    def test_unusable_certificate_files(self) -> None:
        """Configured certificate files that cannot be used are reported naming the problem."""
        bad = Path(self.mktemp())
        bad.write_text("not a certificate")
        settings = config.build_settings({"profile": "production", "tls_cert_file": str(bad),
                                          "tls_key_file": str(bad), "state_dir": self.mktemp()})
        with self.assertRaises(ValueError) as caught:
            GatewayService(MemoryReactorClock(), settings)
        self.assertIn("bad TLS certificate", str(caught.exception))
