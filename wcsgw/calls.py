"""
CallManager: the registry of calls and RTMP destinations, their status model and uniqueness rules.

The REST layer talks only to the manager.  The manager drives the SIP, media and RTMP parts through a
``CallBackend`` and is told of their progress through ``update_call`` and ``update_destination``; every change of a
call's status or rtmpStreamStatus is handed to the ``EventSink`` (the CallApp notifier).  Without a backend a call
waits in PENDING: nothing fakes progress.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from wcsgw.model import CallStatus, EndInfo, RtmpStreamStatus
from wcsgw.rtmp.url import normalize as normalize_rtmp_url

log = Logger()


class CallError(Exception):
    """A request the manager refuses; ``code`` is the HTTP status the REST layer answers with."""

    code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CallNotFound(CallError):
    code = 404


class CallConflict(CallError):
    code = 409


class CallUnavailable(CallError):
    """The gateway cannot take the call now (for example the media port range is exhausted)."""

    code = 503


@dataclasses.dataclass
class CallRequest:
    """A validated ``call/startup`` request (see ``wcsgw.rest.validate``)."""

    call_id: str
    callee: str
    sip_domain: str
    to_stream: str
    rtmp_url: str | None = None
    rtmp_stream: str | None = None
    has_audio: bool = True
    has_video: bool = True
    sip_login: str = "anonymous"
    sip_authentication_name: str | None = None
    sip_password: str | None = dataclasses.field(default=None, repr=False)
    sip_outbound_proxy: str | None = None
    sip_port: int | None = None
    app_key: str | None = None
    sip_register_required: bool = False
    visible_name: str | None = None
    session_id: str | None = None


@dataclasses.dataclass
class Destination:
    """One RTMP destination of a call's stream: the call's own rtmpUrl, or one made by ``push/startup``."""

    media_session_id: str
    stream_name: str
    rtmp_url: str
    rtmp_stream: str
    key: tuple[str, str]
    is_push: bool
    status: RtmpStreamStatus = RtmpStreamStatus.RTMP_STREAM_WAIT
    info: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "mediaSessionId": self.media_session_id,
            "streamName": self.stream_name,
            "rtmpUrl": self.rtmp_url,
            "rtmpStream": self.rtmp_stream,
            "status": self.status.value,
        }


@dataclasses.dataclass
class Call:
    """One call: the request it came from, its status and its RTMP destinations."""

    request: CallRequest
    node_id: str
    status: CallStatus = CallStatus.NEW
    sip_status: int | None = None
    info: EndInfo | None = None
    sdp: str | None = None
    destination: Destination | None = None
    pushes: dict[str, Destination] = dataclasses.field(default_factory=dict)
    created_at: float = 0.0
    ended_at: float | None = None
    _expiry: IDelayedCall | None = dataclasses.field(default=None, repr=False)

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def stream_name(self) -> str:
        return self.request.to_stream

    @property
    def ended(self) -> bool:
        return self.status.ended

    @property
    def rtmp_stream_status(self) -> RtmpStreamStatus | None:
        return self.destination.status if self.destination else None

    def destinations(self) -> Iterator[Destination]:
        if self.destination is not None:
            yield self.destination
        yield from self.pushes.values()

    def to_json(self) -> dict[str, Any]:
        """The call object of call/find, with every field of the spec's example, in its order."""
        req = self.request
        body: dict[str, Any] = {
            "custom": {},
            "nodeId": self.node_id,
            "appKey": req.app_key,
            "sessionId": req.session_id,
            "callId": req.call_id,
            "parentCallId": None,
            "incoming": False,
            "status": self.status.value,
            "sipStatus": self.sip_status,
            "rtmpUrl": req.rtmp_url,
            "rtmpStream": req.rtmp_stream,
            "streamName": self.stream_name,
            "rtmpStreamStatus": _value(self.rtmp_stream_status),
            "caller": req.sip_login,
            "callee": req.callee,
            "hasAudio": req.has_audio,
            "hasVideo": req.has_video,
            "sdp": self.sdp,
            "visibleName": req.visible_name or req.sip_login,
            "inviteParameters": None,
            "mediaProvider": "Flash",
            "sipMessageRaw": None,
            "isMsrp": False,
            "target": None,
            "holdForTransfer": False,
        }
        if self.info is not None:
            body["info"] = self.info.value
        return body

    def to_event(self) -> dict[str, Any]:
        """The CallApp status event, in the shape of the spec's "Additional status information"."""
        req = self.request
        body: dict[str, Any] = {
            "nodeId": self.node_id,
            "appKey": "callApp",
            "sessionId": req.session_id,
            "callId": req.call_id,
            "incoming": False,
            "status": self.status.value,
            "sipStatus": self.sip_status,
            "rtmpUrl": req.rtmp_url,
            "rtmpStream": req.rtmp_stream,
            "rtmpStreamStatus": _value(self.rtmp_stream_status),
            "caller": req.sip_login,
            "callee": req.callee,
            "hasAudio": req.has_audio,
            "hasVideo": req.has_video,
            "visibleName": req.visible_name or req.sip_login,
            "mediaProvider": "Flash",
            "isMsrp": False,
        }
        if self.info is not None:
            body["info"] = self.info.value
        return body


def _value(status: RtmpStreamStatus | None) -> str | None:
    return status.value if status is not None else None


class EventSink(Protocol):
    """Receives a snapshot of a call each time its status or rtmpStreamStatus changes (``wcsgw.events``)."""

    def call_changed(self, call_id: str, event: dict[str, Any]) -> None: ...


class CallBackend(Protocol):
    """
    What places calls: SIP signalling, media and RTMP publishing.  Implementations report progress back through
    ``CallManager.update_call`` and ``CallManager.update_destination``.
    """

    def start_call(self, call: Call) -> None:
        """Begin dialling; may raise ``CallError`` to refuse the call before anything is sent."""

    def terminate_call(self, call: Call) -> None:
        """Hang up (CANCEL or BYE); the backend reports the final status when the call has ended."""

    def send_dtmf(self, call: Call, digits: str, method: str) -> None:
        """Send DTMF (method ``RFC2833`` or ``INFO``); raises ``CallError`` when the call cannot carry it."""

    def start_destination(self, call: Call, destination: Destination) -> None:
        """Start publishing the call's stream to one more RTMP destination."""

    def stop_destination(self, call: Call, destination: Destination) -> None:
        """Stop publishing to one destination (the call goes on)."""


def new_node_id(address: str) -> str:
    """A node id in WCS's shape: 32 random letters and digits ``@`` the node's address."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(32)) + "@" + address


class CallManager:
    """The registry of calls and destinations and the only thing the REST layer talks to."""

    def __init__(
        self,
        reactor: IReactorTime,
        events: EventSink,
        *,
        node_id: str,
        ended_call_ttl: float = 60.0,
        backend: CallBackend | None = None,
        id_factory: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._reactor = reactor
        self._events = events
        self._node_id = node_id
        self._ended_call_ttl = ended_call_ttl
        self.backend = backend
        self._new_id = id_factory
        self._calls: dict[str, Call] = {}
        # Live destinations by normalized (rtmpUrl, rtmpStream), and every destination by mediaSessionId.
        self._destinations_by_key: dict[tuple[str, str], tuple[Call, Destination]] = {}
        self._destinations_by_id: dict[str, tuple[Call, Destination]] = {}

    # -- calls ---------------------------------------------------------------------------------------------

    def new_call_id(self) -> str:
        return self._new_id()

    def startup(self, request: CallRequest) -> Call:
        """Register a call and hand it to the backend; 409 for a callId or rtmpUrl+rtmpStream in use."""
        existing = self._calls.get(request.call_id)
        if existing is not None and not existing.ended:
            raise CallConflict(f"callId {request.call_id!r} is in use")
        destination = None
        if request.rtmp_url is not None:
            stream = request.rtmp_stream or request.to_stream
            request.rtmp_stream = stream
            destination = Destination(
                media_session_id=self._new_id(),
                stream_name=request.to_stream,
                rtmp_url=request.rtmp_url,
                rtmp_stream=stream,
                key=(normalize_rtmp_url(request.rtmp_url), stream),
                is_push=False,
            )
            self._check_destination_free(destination.key)
        if any(c.stream_name == request.to_stream and not c.ended for c in self._calls.values()):
            raise CallConflict(f"stream {request.to_stream!r} is published by another call")
        if existing is not None:
            self._forget(existing)
        call = Call(request=request, node_id=self._node_id, destination=destination,
                    created_at=self._reactor.seconds())
        self._calls[call.call_id] = call
        if destination is not None:
            self._register_destination(call, destination)
        if self.backend is not None:
            try:
                self.backend.start_call(call)
            except CallError:
                # Refused before anything was sent (no media ports, SIP not running): no call, no events.
                self._forget(call)
                raise
        log.info("call {call_id} to {callee}@{domain} accepted", call_id=call.call_id,
                 callee=request.callee, domain=request.sip_domain)
        self._notify(call)
        if call.status is CallStatus.NEW:
            self._set_status(call, CallStatus.PENDING)
        return call

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def find(
        self,
        *,
        call_id: str | None = None,
        callee: str | None = None,
        rtmp_url: str | None = None,
        status: str | None = None,
    ) -> list[Call]:
        """Calls matching every filter given (live and recently ended ones), oldest first."""
        wanted_url = normalize_rtmp_url(rtmp_url) if rtmp_url is not None else None
        found = []
        for call in self._calls.values():
            if call_id is not None and call.call_id != call_id:
                continue
            if callee is not None and call.request.callee != callee:
                continue
            if status is not None and call.status.value != status:
                continue
            if wanted_url is not None:
                if call.request.rtmp_url is None or normalize_rtmp_url(call.request.rtmp_url) != wanted_url:
                    continue
            found.append(call)
        return found

    def live_calls(self) -> list[Call]:
        return [call for call in self._calls.values() if not call.ended]

    def terminate(self, call_id: str) -> Call:
        """Hang up a live call; 404 when there is none with that callId."""
        call = self._live(call_id)
        if self.backend is None:
            self._end(call, CallStatus.FINISH, EndInfo.NORMAL_CALL_CLEARING)
        else:
            self.backend.terminate_call(call)
        return call

    def send_dtmf(self, call_id: str, digits: str, method: str) -> None:
        call = self._live(call_id)
        if call.status not in (CallStatus.ESTABLISHED, CallStatus.HOLD):
            raise CallConflict(f"call {call_id!r} is {call.status.value}, not ESTABLISHED")
        if self.backend is None:  # pragma: no cover - a call without backend never gets established
            raise CallConflict("no SIP backend")
        self.backend.send_dtmf(call, digits, method)

    def _live(self, call_id: str) -> Call:
        call = self._calls.get(call_id)
        if call is None or call.ended:
            raise CallNotFound(f"call {call_id!r} is not found")
        return call

    # -- progress reported by the backend -----------------------------------------------------------------

    def update_call(
        self,
        call_id: str,
        status: CallStatus | None = None,
        *,
        sip_status: int | None = None,
        sdp: str | None = None,
        info: EndInfo | None = None,
    ) -> None:
        """Record SIP progress; a change of status is notified; an ended status ends the call and its pushes."""
        call = self._calls.get(call_id)
        if call is None or call.ended:
            return
        if sip_status is not None:
            call.sip_status = sip_status
        if sdp is not None:
            call.sdp = sdp
        if status is None or status == call.status:
            return
        if status.ended:
            self._end(call, status, info or EndInfo.NORMAL_CALL_CLEARING)
        else:
            self._set_status(call, status)

    def update_destination(self, media_session_id: str, status: RtmpStreamStatus, info: str | None = None) -> None:
        """Record an RTMP destination's status; a change on the call's own destination is notified."""
        entry = self._destinations_by_id.get(media_session_id)
        if entry is None:
            return
        call, destination = entry
        destination.info = info
        if destination.status == status:
            return
        destination.status = status
        log.info("{call_id}: {url} {stream} is {status}", call_id=call.call_id, url=destination.rtmp_url,
                 stream=destination.rtmp_stream, status=status.value)
        if not destination.is_push and not call.ended:
            self._notify(call)

    # -- pushes -------------------------------------------------------------------------------------------

    def push_startup(self, stream_name: str, rtmp_url: str, rtmp_stream: str | None) -> Destination:
        """Add an RTMP destination to the live call publishing ``stream_name``."""
        call = next((c for c in self._calls.values() if c.stream_name == stream_name and not c.ended), None)
        if call is None:
            raise CallNotFound(f"stream {stream_name!r} is not found")
        stream = rtmp_stream or stream_name
        destination = Destination(
            media_session_id=self._new_id(),
            stream_name=stream_name,
            rtmp_url=rtmp_url,
            rtmp_stream=stream,
            key=(normalize_rtmp_url(rtmp_url), stream),
            is_push=True,
        )
        self._check_destination_free(destination.key)
        call.pushes[destination.media_session_id] = destination
        self._register_destination(call, destination)
        if self.backend is not None:
            self.backend.start_destination(call, destination)
        return destination

    def push_find(
        self,
        *,
        stream_name: str | None = None,
        rtmp_url: str | None = None,
        media_session_id: str | None = None,
    ) -> list[Destination]:
        wanted_url = normalize_rtmp_url(rtmp_url) if rtmp_url is not None else None
        found = []
        for call in self.live_calls():
            for destination in call.pushes.values():
                if stream_name is not None and destination.stream_name != stream_name:
                    continue
                if media_session_id is not None and destination.media_session_id != media_session_id:
                    continue
                if wanted_url is not None and destination.key[0] != wanted_url:
                    continue
                found.append(destination)
        return found

    def push_terminate(self, media_session_id: str) -> Destination:
        entry = self._destinations_by_id.get(media_session_id)
        if entry is None or not entry[1].is_push or entry[0].ended:
            raise CallNotFound(f"mediaSessionId {media_session_id!r} is not found")
        call, destination = entry
        self._drop_destination(call, destination)
        del call.pushes[media_session_id]
        if self.backend is not None:
            self.backend.stop_destination(call, destination)
        return destination

    def _check_destination_free(self, key: tuple[str, str]) -> None:
        if key in self._destinations_by_key:
            raise CallConflict(f"RTMP stream {key[1]!r} at {key[0]} is already published")

    def _register_destination(self, call: Call, destination: Destination) -> None:
        self._destinations_by_key[destination.key] = (call, destination)
        self._destinations_by_id[destination.media_session_id] = (call, destination)

    def _drop_destination(self, call: Call, destination: Destination) -> None:
        self._destinations_by_key.pop(destination.key, None)
        self._destinations_by_id.pop(destination.media_session_id, None)

    # -- status model -------------------------------------------------------------------------------------

    def _set_status(self, call: Call, status: CallStatus) -> None:
        log.info("{call_id}: {old} -> {new}", call_id=call.call_id, old=call.status.value, new=status.value)
        call.status = status
        self._notify(call)

    def _end(self, call: Call, status: CallStatus, info: EndInfo) -> None:
        """End a call: final status and reason, its destinations freed, kept findable for ``ended_call_ttl``."""
        call.info = info
        call.ended_at = self._reactor.seconds()
        for destination in list(call.destinations()):
            self._drop_destination(call, destination)
        self._set_status(call, status)
        call._expiry = self._reactor.callLater(self._ended_call_ttl, self._expire, call)

    def _expire(self, call: Call) -> None:
        call._expiry = None
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]

    def _forget(self, call: Call) -> None:
        if call._expiry is not None and call._expiry.active():
            call._expiry.cancel()
        call._expiry = None
        for destination in list(call.destinations()):
            self._drop_destination(call, destination)
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]

    def _notify(self, call: Call) -> None:
        self._events.call_changed(call.call_id, call.to_event())

    def stop(self) -> None:
        """Cancel the expiry timers of ended calls (the backend hangs up live calls itself)."""
        for call in list(self._calls.values()):
            if call._expiry is not None and call._expiry.active():
                call._expiry.cancel()
                call._expiry = None
