"""Dialog state (RFC 3261 section 12) and the RFC 4028 Session-Expires header, sans I/O."""

from __future__ import annotations

import dataclasses

from sipmessage import Address, CSeq, Message, Parameters, Request, Response, URI

from .message import response_destination, uri_destination

__all__ = ["Dialog", "PendingAnswer", "SessionExpires", "session_expires", "uac_session_timer", "uas_session_timer"]


@dataclasses.dataclass
class Dialog:
    """One dialog as the UAC that created it sees it.

    ``route_set`` is the Record-Route of the 2xx in reverse order (RFC 3261 section 12.1.2); in-dialog requests carry
    it as Route (loose routing) or move its first entry to the Request-URI (strict routing, section 12.2.1.1).
    """

    call_id: str
    local_tag: str
    remote_tag: str
    local_address: Address
    remote_address: Address
    local_seq: int
    remote_seq: int | None
    remote_target: URI
    route_set: list[Address]

    @classmethod
    def from_uac_response(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx to our INVITE creates (RFC 3261 section 12.1.2).

        ``ValueError`` when the response has no To tag. A 2xx without Contact (invalid, but seen) keeps the
        Request-URI as remote target.
        """
        to = response.to_address
        remote_tag = to.parameters.get("tag")
        if not remote_tag:
            raise ValueError("2xx response without To tag")
        local = request.from_address
        contacts = response.contact
        return cls(
            call_id=request.call_id,
            local_tag=local.parameters.get("tag") or "",
            remote_tag=remote_tag,
            local_address=local,
            remote_address=to,
            local_seq=request.cseq.sequence,
            remote_seq=None,
            remote_target=contacts[0].uri if contacts else request.uri,
            route_set=list(reversed(response.record_route)),
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def matches(self, message: Message) -> bool:
        """A request from the far end belongs to this dialog (its To tag is ours, its From tag theirs)."""
        if message.call_id != self.call_id:
            return False
        local = message.to_address.parameters.get("tag")
        remote = message.from_address.parameters.get("tag")
        return local == self.local_tag and remote == self.remote_tag

    def next_hop(self) -> tuple[str, int]:
        """The destination of in-dialog requests without an outbound proxy: first route or remote target."""
        if self.route_set:
            return uri_destination(self.route_set[0].uri)
        return uri_destination(self.remote_target)

    def create_request(self, method: str, *, sequence: int | None = None) -> Request:
        """A new in-dialog request (RFC 3261 section 12.2.1.1).

        The local CSeq grows by one, except for ACK and CANCEL, which take ``sequence`` (the INVITE's).
        """
        if method in ("ACK", "CANCEL"):
            if sequence is None:
                raise ValueError(f"{method} needs the sequence number of its INVITE")
        else:
            self.local_seq += 1
            sequence = self.local_seq
        loose = not self.route_set or "lr" in self.route_set[0].uri.parameters
        if loose:
            uri = self.remote_target
            routes = list(self.route_set)
        else:
            first = self.route_set[0].uri
            uri = dataclasses.replace(first, parameters=Parameters())
            routes = list(self.route_set[1:]) + [Address(uri=self.remote_target)]
        request = Request(method, uri)
        request.headers.set("From", str(self.local_address))
        request.headers.set("To", str(self.remote_address))
        request.headers.set("Call-ID", self.call_id)
        request.cseq = CSeq(sequence, method)
        if routes:
            request.route = routes
        return request

    def accept_remote_sequence(self, request: Request) -> bool:
        """Record the CSeq of a far-end request; ``False`` when it is lower than the last one (answer 500)."""
        sequence = request.cseq.sequence
        if self.remote_seq is not None and sequence < self.remote_seq:
            return False
        self.remote_seq = sequence
        return True

    def refresh_target(self, message: Message) -> None:
        """A target refresh request or its 2xx changes the remote target to its Contact."""
        try:
            contacts = message.contact
        except ValueError:
            return
        if contacts:
            self.remote_target = contacts[0].uri


class PendingAnswer:
    """Our 2xx to a far-end re-INVITE, retransmitted until its ACK (RFC 3261 section 13.3.1.4).

    ``offerless``: the re-INVITE had no SDP, so the 2xx carries our offer and the ACK their answer.
    """

    def __init__(self, response: Response, sequence: int, interval: float, offerless: bool) -> None:
        self.response = response
        self.sequence = sequence
        self.interval = interval
        self.offerless = offerless
        self.destination = response_destination(response)


@dataclasses.dataclass(frozen=True)
class SessionExpires:
    """RFC 4028 ``Session-Expires: delta-seconds [;refresher=uac|uas]``."""

    interval: int
    refresher: str | None = None

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        delta, _semi, rest = value.strip().partition(";")
        delta = delta.strip()
        if not delta.isdigit() or int(delta) == 0:
            raise ValueError(f"invalid Session-Expires {value!r}")
        params = Parameters.parse(";" + rest) if rest.strip() else Parameters()
        refresher = (params.get("refresher") or "").lower() or None
        if refresher not in (None, "uac", "uas"):
            raise ValueError(f"invalid Session-Expires refresher {refresher!r}")
        return cls(int(delta), refresher)

    def __str__(self) -> str:
        return f"{self.interval};refresher={self.refresher}" if self.refresher else str(self.interval)


def session_expires(message: Message) -> SessionExpires | None:
    """The Session-Expires of ``message`` (``None`` when absent or invalid)."""
    value = message.headers.get("Session-Expires")
    if value is None:
        return None
    try:
        return SessionExpires.parse(value)
    except ValueError:
        return None


def uac_session_timer(response: Response) -> tuple[int, bool] | None:
    """The session timer a 2xx to our INVITE/UPDATE sets: (interval, we refresh), ``refresher=uac`` meaning us
    (RFC 4028 section 7.2); ``None`` when the 2xx has no Session-Expires (no session timer)."""
    expires = session_expires(response)
    if expires is None:
        return None
    return (expires.interval, (expires.refresher or "uac") == "uac")


def uas_session_timer(request: Request, response: Response) -> tuple[int, bool] | None:
    """The session timer of a far-end refresh request (RFC 4028 section 9): (interval, we refresh).

    Its Session-Expires is echoed in our 2xx ``response`` with a refresher (theirs when they support timers and
    named none), plus ``Require: timer`` when they refresh. ``None`` when the request has no Session-Expires.
    """
    expires = session_expires(request)
    if expires is None:
        return None
    refresher = expires.refresher or ("uac" if "timer" in request.supported else "uas")
    response.headers.set("Session-Expires", str(SessionExpires(expires.interval, refresher)))
    if refresher == "uac":
        response.headers.set("Require", "timer")
    return (expires.interval, refresher == "uas")
