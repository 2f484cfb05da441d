"""Test helpers for the SIP user agent: a recording listener and a scripted far end for the sans-I/O core."""

from __future__ import annotations

import itertools
from typing import Any

from sipmessage import Message, Request, Response

from wcsgw.model import CallStatus, EndInfo
from wcsgw.sip.core import UserAgentCore
from wcsgw.sip.interfaces import OutgoingCall
from wcsgw.sip.message import create_response, serialize
from wcsgw.sip.sdp import MediaKind, MediaOffer, SessionOffer, build_answer, build_offer
from wcsgw.sip.transaction import TimerConfig

LOCAL = ("192.0.2.1", 5060)
FAR = ("192.0.2.2", 5060)

LOCAL_SESSION = SessionOffer("192.0.2.1", (MediaOffer(MediaKind.AUDIO, 4000), MediaOffer(MediaKind.VIDEO, 4002)))
OFFER = build_offer(LOCAL_SESSION)


def answer_sdp(direction: str = "sendrecv", version: int = 1, audio: str = "0", video_port: int = 5002) -> str:
    return (
        f"v=0\r\no=far 99 {version} IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n"
        f"m=audio 5000 RTP/AVP {audio}\r\na={direction}\r\n"
        f"m=video {video_port} RTP/AVP 112\r\na=rtpmap:112 H264/90000\r\na=fmtp:112 packetization-mode=1\r\n"
        f"a={direction}\r\n"
    )


class Recorder:
    """A CallListener that records what it is told and answers re-offers with ``build_answer``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.offers: list[str] = []
        self._version = 0

    def call_progress(self, status: CallStatus, sip_status: int, remote_sdp: str | None) -> None:
        self.events.append(("progress", status, sip_status, remote_sdp))

    def call_ended(self, status: CallStatus, sip_status: int | None, info: EndInfo) -> None:
        self.events.append(("ended", status, sip_status, info))

    def remote_offer(self, sdp: str) -> str:
        self.offers.append(sdp)
        self._version += 1
        return build_answer(sdp, LOCAL_SESSION, session_version=self._version)

    @property
    def statuses(self) -> list[tuple[str, int | None]]:
        return [(event[1].value, event[2]) for event in self.events]

    @property
    def ended(self) -> tuple[Any, ...] | None:
        ends = [event for event in self.events if event[0] == "ended"]
        assert len(ends) <= 1, f"call_ended reported {len(ends)} times"
        return ends[0][1:] if ends else None


def make_core(**kwargs: Any) -> UserAgentCore:
    tokens = itertools.count(1)
    kwargs.setdefault("timers", TimerConfig())
    return UserAgentCore(host=LOCAL[0], port=LOCAL[1], token=lambda: f"t{next(tokens)}", **kwargs)


def make_call(**kwargs: Any) -> OutgoingCall:
    values: dict[str, Any] = {
        "call_id": "call-1",
        "callee": "bob",
        "domain": FAR[0],
        "login": "alice",
        "password": "secret",
        "display_name": "Alice",
    }
    values.update(kwargs)
    return OutgoingCall(**values)


class FarEnd:
    """Reads what the core sends and plays the other side."""

    def __init__(self, core: UserAgentCore, address: tuple[str, int] = FAR, tag: str = "far") -> None:
        self.core = core
        self.address = address
        self.tag = tag
        self.now = 0.0
        self.sent: list[tuple[Message, tuple[str, int]]] = []
        self.raw: list[bytes] = []
        self._cseq = itertools.count(100)
        self.contact = f"<sip:bob@{address[0]}:{address[1]}>"

    def at(self, now: float) -> FarEnd:
        self.now = now
        return self

    def advance(self, now: float) -> None:
        """Fire the core's timers up to ``now`` one deadline at a time."""
        while (deadline := self.core.next_deadline()) is not None and deadline <= now:
            self.core.handle_timers(deadline)
        self.now = now

    def collect(self) -> list[Message]:
        new: list[Message] = []
        for datagram in self.core.take_datagrams():
            message = Message.parse(datagram.data)
            self.raw.append(datagram.data)
            self.sent.append((message, datagram.destination))
            new.append(message)
        return new

    def take(self, kind: str | int) -> Message:
        """The first message of method (or status code) ``kind`` sent since the last collect."""
        for message in self.collect_pending():
            if (isinstance(message, Request) and message.method == kind) or (
                isinstance(message, Response) and message.code == kind
            ):
                self._pending.remove(message)
                return message
        raise AssertionError(f"no {kind} sent; pending: {[describe(m) for m in self._pending]}")

    _pending: list[Message]

    def collect_pending(self) -> list[Message]:
        if not hasattr(self, "_pending"):
            self._pending = []
        self._pending.extend(self.collect())
        return list(self._pending)

    def nothing_sent(self) -> list[str]:
        pending = self.collect_pending()
        self._pending = []
        return [describe(m) for m in pending]

    def destination_of(self, message: Message) -> tuple[str, int]:
        for sent, destination in self.sent:
            if sent is message:
                return destination
        raise AssertionError("message not sent")

    def feed(self, message: Message | bytes) -> None:
        data = message if isinstance(message, bytes) else serialize(message)
        self.core.receive_datagram(data, self.address, self.now)

    def reply(
        self,
        request: Message,
        code: int,
        *,
        sdp: str | None = None,
        headers: dict[str, str] | None = None,
        tag: str | None = None,
    ) -> Response:
        assert isinstance(request, Request)
        response = create_response(request, code, to_tag=(tag or self.tag) if code > 100 else None)
        if request.method == "INVITE" and 200 <= code < 300:
            response.headers.set("Contact", self.contact)
        for name, value in (headers or {}).items():
            response.headers.set(name, value)
        if sdp is not None:
            response.headers.set("Content-Type", "application/sdp")
            response.body = sdp.encode()
        self.feed(response)
        return response

    def request(
        self,
        method: str,
        invite: Message,
        *,
        sdp: str | None = None,
        headers: dict[str, str] | None = None,
        cseq: int | None = None,
        branch: str | None = None,
    ) -> Request:
        """A far-end request in the dialog our ``invite`` created."""
        sequence = cseq if cseq is not None else next(self._cseq)
        branch = branch or f"z9hG4bKfar{method}{sequence}"
        request = Request(method, invite.contact[0].uri)
        request.headers.set("Via", f"SIP/2.0/UDP {self.address[0]}:{self.address[1]};branch={branch};rport")
        request.headers.set("Max-Forwards", "70")
        request.headers.set("From", f"{invite.headers['To']};tag={self.tag}")
        request.headers.set("To", invite.headers["From"])
        request.headers.set("Call-ID", invite.call_id)
        request.headers.set("CSeq", f"{sequence} {method}")
        request.headers.set("Contact", self.contact)
        for name, value in (headers or {}).items():
            request.headers.set(name, value)
        if sdp is not None:
            request.headers.set("Content-Type", "application/sdp")
            request.body = sdp.encode()
        self.feed(request)
        return request


def describe(message: Message) -> str:
    if isinstance(message, Request):
        return f"{message.method} {message.cseq}"
    return f"{message.code} {message.cseq}"  # type: ignore[attr-defined]
