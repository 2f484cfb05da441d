"""
The gateway's ``CallBackend``: a call's SIP leg, RTP sessions and Stream, wired together.

For each call: two port pairs are bound (audio, video) before the offer is made, so a call either gets its ports or
is refused at once (503); the SIP leg dials; the far end's SDP (183 or 200) fixes the codecs and addresses of the
RTP sessions and creates the call's Stream; at ESTABLISHED the call's own RTMP destination and its pushes start.
Progress goes to the CallManager.  When the call ends, for whatever reason, the Stream unpublishes, the sockets
close and the ports go back to the allocator (after its quarantine).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import random
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger

from wcsgw.calls import Call, CallError, CallManager, CallUnavailable, Destination
from wcsgw.config import Settings
from wcsgw.media.worker import WorkerPool
from wcsgw.metrics import LATENCY_BUCKETS, SETUP_BUCKETS, Histogram, MediaTotals, media_totals
from wcsgw.model import CallStatus, EndInfo, RtmpStreamStatus
from wcsgw.rtp.h264 import AccessUnit
from wcsgw.rtp.params import (AudioFrame, ByeReceived, DtmfReceived, KeyframeNeeded, MediaParams, RtpInactivity,
                              SessionConfig)
from wcsgw.rtp.ports import PortAllocator, PortsExhausted
from wcsgw.rtp.protocol import MediaStreamProtocol
from wcsgw.rtp.session import MediaStreamSession
from wcsgw.rtp.udp import MediaSockets
from wcsgw.rtp.vp8 import Vp8Frame
from wcsgw.rtp.srtp import SUPPORTED_SUITES, CryptoAttribute, generate_crypto
from wcsgw.sip.protocol import CallHandle, CallStateError, OutgoingCall, SipUserAgent
from wcsgw.sip.sdp import (DEFAULT_AUDIO_CODECS, DEFAULT_VIDEO_CODECS, Crypto, Direction, MediaKind, MediaOffer,
                           NegotiatedMedia, SessionOffer, build_answer, build_offer, negotiate, select_codecs)
from wcsgw.stream import CallStream, StreamOptions

log = Logger()

KINDS = ("audio", "video")
_FRAMES = frozenset({AudioFrame, AccessUnit, Vp8Frame})  # media events, passed to the stream as they are
#: WCS's codec names (setting ``codecs``) as names ``select_codecs`` knows.
_CODEC_NAMES = {"alaw": "pcma", "ulaw": "pcmu", "opus": "opus", "speex16": "speex/16000", "speex": "speex/8000",
                "telephone-event": "telephone-event", "h264": "h264", "vp8": "vp8"}
PICTURE_FAST_UPDATE = (b'<?xml version="1.0" encoding="utf-8" ?>\r\n<media_control><vc_primitive><to_encoder>'
                       b"<picture_fast_update></picture_fast_update></to_encoder></vc_primitive></media_control>\r\n")


def offered_codecs(names: tuple[str, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Audio and video codecs to offer, from the ``codecs`` setting (WCS names), in its order."""
    wanted = [_CODEC_NAMES[name] for name in names]
    audio = select_codecs(DEFAULT_AUDIO_CODECS, [n for n in wanted if n not in ("h264", "vp8")])
    video = select_codecs(DEFAULT_VIDEO_CODECS, [n for n in wanted if n in ("h264", "vp8")])
    return audio, video


def route_address(host: str, fallback: str) -> str:
    """The local address the kernel would use towards ``host`` (an IP literal), without sending anything."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return fallback
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return fallback


def default_public_address(settings: Settings) -> str:
    """``ip`` when set, else a specific ``ip_local``, else the address of the default route, else 127.0.0.1."""
    if settings.ip:
        return settings.ip
    if settings.ip_local not in ("", "0.0.0.0", "::"):
        return settings.ip_local
    return route_address("192.0.2.1", "127.0.0.1")


def _ip_or_unspecified(address: str | None) -> str:
    try:
        ipaddress.ip_address(address or "")
    except ValueError:
        return "0.0.0.0"  # a host name in c= (or none): learn the far end's address from its packets
    return address or "0.0.0.0"


SIPS_PREFIX = "sips:"


def wants_srtp(settings: Settings, callee: str) -> bool:
    """SRTP is offered when the settings ask for it, or the callee is written ``sips:NAME``."""
    return settings.srtp or callee.lower().startswith(SIPS_PREFIX)


def sip_callee(callee: str) -> str:
    """The user part to dial: ``sips:NAME`` asks for SRTP and dials NAME."""
    return callee[len(SIPS_PREFIX):] if callee.lower().startswith(SIPS_PREFIX) else callee


def choose_crypto(ours: tuple[CryptoAttribute, ...], theirs: tuple[Crypto, ...]) -> tuple[CryptoAttribute,
                                                                                          CryptoAttribute]:
    """Our key and the far end's for the first of its crypto lines whose suite we offered (we offer one key per
    suite, so the suite identifies ours, in an answer and in a far-end re-offer alike; RFC 4568 5.1.2)."""
    for line in theirs:
        try:
            remote = CryptoAttribute.parse(str(line))
        except ValueError:
            continue
        local = next((c for c in ours if c.suite == remote.suite), None)
        if local is not None:
            return local, remote
    raise ValueError("the answer accepted none of our SRTP crypto suites")


def media_params(media: NegotiatedMedia, we_send: bool,
                 crypto: tuple[CryptoAttribute, CryptoAttribute] | None = None) -> MediaParams:
    """What the RTP session needs about one negotiated m-line; ``we_send`` is hasAudio/hasVideo; ``crypto`` our
    SRTP key and the far end's when SRTP was negotiated."""
    codec = media.codec
    assert codec is not None
    feedback = media.rtcp_fb
    ours = Direction.of(sends=we_send and media.direction.receives, receives=media.direction.sends)
    return MediaParams(
        kind=media.kind,
        codec=codec.name,
        payload_type=codec.payload_type,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        fmtp=dict(codec.fmtp),
        telephone_event_pt=media.telephone_event_pt,
        telephone_event_clock_rate=media.telephone_event.clock_rate if media.telephone_event else 8000,
        remote_rtp_addr=_ip_or_unspecified(media.address),
        remote_rtp_port=media.port,
        remote_rtcp_addr=_ip_or_unspecified(media.rtcp_address) if media.rtcp_address else None,
        remote_rtcp_port=media.rtcp_port,
        rtcp_mux=media.rtcp_mux,
        direction=ours.value,
        remote_fir="ccm fir" in feedback,
        remote_pli="nack pli" in feedback,
        remote_nack="nack" in feedback,
        local_crypto=crypto[0] if crypto else None,
        remote_crypto=crypto[1] if crypto else None,
    )


@dataclasses.dataclass
class BackendStats:
    calls_started: int = 0
    calls_refused: int = 0
    keyframe_requests_sip_info: int = 0


class GatewayBackend:
    """Places calls with the SIP user agent and runs their media; implements ``wcsgw.calls.CallBackend``."""

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        agent: SipUserAgent,
        allocator: PortAllocator,
        *,
        publisher_factory: Callable[..., Any] | None = None,
        rng: random.Random | None = None,
        pool: WorkerPool | None = None,
        public_address: str | None = None,
        media_sockets: MediaSockets | None = None,
    ) -> None:
        """``media_sockets``: bind RTP/RTCP through it (one reactor reader for every media socket); without it
        each socket is a ``reactor.listenUDP``."""
        self.reactor = reactor
        self.media_sockets = media_sockets
        self.settings = settings
        self.agent = agent
        self.allocator = allocator
        self.manager: CallManager | None = None
        self.rng = rng or random.SystemRandom()
        self.stats = BackendStats()
        self.public_address = public_address or default_public_address(settings)
        self.audio_codecs, self.video_codecs = offered_codecs(settings.codecs)
        enabled, seconds = settings.rtp_activity_detecting
        self.session_config = SessionConfig(
            cname=f"wcsgw@{self.public_address}",
            rtp_in_buffer=settings.rtp_in_buffer,
            jitter_buffer_ms=float(settings.rtp_in_buffer_ms),
            rtp_activity_timeout=float(seconds) if enabled else None,
            keepalive=settings.rtp_keepalive,
        )
        self.stream_options = StreamOptions(
            transcode_video=settings.disable_streaming_proxy,
            audio_output=settings.rtmp_audio,
            aac_sample_rate=0 if settings.aac_sample_rate == "source" else int(settings.aac_sample_rate),
            audio_bitrate=settings.aac_bitrate,
            aac_coder=settings.aac_coder,
            aac_narrowband_cutoff=settings.aac_narrowband_cutoff_hz,
            aac_frames_per_job=settings.aac_frames_per_job,
            video_bitrate=settings.video_bitrate,
            reconnect_delays=settings.rtmp_reconnect_delays,
            rtmp_chunk_size=settings.rtmp_chunk_size,
        )
        self.publisher_factory = publisher_factory
        self.pool = pool
        self.latency = {"audio": Histogram(LATENCY_BUCKETS), "video": Histogram(LATENCY_BUCKETS)}
        self.setup_time = Histogram(SETUP_BUCKETS)
        self.ended_totals = MediaTotals()
        self.calls: dict[str, CallMedia] = {}
        self._teardowns: set[Deferred[Any]] = set()

    # -- CallBackend ----------------------------------------------------------------------------------------

    def start_call(self, call: Call) -> None:
        media = CallMedia(self, call)
        try:
            media.bind()
        except PortsExhausted:
            self.stats.calls_refused += 1
            raise CallUnavailable(
                f"media port range {self.settings.media_port_from}-{self.settings.media_port_to} is exhausted"
            ) from None
        self.calls[call.call_id] = media
        try:
            media.dial()
        except (RuntimeError, ValueError) as exc:
            self.stats.calls_refused += 1
            self._forget(media)
            raise CallUnavailable(f"the SIP user agent cannot place the call: {exc}") from None
        self.stats.calls_started += 1

    def terminate_call(self, call: Call) -> None:
        media = self.calls.get(call.call_id)
        if media is not None:
            media.hangup(CallStatus.FINISH, EndInfo.NORMAL_CALL_CLEARING)

    def send_dtmf(self, call: Call, digits: str, method: str) -> None:
        media = self.calls.get(call.call_id)
        if media is None:
            raise CallError(f"call {call.call_id!r} has no media")
        media.send_dtmf(digits, method)

    def start_destination(self, call: Call, destination: Destination) -> None:
        media = self.calls.get(call.call_id)
        if media is not None:
            media.start_destination(destination)

    def stop_destination(self, call: Call, destination: Destination) -> None:
        media = self.calls.get(call.call_id)
        if media is not None and media.stream is not None:
            media.stream.remove_destination(destination.media_session_id)

    # -- life cycle -----------------------------------------------------------------------------------------

    def report(self, call_id: str, status: CallStatus | None, **kw: Any) -> None:
        if self.manager is not None:
            self.manager.update_call(call_id, status, **kw)

    def report_destination(self, media_session_id: str, status: RtmpStreamStatus, reason: str) -> None:
        if self.manager is not None:
            self.manager.update_destination(media_session_id, status, reason)

    def _forget(self, media: CallMedia) -> None:
        if self.calls.get(media.call.call_id) is media:
            del self.calls[media.call.call_id]
            self.ended_totals.add(media_totals(media))
        done = media.teardown()
        self._teardowns.add(done)
        done.addBoth(lambda result: (self._teardowns.discard(done), result)[1])

    def stop(self) -> Deferred[Any]:
        """Hang up every call (BYE or CANCEL), wait briefly for the answers, then for media teardown."""
        stopped = self.agent.stop()

        def media_done(_: Any) -> Deferred[Any]:
            for media in list(self.calls.values()):
                self._forget(media)
            return DeferredList(list(self._teardowns), consumeErrors=True)

        return stopped.addBoth(media_done)


class CallMedia:
    """One call: its SIP handle, an RTP session per media kind, and its Stream (implements ``CallListener``)."""

    def __init__(self, backend: GatewayBackend, call: Call) -> None:
        self.backend = backend
        self.call = call
        self.handle: CallHandle | None = None
        self.protocols: dict[str, MediaStreamProtocol] = {}
        self.ports: dict[str, tuple[int, int]] = {}
        self.params: dict[str, MediaParams] = {}
        self.stream: CallStream | None = None
        self._audio_socket: Any = None  # the audio RTP socket, when it takes read hints (MediaSocket.wanted_at)
        self.local_offer: SessionOffer | None = None
        self.crypto: dict[str, tuple[CryptoAttribute, ...]] = {}
        self._session_version = 0
        self._inactive: set[str] = set()
        self._established = False
        self._ended = False
        self._info_chain: Deferred[Any] = succeed(None)

    @property
    def call_id(self) -> str:
        return self.call.call_id

    # -- set-up ---------------------------------------------------------------------------------------------

    def bind(self) -> None:
        backend = self.backend
        stamps = backend.settings.media_kernel_timestamps
        try:
            for kind in KINDS:
                hold = backend.settings.media_audio_batch_ms / 1000.0 if kind == "audio" else 0.0
                stamped = stamps == "true" or (stamps in ("audio", "audio-each") and kind == "audio")
                protocol = MediaStreamProtocol(backend.reactor, None, functools.partial(self._event, kind),
                                               sockets=backend.media_sockets, rtp_hold=hold,
                                               kernel_timestamps=stamped,
                                               on_events=functools.partial(self._events, kind),
                                               rtp_stamp_each=not (stamps == "audio" and kind == "audio"))
                self.ports[kind] = protocol.listen_allocated(backend.allocator, interface=backend.settings.ip_local)
                self.protocols[kind] = protocol
                transport = protocol.rtp_protocol.transport
                if kind == "audio" and getattr(transport, "hold", 0.0):
                    self._audio_socket = transport
        except PortsExhausted:
            self.teardown()
            raise

    def dial(self) -> None:
        request = self.call.request
        settings = self.backend.settings
        first_hop = request.sip_outbound_proxy or request.sip_domain
        address = settings.ip or route_address(first_hop, self.backend.public_address)
        rng = self.backend.rng
        if wants_srtp(settings, request.callee):
            self.crypto = {kind: tuple(generate_crypto(tag, suite) for tag, suite in enumerate(SUPPORTED_SUITES, 1))
                           for kind in KINDS}
        media = tuple(
            MediaOffer(kind=MediaKind(kind), port=self.ports[kind][0], rtcp_port=self.ports[kind][1],
                       send=request.has_audio if kind == "audio" else request.has_video,
                       codecs=self.backend.audio_codecs if kind == "audio" else self.backend.video_codecs,
                       ssrc=rng.getrandbits(32), cname=f"rtp/{kind}/{request.call_id}",
                       crypto=tuple(Crypto.parse(str(line)) for line in self.crypto.get(kind, ())))
            for kind in KINDS
        )
        for protocol in self.protocols.values():
            protocol.local_address = address
        self.local_offer = SessionOffer(address=address, media=media, session_id=rng.getrandbits(40),
                                        session_version=0, origin_username="wcsgw")
        outgoing = OutgoingCall(
            call_id=request.call_id, callee=sip_callee(request.callee), domain=request.sip_domain,
            login=request.sip_login,
            port=request.sip_port, outbound_proxy=request.sip_outbound_proxy,
            auth_name=request.sip_authentication_name, password=request.sip_password,
            display_name=request.visible_name, register_required=request.sip_register_required)
        self.handle = self.backend.agent.place_call(outgoing, build_offer(self.local_offer), self)

    # -- CallListener ---------------------------------------------------------------------------------------

    def call_progress(self, status: CallStatus, sip_status: int, remote_sdp: str | None) -> None:
        if self._ended:
            return
        if remote_sdp is not None and self.handle is not None:
            self._apply_answer(self.handle.local_sdp, remote_sdp, offer_is_ours=True)
            if self._ended:
                return
        for protocol in self.protocols.values():
            if status is CallStatus.HOLD:
                protocol.set_hold(True)
            elif status is CallStatus.ESTABLISHED:
                protocol.set_hold(False)
        self.backend.report(self.call_id, status, sip_status=sip_status, sdp=remote_sdp)
        if status is CallStatus.ESTABLISHED and not self._established:
            self._established = True
            self._start_destinations()

    def call_ended(self, status: CallStatus, sip_status: int | None, info: EndInfo) -> None:
        if self._ended:
            return
        self._ended = True
        log.info("call {call_id} ended {status} {sip_status} {info}", call_id=self.call_id, status=status.value,
                 sip_status=sip_status, info=info.value)
        self.backend._forget(self)
        self.backend.report(self.call_id, status, sip_status=sip_status, info=info)

    def remote_offer(self, sdp: str) -> str:
        """A far-end re-INVITE/UPDATE offer: answer from our state, then follow its addresses and codecs."""
        assert self.local_offer is not None
        self._session_version += 1
        answer = build_answer(sdp, self.local_offer, session_version=self._session_version)
        self._apply_answer(answer, sdp, offer_is_ours=False)
        return answer

    # -- media ----------------------------------------------------------------------------------------------

    def _apply_answer(self, ours: str, theirs: str, *, offer_is_ours: bool) -> None:
        """Set up or update the RTP sessions (and the Stream) from our SDP and the far end's.

        ``negotiate(ours, theirs)`` reads the far end's addresses and payload types, and the codecs both sides
        share: for our offer and their answer, and equally for their re-offer and our answer to it.
        """
        try:
            negotiation = negotiate(ours, theirs)
            if offer_is_ours and negotiation.no_common_codecs:
                self.hangup(CallStatus.FAILED, EndInfo.NO_COMMON_CODECS)
                return
            request = self.call.request
            params = {kind: media_params(media, request.has_audio if kind == "audio" else request.has_video,
                                         choose_crypto(self.crypto[kind], media.crypto) if self.crypto else None)
                      for kind in KINDS if (media := negotiation.get(kind)) is not None}
            for value in params.values():
                value.validate()
        except ValueError as exc:
            log.warn("call {call_id}: unusable SDP: {error}", call_id=self.call_id, error=exc)
            if offer_is_ours:
                self.hangup(CallStatus.FAILED, EndInfo.FAILED_BY_ERROR)
            return
        now = self.backend.reactor.seconds()
        for kind, value in params.items():
            protocol = self.protocols.get(kind)
            if protocol is None:
                continue
            if protocol.session is None:
                protocol.attach(MediaStreamSession(value, self.backend.session_config, now))
            elif value != self.params.get(kind):
                protocol.update_params(value)
            self.params[kind] = value
        if self.stream is None and self.params:
            self.stream = CallStream(
                self.backend.reactor, self.call.stream_name, self.backend.stream_options,
                audio=self.params.get("audio"), video=self.params.get("video"),
                request_keyframe=self._request_keyframe, latency=self.backend.latency, pool=self.backend.pool,
                on_first_keyframe=lambda now: self.backend.setup_time.observe(now - self.call.created_at),
                **({"publisher_factory": self.backend.publisher_factory} if self.backend.publisher_factory else {}))

    def _events(self, kind: str, events: list[Any]) -> None:
        """The events of one delivery of the ``kind`` session, in order: when all are media frames (nearly
        always) they go to the stream in one call, else one by one through ``_event``."""
        if self._ended:
            return
        frames = _FRAMES
        for event in events:
            if type(event) not in frames:
                break
        else:
            if self._inactive:
                self._inactive.discard(kind)
            if self.stream is not None:
                self.stream.media_events(kind, events, self.backend.reactor.seconds())
                if kind == "audio" and self._audio_socket is not None:
                    # read the socket again when the AAC job being gathered can be complete
                    self._audio_socket.wanted_at = self.stream.audio_wanted_at()
            return
        for event in events:
            try:
                self._event(kind, event)
            except Exception:
                log.failure("call {call_id}: a {kind} media event failed", call_id=self.call_id, kind=kind)

    def _event(self, kind: str, event: Any) -> None:
        if self._ended:
            return
        if type(event) in _FRAMES:  # nearly every event: media for the stream
            if self._inactive:
                self._inactive.discard(kind)
            if self.stream is not None:
                self.stream.media_event(kind, event, self.backend.reactor.seconds())
            return
        if isinstance(event, RtpInactivity):
            self._inactive.add(kind)
            receiving = {k for k, p in self.params.items() if Direction(p.direction).receives}
            log.info("call {call_id}: no {kind} RTP for {idle:.0f} s", call_id=self.call_id, kind=kind,
                     idle=event.idle)
            if receiving and receiving <= self._inactive:
                self.hangup(CallStatus.FAILED, EndInfo.FAILED_BY_RTP_ACTIVITY)
            return
        if isinstance(event, KeyframeNeeded):
            if event.sip_info and self._established and self.handle is not None:
                self.backend.stats.keyframe_requests_sip_info += 1
                self._send_info("application/media_control+xml", PICTURE_FAST_UPDATE)
            return
        if isinstance(event, (DtmfReceived, ByeReceived)):
            log.info("call {call_id}: {kind} {event!r}", call_id=self.call_id, kind=kind, event=event)
            return
        self._inactive.discard(kind)
        if self.stream is not None:
            self.stream.media_event(kind, event, self.backend.reactor.seconds())

    def _request_keyframe(self) -> None:
        protocol = self.protocols.get("video")
        if protocol is not None:
            protocol.request_keyframe()

    # -- destinations ---------------------------------------------------------------------------------------

    def _start_destinations(self) -> None:
        for destination in self.call.destinations():
            self.start_destination(destination)

    def start_destination(self, destination: Destination) -> None:
        if self.stream is None or not self._established or self._ended:
            return  # started at ESTABLISHED
        if destination.media_session_id in self.stream.destinations():
            return
        key = destination.media_session_id
        own = not destination.is_push

        def on_status(status: RtmpStreamStatus, reason: str) -> None:
            self.backend.report_destination(key, status, reason)
            if own and status is RtmpStreamStatus.RTMP_CONNECTION_FAILED and \
                    self.backend.settings.rtmp_failure_ends_call:
                self.hangup(CallStatus.FAILED, EndInfo.FAILED_BY_RTMP_WRITER_ERROR)

        self.stream.add_destination(key, destination.rtmp_url, destination.rtmp_stream, on_status)

    # -- commands -------------------------------------------------------------------------------------------

    def hangup(self, status: CallStatus, info: EndInfo) -> None:
        if self.handle is not None and not self._ended:
            self.handle.hangup(status, info)

    def send_dtmf(self, digits: str, method: str) -> None:
        if method == "RFC2833":
            params = self.params.get("audio")
            if params is None or params.telephone_event_pt is None:
                raise CallError("no telephone-event was negotiated for RFC2833 DTMF; use type INFO")
            if not Direction(params.direction).sends:
                raise CallError(f"audio is {params.direction} (hasAudio=false or held): RFC2833 DTMF would be "
                                "RTP we said we would not send; use type INFO")
            protocol = self.protocols["audio"]
            for digit in digits:
                try:
                    protocol.send_dtmf(digit)
                except ValueError as exc:
                    raise CallError(f"DTMF not sent: {exc}") from None
            return
        for digit in digits:
            self._send_info("application/dtmf-relay", f"Signal={digit}\r\nDuration=160\r\n".encode("ascii"))

    def _send_info(self, content_type: str, body: bytes) -> None:
        """SIP INFOs of a call go one after the other (each waits for the previous one's final response)."""
        handle = self.handle
        if handle is None:
            return

        def send(_: Any) -> Deferred[Any]:
            if self._ended:
                return succeed(None)
            d = handle.send_info(content_type, body)
            return d.addErrback(lambda failure: log.info("call {call_id}: INFO not sent: {error}",
                                                         call_id=self.call_id, error=failure.getErrorMessage())
                                if failure.check(CallStateError) else failure)

        self._info_chain = self._info_chain.addBoth(send).addErrback(
            lambda failure: log.failure("call {call_id}: INFO failed", failure, call_id=self.call_id))

    # -- end ------------------------------------------------------------------------------------------------

    def teardown(self) -> Deferred[Any]:
        """Stop the Stream, close the sockets, give the ports back."""
        waits: list[Deferred[Any]] = []
        if self.stream is not None:
            waits.append(self.stream.stop())
        for kind, protocol in list(self.protocols.items()):
            rtp_port = self.ports.get(kind, (None,))[0]

            def release(result: Any, rtp_port: int | None = rtp_port) -> Any:
                if rtp_port is not None:
                    self.backend.allocator.release(rtp_port)
                return result

            waits.append(protocol.stop().addBoth(release))
        self.protocols.clear()
        return DeferredList(waits, consumeErrors=True)
