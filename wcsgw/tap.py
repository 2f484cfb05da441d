"""
``twistd wcsgw``: command-line options and the service tree.  The only module that imports the global reactor.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from wcsgw import config
from wcsgw.backend import GatewayBackend, default_public_address
from wcsgw.calls import CallManager, new_node_id
from wcsgw.events import CallAppNotifier, TreqPoster
from wcsgw.media.worker import WorkerPool
from wcsgw.metrics import GcMonitor, ReactorLagMonitor, render
from wcsgw.priority import RealtimePriority
from wcsgw.rest.app import ApiResource, RestApi
from wcsgw.rest.auth import CREDENTIALS_FILE, CredentialStore
from wcsgw.rest.tls import certificate_paths, server_context
from wcsgw.rtmp.protocol import write_batch
from wcsgw.rtp import udp
from wcsgw.rtp.ports import PortAllocator
from wcsgw.rtp.udp import MediaSockets
from wcsgw.sip.protocol import SipUserAgent

log = Logger()

DEFAULT_CONFIG = "etc/wcsgw.properties"


def _option_help(name: str) -> str:
    setting = next(s for s in config.SETTINGS if s.option == name)
    return f"{setting.comment} (setting {setting.name}, default {setting.default_text() or 'empty'})"


SWITCH_INTERVAL = 0.001  # seconds; see GatewayService.startService
# SO_RCVBUF of each media socket: Linux's default (208 KiB, about 90 full-size datagrams as the kernel counts them)
# is half a second of 1.5 Mbit/s video, less during a keyframe; a reactor stalled that long (70 calls set up at
# once) loses packets, and the keyframe requests that follow add work.  The kernel caps it at net.core.rmem_max.
MEDIA_RECEIVE_BUFFER = 1 << 20


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "wcsgw: a SIP-to-RTMP gateway with the REST API of Flashphoner WCS's 'SIP as RTMP'. Settings come from "
        "the embedded defaults, then the settings file, then these options."
    )
    optParameters = [
        ["config", "c", None, f"settings file (default: {DEFAULT_CONFIG} when present)"],
        ["media-ports", None, None, "FROM-TO: the RTP/RTCP port range (settings media_port_from, media_port_to, "
                                    "default 31001-32000)"],
    ] + [[s.option, None, None, _option_help(s.option)] for s in config.SETTINGS if s.option]

    def postOptions(self) -> None:
        file_layer: dict[str, Any] = {}
        path = self["config"]
        if path is None and os.path.exists(DEFAULT_CONFIG):
            path = DEFAULT_CONFIG
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise usage.UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
            try:
                file_layer = config.read_properties(text, path)
            except config.ConfigError as exc:
                raise usage.UsageError(f"--config: {exc}") from None
        cli_layer: dict[str, Any] = {}
        for setting in config.SETTINGS:
            if setting.option and self[setting.option] is not None:
                try:
                    cli_layer[setting.name] = setting.parse(self[setting.option])
                except ValueError as exc:
                    raise usage.UsageError(f"--{setting.option}: {exc}") from None
        if self["media-ports"] is not None:
            cli_layer.update(_media_ports(self["media-ports"]))
        try:
            self.settings = config.build_settings(file_layer, cli_layer)
        except config.ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
        self.config_path = path


def _media_ports(text: str) -> dict[str, int]:
    low, sep, high = text.partition("-")
    try:
        if not sep:
            raise ValueError
        first = config.parse_value("media_port_from", low)
        last = config.parse_value("media_port_to", high)
    except (ValueError, config.ConfigError):
        raise usage.UsageError(f"--media-ports: expected FROM-TO within 1024-65535, got {text!r}") from None
    if first >= last:
        raise usage.UsageError(f"--media-ports: FROM must be below TO, got {text!r}")
    return {"media_port_from": first, "media_port_to": last}


def transcode_thread_count(setting: int, cores: int | None) -> int:
    """The transcoding threads to start: ``transcode_threads``, or for 0 one per core but the reactor's, at least
    one.  The reactor thread needs a core of its own with many calls; at 50 calls on this 2-core machine one
    transcoding thread instead of two took 10 % less CPU in all (fewer wake-ups and GIL hand-overs) and halved the
    latency's p99."""
    if setting:
        return setting
    return max(1, (cores or 2) - 1)


class GatewayService(service.MultiService):
    """The gateway: REST listeners, the call manager, the CallApp notifier, the SIP user agent and media."""

    #: How long shutdown waits for the CallApp receiver to take the last events.
    EVENT_DRAIN_SECONDS = 2.0

    def __init__(self, reactor: Any, settings: config.Settings) -> None:
        super().__init__()
        self.reactor = reactor
        self.settings = settings
        self._switch_interval = sys.getswitchinterval()
        state_dir = Path(settings.state_dir)
        public_address = default_public_address(settings)
        self.poster = TreqPoster(reactor)
        self.notifier = CallAppNotifier(reactor, settings.callapp_url, self.poster,
                                        retry_delays=settings.callapp_retry_delays,
                                        queue_limit=settings.callapp_queue_limit)
        self.agent = SipUserAgent(reactor, bind_address=settings.ip_local, port=settings.sip_port,
                                  public_address=public_address, user_agent=settings.user_agent,
                                  t1=settings.sip_t1, t2=settings.sip_t2, t4=settings.sip_t4)
        allocator = PortAllocator(settings.media_port_from, settings.media_port_to, reactor)
        media = udp.available() and IReactorFDSet.providedBy(reactor)
        gate = threading.Lock() if media and settings.media_first else None  # see WorkerPool's gate
        # The reactor thread and the transcoding threads at one real-time priority (see wcsgw.priority).
        self.priority = RealtimePriority(settings.realtime_priority)
        self.transcoding_priorities: list[RealtimePriority] = []
        self.pool = WorkerPool(reactor, transcode_thread_count(settings.transcode_threads, os.cpu_count()),
                               name="wcsgw-tc",
                               batch_interval=settings.transcode_batch_ms / 1000.0, gate=gate,
                               thread_start=self._raise_transcoding_thread)
        interval, light = settings.media_read_interval_ms, settings.media_read_interval_light_ms
        light = light if light > interval > 0 else 0
        quiet = settings.media_read_interval_quiet_ms
        quiet = quiet if quiet > light > 0 else 0
        self.media_sockets = (MediaSockets(reactor, interval=interval / 1000.0, light_interval=light / 1000.0,
                                           quiet_interval=quiet / 1000.0,
                                           on_light=self._reads_light, on_reading=self._reads_running,
                                           receive_buffer=MEDIA_RECEIVE_BUFFER,
                                           kernel_timestamps=settings.media_kernel_timestamps == "true", gate=gate)
                              if media else None)
        write_batch(reactor).gate = gate
        self.backend = GatewayBackend(reactor, settings, self.agent, allocator, pool=self.pool,
                                      public_address=public_address, media_sockets=self.media_sockets)
        self.manager = CallManager(reactor, self.notifier, node_id=new_node_id(public_address),
                                   ended_call_ttl=settings.ended_call_ttl, backend=self.backend)
        self.backend.manager = self.manager
        credentials = None
        if settings.production:
            credentials = CredentialStore(state_dir / CREDENTIALS_FILE, reactor)
        self.lag = ReactorLagMonitor(reactor)
        if self.media_sockets is not None:
            self.media_sockets.after_drain.append(self._after_drain)
        self.gc = GcMonitor(freeze=settings.gc_freeze, threshold=settings.gc_threshold)
        self.rtmp_writes = write_batch(reactor)
        self.api = RestApi(self.manager, reactor, default_dtmf=settings.dtmf, metrics=lambda: render(self))
        site = Site(ApiResource(self.api.app.resource(), reactor, credentials))
        site.displayTracebacks = False
        bind = settings.rest_bind_address
        http = StreamServerEndpointService(TCP4ServerEndpoint(reactor, settings.rest_port, interface=bind), site)
        http.setName("rest-http")
        http.setServiceParent(self)
        if settings.production:
            cert_path, key_path = certificate_paths(state_dir, settings.tls_cert_file, settings.tls_key_file)
            context = server_context(cert_path, key_path)
            https = StreamServerEndpointService(
                SSL4ServerEndpoint(reactor, settings.https_port, context, interface=bind), site)
            https.setName("rest-https")
            https.setServiceParent(self)

    def _reads_light(self, light: bool) -> None:
        """The media reads went ``media_read_interval_light_ms`` (or ``_quiet_ms``) apart (few calls), or back:
        the transcoding batches follow (``transcode_batch_light_ms``)."""
        batch, light_batch = self.settings.transcode_batch_ms, self.settings.transcode_batch_light_ms
        self.pool.batch_interval = (light_batch if light and light_batch and batch else batch) / 1000.0

    def _reads_running(self, running: bool) -> None:
        """The timed media drains started (the first call's sockets) or stopped: while they run, the reactor's
        lag is how late their timer runs (``_after_drain``), and the lag monitor's own timer, which would wake the
        reactor ten times a second for it, stops.  With ``transcode_results_with_reads`` the transcoding
        threads' results wait for the drains meanwhile (`WorkerPool.collect_results`)."""
        if self.settings.transcode_results_with_reads:
            self.pool.collect_results(running)
        if running:
            self.lag.stop()
        elif self.running:
            self.lag.start()

    def _after_drain(self) -> None:
        """At the end of each timed media drain, in its reactor turn: what would otherwise wake the reactor for
        a turn of its own right after it.  The lag sample; the transcoding results that waited for a drain
        (``transcode_results_with_reads``), first, so that they go with the writes; the RTMP writes the drain queued
        (``WriteBatch``'s ``callLater(0)``); the transcoding pool's batch, when its timer would fire before the next drain (with
        ``transcode_batch_ms`` up to the read interval, every batch is one drain's work anyway)."""
        sockets = self.media_sockets
        assert sockets is not None
        self.lag.observe(sockets.lateness)
        self.pool.deliver_collected()  # before the writes go: the AAC rides with this drain's video
        self.rtmp_writes.send_now()
        if self.pool.batch_interval <= sockets.current_interval:
            self.pool.hand_over_now()

    def _raise_transcoding_thread(self) -> None:
        """In each transcoding thread as it starts (with the first call): the reactor's priority, if the reactor
        has it (a refusal is the reactor's to report)."""
        if self.priority.applied:
            priority = RealtimePriority(self.priority.applied, quiet=True)
            self.transcoding_priorities.append(priority)
            priority.start()

    def startService(self) -> None:
        log.info("wcsgw starting: profile {profile}, REST http://{address}:{port}/rest-api",
                 profile=self.settings.profile, address=self.settings.rest_bind_address, port=self.settings.rest_port)
        # The reactor thread gives up the GIL at every system call; a transcoding thread that takes it then keeps
        # it until it blocks or the switch interval (5 ms by default) ends, and the reactor waits that long.
        # Bench runs could not tell 1 ms from 5 apart (p99 at 50 calls: 49-548 ms and 73-440 ms); the reactor,
        # which carries the latency, is the thread that should wait least.
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.priority.start()  # the reactor thread's: startService runs in it
        self.agent.start()
        self.lag.start()
        super().startService()
        self.gc.start()  # last: what start-up made is frozen

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop taking requests, hang up every call (BYE/CANCEL), let the last events go, close everything."""
        yield super().stopService()
        self.lag.stop()
        yield self.backend.stop()
        self.manager.stop()
        drained = self.notifier.when_idle()
        guard = self.reactor.callLater(self.EVENT_DRAIN_SECONDS, drained.cancel)
        try:
            yield drained
        except CancelledError:
            log.warn("CallApp: {count} events not delivered at shutdown", count=self.notifier.pending())
        if guard.active():
            guard.cancel()
        self.notifier.stop()
        yield self.poster.close()
        yield self.pool.stop()
        if self.media_sockets is not None:
            self.media_sockets.close()
        sys.setswitchinterval(self._switch_interval)
        self.gc.stop()
        self.priority.stop()


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    try:
        return GatewayService(reactor, options.settings)
    except ValueError as exc:  # an unusable certificate or key file
        raise SystemExit(f"wcsgw: {exc}") from None
