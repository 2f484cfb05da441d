"""Publishing one stream to one RTMP destination, with reconnection and bounded memory.

:class:`RtmpPublisher` connects, publishes, and forwards the FLV tags it is given. It keeps
the latest ``onMetaData`` and the latest AVC and AAC sequence headers, and sends them first on
every connection; then it drops video until a keyframe (asking for one through
``on_keyframe_needed``) and, when the stream has video, drops audio until that keyframe so that
playback starts in sync.

Statuses (``on_status(status, reason)``, :class:`wcsgw.model.RtmpStreamStatus`):

* ``RTMP_STREAM_WAIT`` at :meth:`RtmpPublisher.start`, kept through the first attempts;
* ``RTMP_STREAM_ACTIVE`` on ``NetStream.Publish.Start``, again after each successful reconnect;
* ``RTMP_CONNECTION_LOST`` when a publishing connection drops (reconnection follows);
* ``RTMP_CONNECTION_FAILED`` when the server refuses the first publish, or when the
  ``reconnect_delays`` are used up (counted from the last time the stream was active).

A refusal is a ``PublishRefused`` event (``_error`` for connect/createStream/publish, an
error-level ``onStatus`` such as ``NetStream.Publish.BadName``) or the server closing the
connection in answer to ``publish`` before any status (how nginx-rtmp's ``on_publish`` denies).
Once the stream has been active, a refusal counts as one failed reconnection attempt instead
(the server may still hold the dead session's name). Reconnection attempts do not report WAIT
again: the status stays LOST until ACTIVE or FAILED.

Timestamps are rebased on every connection: the first media tag sent on a connection (the
first keyframe for a stream with video) goes out at 0 and the others keep their offsets from
it, one base for all tracks so audio and video stay in sync. Each track's timestamps never go
backwards on a connection (a late tag is sent at the track's last timestamp).

Back-pressure: the protocol holds outgoing bytes back while the transport's buffer is full.
Above ``max_buffered_bytes`` held back, video is dropped until the next keyframe (which is
asked for); above twice that, audio is dropped too. Memory per destination is thus bounded by
about ``2 * max_buffered_bytes`` plus the transport's own buffer, whatever the server does.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConnector,
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
)
from twisted.logger import Logger

from wcsgw.model import RtmpStreamStatus
from wcsgw.rtmp.flv import FlvTag, TagType
from wcsgw.rtmp.protocol import RtmpClientFactory, RtmpClientProtocol, connect_rtmp
from wcsgw.rtmp.session import (
    DEFAULT_CHUNK_SIZE,
    Connected,
    Event,
    ProtocolError,
    PublishRefused,
    PublishStarted,
    RtmpClientSession,
    SessionState,
    StatusReceived,
)
from wcsgw.rtmp.url import RtmpUrl, check_stream_name, parse

_log = Logger()

_VIDEO, _SCRIPT = TagType.VIDEO, TagType.SCRIPT
DEFAULT_RECONNECT_DELAYS = (1.0, 2.0, 4.0, 8.0, 15.0)
DEFAULT_MAX_BUFFERED_BYTES = 2 * 1024 * 1024


@dataclasses.dataclass
class PublisherStats:
    """Counters over the publisher's whole life (all connections)."""

    bytes_sent: int = 0  # bytes written to transports
    tags_sent: int = 0  # tags handed to the session, headers included
    dropped_video_frames: int = 0  # not sent: not publishing, waiting for a keyframe, or back-pressure
    dropped_audio_frames: int = (
        0  # not sent: not publishing, waiting for the first keyframe, or back-pressure
    )
    reconnects: int = 0  # connection attempts after the first
    publishes: int = 0  # NetStream.Publish.Start received


class _Phase(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    ACTIVE = "active"
    WAITING_RETRY = "waiting-retry"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class _Attempt:
    """One connection attempt; forwards its protocol's reports while it is the current one."""

    def __init__(self, publisher: RtmpPublisher) -> None:
        self._publisher = publisher
        self.connector: IConnector | None = None
        self.protocol: RtmpClientProtocol | None = None

    def _current(self) -> bool:
        return self._publisher._attempt is self

    def rtmp_connected(self, protocol: RtmpClientProtocol) -> None:
        if self._current():
            self.protocol = protocol
        else:
            protocol.abort()

    def rtmp_event(self, protocol: RtmpClientProtocol, event: Event) -> None:
        if self._current():
            self._publisher._on_event(event)

    def rtmp_connection_lost(self, protocol: RtmpClientProtocol, reason: str) -> None:
        self._publisher._on_connection_lost(self, protocol, reason)

    def rtmp_connection_failed(self, reason: str) -> None:
        if self._current():
            self._publisher._on_attempt_failed(f"cannot connect: {reason}")

    def rtmp_bytes_written(self, count: int) -> None:
        self._publisher.stats.bytes_sent += count


class RtmpPublisher:
    """Publishes FLV tags to ``url`` + ``stream_name``, reconnecting after losses."""

    # Slots: more than 30 attributes (see MediaStreamSession.__slots__).  '__dict__': tests' stand-ins.
    __slots__ = (
        '_reactor', 'url', 'stream_name', '_on_status', '_on_keyframe_needed', '_delays', '_connect_timeout',
        '_max_buffered', '_stop_timeout', '_chunk_size', '_tls_options', '_random_bytes', 'stats', 'status',
        '_phase', '_attempt', '_failures', '_ever_active', '_attempt_timer', '_retry_timer', '_stop_timer',
        '_stop_waiters', '_metadata', '_video_header', '_audio_header', '_has_video', '_base_ts', '_last_ts',
        '_waiting_keyframe', '_keyframe_requested', '_keyframe_sent', '_audio_started', '__dict__',
    )

    def __init__(
        self,
        reactor: Any,
        url: str | RtmpUrl,
        stream_name: str,
        *,
        on_status: Callable[[RtmpStreamStatus, str], None],
        on_keyframe_needed: Callable[[], None] | None = None,
        reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS,
        connect_timeout: float = 10.0,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        stop_timeout: float = 5.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        tls_options: IOpenSSLClientConnectionCreator | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``reactor`` provides ``IReactorTime`` and ``IReactorTCP`` (``IReactorSSL`` for rtmps)."""
        self._reactor = reactor
        self.url = url if isinstance(url, RtmpUrl) else parse(url)
        self.stream_name = check_stream_name(stream_name)
        self._on_status = on_status
        self._on_keyframe_needed = on_keyframe_needed
        self._delays = tuple(reconnect_delays)
        self._connect_timeout = connect_timeout
        self._max_buffered = max_buffered_bytes
        self._stop_timeout = stop_timeout
        self._chunk_size = chunk_size
        self._tls_options = tls_options
        self._random_bytes = random_bytes

        self.stats = PublisherStats()
        self.status: RtmpStreamStatus | None = None
        self._phase = _Phase.IDLE
        self._attempt: _Attempt | None = None
        self._failures = 0  # failed attempts since the stream was last active
        self._ever_active = False
        self._attempt_timer: IDelayedCall | None = None
        self._retry_timer: IDelayedCall | None = None
        self._stop_timer: IDelayedCall | None = None
        self._stop_waiters: list[Deferred[None]] = []

        # What is replayed on each connection.
        self._metadata: FlvTag | None = None
        self._video_header: FlvTag | None = None
        self._audio_header: FlvTag | None = None
        self._has_video = False

        # Per-connection state (reset at each publish start).
        self._base_ts: int | None = None
        self._last_ts: dict[TagType, int] = {}
        self._waiting_keyframe = True
        self._keyframe_requested = False
        self._keyframe_sent = False
        self._audio_started = False

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> bool:
        return self._phase is _Phase.ACTIVE

    def start(self) -> None:
        """Report ``RTMP_STREAM_WAIT`` and make the first connection attempt."""
        if self._phase is not _Phase.IDLE:
            raise RuntimeError(f"publisher already started (phase {self._phase.value})")
        self._set_status(RtmpStreamStatus.RTMP_STREAM_WAIT, f"connecting to {self.url}")
        self._connect()

    def write(self, tag: FlvTag) -> None:
        """Forward a tag, or drop it (counted) when it cannot or should not be sent now."""
        attempt = self._attempt
        if self._phase is _Phase.ACTIVE and attempt is not None and not tag.is_sequence_header:
            # A frame while publishing (nearly every tag) takes the shortest way when it is sent at once: what
            # _write_video or _write_audio, _buffered and _send do with it, written out.
            protocol = attempt.protocol
            tag_type = tag.tag_type
            if protocol is not None and tag_type != _SCRIPT:
                buffered = protocol.buffered_bytes
                if tag_type == _VIDEO:
                    if not self._waiting_keyframe and buffered <= self._max_buffered:
                        self._has_video = True
                        self._keyframe_requested = False
                        self._keyframe_sent = True
                        self._send_now(protocol, tag, tag_type)
                        return
                elif (self._keyframe_sent or self._audio_started or not self._has_video) \
                        and buffered <= 2 * self._max_buffered:
                    self._audio_started = True
                    self._send_now(protocol, tag, tag_type)
                    return
        if self._phase in (_Phase.STOPPING, _Phase.STOPPED, _Phase.FAILED):
            return
        if tag.tag_type == TagType.SCRIPT:
            self._metadata = tag
            if self.active:
                self._send(tag, header=True)
            return
        video = tag.tag_type == TagType.VIDEO
        if video:
            self._has_video = True
        if tag.is_sequence_header:
            if video:
                self._video_header = tag
            else:
                self._audio_header = tag
            if self.active:
                self._send(tag, header=True)
            return
        if video:
            self._write_video(tag)
        else:
            self._write_audio(tag)

    def stop(self) -> Deferred[None]:
        """Unpublish and close; the Deferred fires once the connection is closed.

        Every timer is cancelled. A connection that does not close within ``stop_timeout``
        seconds is aborted. Calling it again returns a Deferred for the same completion.
        """
        if self._phase is _Phase.STOPPED:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        if self._phase is _Phase.STOPPING:
            return waiter
        self._phase = _Phase.STOPPING
        self._cancel(self._attempt_timer)
        self._cancel(self._retry_timer)
        self._attempt_timer = self._retry_timer = None
        attempt = self._attempt
        if attempt is not None and attempt.protocol is not None:
            attempt.protocol.close()
            self._stop_timer = self._reactor.callLater(self._stop_timeout, self._stop_timed_out)
            return waiter
        self._attempt = None
        if attempt is not None and attempt.connector is not None:
            try:
                attempt.connector.stopConnecting()
            except Exception:  # already connected (protocol not built yet) or already failed
                attempt.connector.disconnect()
        self._finish_stop()
        return waiter

    # ------------------------------------------------------------------ connecting

    def _connect(self) -> None:
        self._phase = _Phase.CONNECTING
        attempt = _Attempt(self)
        self._attempt = attempt
        factory = RtmpClientFactory(self._new_session, attempt)
        self._attempt_timer = self._reactor.callLater(self._connect_timeout, self._attempt_timed_out)
        attempt.connector = connect_rtmp(
            self._reactor, self.url, factory, self._connect_timeout, self._tls_options
        )

    def _new_session(self) -> RtmpClientSession:
        return RtmpClientSession(
            self.url,
            self.stream_name,
            self._reactor.seconds(),
            chunk_size=self._chunk_size,
            random_bytes=self._random_bytes,
        )

    def _abandon_attempt(self) -> None:
        attempt, self._attempt = self._attempt, None
        self._cancel(self._attempt_timer)
        self._attempt_timer = None
        if attempt is None:
            return
        if attempt.protocol is not None:
            attempt.protocol.abort()
        elif attempt.connector is not None:
            try:
                attempt.connector.stopConnecting()
            except Exception:
                attempt.connector.disconnect()

    def _attempt_timed_out(self) -> None:
        self._attempt_timer = None
        self._on_attempt_failed(f"no NetStream.Publish.Start within {self._connect_timeout:g} s")

    def _on_attempt_failed(self, reason: str) -> None:
        self._abandon_attempt()
        self._schedule_retry(reason)

    def _schedule_retry(self, reason: str) -> None:
        if self._failures >= len(self._delays):
            self._fail(f"{reason} (gave up after {len(self._delays)} retries)")
            return
        delay = self._delays[self._failures]
        self._failures += 1
        self._phase = _Phase.WAITING_RETRY
        _log.info(
            "RTMP {url}/{name}: {reason}; retrying in {delay} s",
            url=self.url,
            name=self.stream_name,
            reason=reason,
            delay=delay,
        )
        self._retry_timer = self._reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._retry_timer = None
        self.stats.reconnects += 1
        self._connect()

    def _fail(self, reason: str) -> None:
        self._abandon_attempt()
        self._phase = _Phase.FAILED
        self._set_status(RtmpStreamStatus.RTMP_CONNECTION_FAILED, reason)

    # ------------------------------------------------------------------ reports from the protocol

    def _on_event(self, event: Event) -> None:
        if isinstance(event, PublishStarted):
            self._on_publish_started()
        elif isinstance(event, PublishRefused):
            reason = f"publish refused: {event.code} {event.description}".rstrip()
            if self._ever_active:
                self._on_attempt_failed(reason)  # e.g. the server still holds our dead session
            else:
                self._fail(reason)
        elif isinstance(event, Connected):
            _log.debug("RTMP {url}: connected", url=self.url)
        elif isinstance(event, StatusReceived):
            _log.info(
                "RTMP {url}/{name}: {status_level} {code} {description}",
                url=self.url,
                name=self.stream_name,
                status_level=event.level,
                code=event.code,
                description=event.description,
            )
        elif isinstance(event, ProtocolError) and event.fatal:
            _log.warn(
                "RTMP {url}: closing after a protocol error: {message}", url=self.url, message=event.message
            )

    def _on_connection_lost(self, attempt: _Attempt, protocol: RtmpClientProtocol, reason: str) -> None:
        if attempt.protocol is protocol:
            attempt.protocol = None
            attempt.connector = None
        if self._attempt is not attempt:
            return
        if self._phase is _Phase.STOPPING:
            self._attempt = None
            self._finish_stop()
        elif self._phase is _Phase.ACTIVE:
            self._attempt = None
            self._set_status(RtmpStreamStatus.RTMP_CONNECTION_LOST, f"connection lost: {reason}")
            self._schedule_retry(f"connection lost: {reason}")
        elif self._phase is _Phase.CONNECTING:
            session = protocol.session
            refused = session is not None and session.closed_in_state is SessionState.PUBLISH_REQUESTED
            if refused and not self._ever_active:
                # nginx-rtmp refuses a publish (deny publish, on_publish) by closing the connection.
                self._fail("publish refused: the server closed the connection in answer to publish")
            else:
                self._on_attempt_failed(f"connection closed during setup: {reason}")

    def _on_publish_started(self) -> None:
        self._cancel(self._attempt_timer)
        self._attempt_timer = None
        self._phase = _Phase.ACTIVE
        self._failures = 0
        self._ever_active = True
        self.stats.publishes += 1
        self._base_ts = None
        self._last_ts = {}
        self._waiting_keyframe = True
        self._keyframe_requested = False
        self._keyframe_sent = False
        self._audio_started = False
        for header in (self._metadata, self._video_header, self._audio_header):
            if header is not None:
                self._send(header, header=True)
        self._set_status(RtmpStreamStatus.RTMP_STREAM_ACTIVE, f"publishing {self.stream_name} to {self.url}")
        if self._has_video and self.active:
            self._request_keyframe()

    # ------------------------------------------------------------------ media

    def _buffered(self) -> int:
        attempt = self._attempt
        return attempt.protocol.buffered_bytes if attempt is not None and attempt.protocol is not None else 0

    def _write_video(self, tag: FlvTag) -> None:
        if not self.active:
            self.stats.dropped_video_frames += 1
            return
        congested = self._buffered() > self._max_buffered
        if self._waiting_keyframe:
            if not tag.is_keyframe or congested:
                self.stats.dropped_video_frames += 1
                self._request_keyframe()
                return
        elif congested:
            self.stats.dropped_video_frames += 1
            self._waiting_keyframe = True
            self._keyframe_requested = False
            _log.warn(
                "RTMP {url}/{name}: over {limit} bytes buffered, dropping video until a keyframe",
                url=self.url,
                name=self.stream_name,
                limit=self._max_buffered,
            )
            self._request_keyframe()
            return
        self._waiting_keyframe = False
        self._keyframe_requested = False
        self._keyframe_sent = True
        self._send(tag)

    def _write_audio(self, tag: FlvTag) -> None:
        gated = self._has_video and not self._keyframe_sent and not self._audio_started
        if not self.active or gated or self._buffered() > 2 * self._max_buffered:
            self.stats.dropped_audio_frames += 1
            return
        self._audio_started = True
        self._send(tag)

    def _request_keyframe(self) -> None:
        if self._keyframe_requested:
            return
        self._keyframe_requested = True
        if self._on_keyframe_needed is not None:
            try:
                self._on_keyframe_needed()
            except Exception:
                _log.failure("on_keyframe_needed raised")

    def _send_now(self, protocol: RtmpClientProtocol, tag: FlvTag, track: TagType) -> None:
        """``_send`` of a frame (not a header) on ``protocol``, the current attempt's."""
        last_ts = self._last_ts
        base = self._base_ts
        if base is None:
            base = self._base_ts = tag.timestamp_ms
        timestamp = tag.timestamp_ms - base
        last = last_ts.get(track, 0)
        if timestamp < last:
            timestamp = last
        last_ts[track] = timestamp
        protocol.send_tag(tag, timestamp)
        self.stats.tags_sent += 1

    def _send(self, tag: FlvTag, header: bool = False) -> None:
        attempt = self._attempt
        if attempt is None or attempt.protocol is None:  # pragma: no cover - active implies connected
            return
        if not header:
            self._send_now(attempt.protocol, tag, tag.tag_type)
            return
        track = tag.tag_type
        timestamp = self._last_ts.setdefault(track, 0)  # a header goes at the track's last time
        attempt.protocol.send_tag(tag, timestamp)
        self.stats.tags_sent += 1

    # ------------------------------------------------------------------ helpers

    def _set_status(self, status: RtmpStreamStatus, reason: str) -> None:
        self.status = status
        _log.info(
            "RTMP {url}/{name}: {status} ({reason})",
            url=self.url,
            name=self.stream_name,
            status=status.value,
            reason=reason,
        )
        try:
            self._on_status(status, reason)
        except Exception:
            _log.failure("on_status raised")

    def _stop_timed_out(self) -> None:
        self._stop_timer = None
        attempt = self._attempt
        if attempt is not None and attempt.protocol is not None:
            attempt.protocol.abort()
        else:  # pragma: no cover - the connection is already gone
            self._finish_stop()

    def _finish_stop(self) -> None:
        self._cancel(self._stop_timer)
        self._stop_timer = None
        self._phase = _Phase.STOPPED
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
