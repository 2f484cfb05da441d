"""SIP message helpers on top of ``sipmessage``: strict datagram validation, responses, Via and routing rules.

Nothing here parses SIP syntax itself: :func:`parse_datagram` calls :meth:`sipmessage.Message.parse` and then checks
what RFC 3261 requires of a message we act on (sections 8.1.1, 18.3, 20).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable

from sipmessage import Address, CSeq, Headers, Message, Parameters, Request, Response, URI, Via

__all__ = [
    "BRANCH_MAGIC_COOKIE",
    "MalformedMessage",
    "parse_datagram",
    "create_response",
    "reason_phrase",
    "random_token",
    "new_branch",
    "set_content_length",
    "serialize",
    "stamp_received",
    "response_destination",
    "uri_destination",
    "header_int",
    "via_for",
    "order_headers",
    "sdp_body",
    "SDP",
]

#: RFC 3261 section 8.1.1.7: every branch we create starts with it.
BRANCH_MAGIC_COOKIE = "z9hG4bK"

DEFAULT_SIP_PORT = 5060
SDP = "application/sdp"

_METHOD = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")

_REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}

_MANDATORY = ("Via", "From", "To", "Call-ID", "CSeq")


class MalformedMessage(ValueError):
    """A datagram we must not act on.

    ``request`` is set when enough of a request was understood to answer it with 400 (Bad Request).
    """

    def __init__(self, reason: str, request: Request | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


def reason_phrase(code: int) -> str:
    """The RFC 3261 reason phrase for ``code`` (a generic one for unknown codes)."""
    phrase = _REASON_PHRASES.get(code)
    if phrase is not None:
        return phrase
    return {1: "Progress", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error"}.get(
        code // 100, "Global Failure"
    )


def random_token(nbytes: int = 8) -> str:
    """A random lowercase hexadecimal token (tags, Call-IDs, cnonces)."""
    return secrets.token_hex(nbytes)


def new_branch(token: Callable[[], str] = random_token) -> str:
    """A fresh RFC 3261 branch."""
    return BRANCH_MAGIC_COOKIE + token()


def header_int(message: Message, name: str) -> int | None:
    """An integer header, or ``None`` when absent; ``ValueError`` when present but not a non-negative integer."""
    value = message.headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise ValueError(f"{name} is not a non-negative integer: {value!r}")
    return int(value)


def _salvage_request(data: bytes) -> Request | None:
    """Re-parse a request whose start line ``sipmessage`` rejected, with a placeholder URI, to answer it with 400."""
    first, sep, rest = data.partition(b"\r\n")
    bits = first.split(b" ")
    if not sep or len(bits) != 3 or bits[2] != b"SIP/2.0" or not _METHOD.match(bits[0].decode("latin-1")):
        return None
    try:
        message = Message.parse(bits[0] + b" sip:invalid.invalid SIP/2.0\r\n" + rest)
    except ValueError:
        return None
    return message if isinstance(message, Request) else None


def _answerable(request: Request) -> bool:
    if any(request.headers.get(name) is None for name in _MANDATORY):
        return False
    try:
        return bool(request.via)
    except ValueError:
        return False


def parse_datagram(data: bytes) -> Request | Response:
    """Parse and validate one UDP datagram as a SIP message.

    Raises :class:`MalformedMessage` with a precise reason when the datagram is not a SIP message we may act on: not
    SIP, a bad start line, a missing or unparseable mandatory header (Via, From, To, Call-ID, CSeq), a CSeq method
    that differs from the request method, a bad Max-Forwards, or a Content-Length larger than the body. A body longer
    than Content-Length is truncated (RFC 3261 section 18.3).
    """
    try:
        message = Message.parse(data)
    except ValueError as exc:
        salvaged = _salvage_request(data) if isinstance(data, bytes) else None
        if salvaged is not None and _answerable(salvaged):
            raise MalformedMessage(f"invalid start line: {exc}", salvaged) from None
        raise MalformedMessage(f"not a SIP message: {exc}") from None

    request = message if isinstance(message, Request) else None
    try:
        _validate(message)
    except ValueError as exc:
        answerable = request is not None and _answerable(request)
        raise MalformedMessage(str(exc), request if answerable else None) from None
    return message


def _validate(message: Request | Response) -> None:
    if isinstance(message, Response):
        if not 100 <= message.code <= 699:
            raise ValueError(f"invalid status code {message.code}")
    elif not _METHOD.match(message.method):
        raise ValueError(f"invalid method {message.method!r}")
    for name in _MANDATORY:
        if message.headers.get(name) is None:
            raise ValueError(f"missing {name} header")
    try:
        vias = message.via
    except ValueError:
        raise ValueError("invalid Via header") from None
    if not vias:
        raise ValueError("missing Via header")
    for name, getter in (("From", Address.parse), ("To", Address.parse), ("CSeq", CSeq.parse)):
        try:
            getter(message.headers[name])
        except ValueError:
            raise ValueError(f"invalid {name} header") from None
    if not message.call_id.strip():
        raise ValueError("empty Call-ID header")
    cseq = message.cseq
    if cseq.sequence >= 2**32:
        raise ValueError("CSeq number out of range")
    if isinstance(message, Request) and cseq.method != message.method:
        raise ValueError(f"CSeq method {cseq.method} does not match request method {message.method}")
    if isinstance(message, Request):
        header_int(message, "Max-Forwards")
    length = header_int(message, "Content-Length")
    if length is not None:
        if length > len(message.body):
            raise ValueError(f"Content-Length {length} exceeds the {len(message.body)} byte body")
        message.body = message.body[:length]


def create_response(request: Request, code: int, phrase: str | None = None, *, to_tag: str | None = None) -> Response:
    """A response to ``request`` (RFC 3261 section 8.2.6.2): Via, From, To, Call-ID and CSeq copied verbatim.

    ``to_tag`` is added to To when it has no tag yet (never on 100 Trying).
    """
    response = Response(code, phrase or reason_phrase(code))
    vias = request.headers.getlist("Via")
    if vias:
        response.headers.setlist("Via", list(vias))
    response.headers.set("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag and code > 100:
        try:
            address = Address.parse(to)
        except ValueError:
            address = None
        if address is not None and "tag" not in address.parameters:
            to = str(dataclasses.replace(address, parameters=address.parameters.replace(tag=to_tag)))
    response.headers.set("To", to)
    response.headers.set("Call-ID", request.headers.get("Call-ID") or "")
    response.headers.set("CSeq", request.headers.get("CSeq") or "")
    response.headers.set("Content-Length", "0")
    return response


def set_content_length(message: Message) -> None:
    """Set Content-Length to the body length."""
    message.headers.set("Content-Length", str(len(message.body)))


def serialize(message: Message) -> bytes:
    """The wire form, with a correct Content-Length."""
    set_content_length(message)
    return bytes(message)  # type: ignore[call-overload, no-any-return]


def stamp_received(request: Request, source: tuple[str, int]) -> None:
    """Add ``received`` (RFC 3261 section 18.2.1) and fill an empty ``rport`` (RFC 3581) on the top Via."""
    vias = request.via
    top = vias[0]
    changes: dict[str, str | None] = {}
    rport_requested = "rport" in top.parameters
    if top.host != source[0] or rport_requested:
        changes["received"] = source[0]
    if rport_requested and not top.parameters.get("rport"):
        changes["rport"] = str(source[1])
    if changes:
        vias[0] = Via(top.transport, top.host, top.port, top.parameters.replace(**changes))
        request.via = vias


def response_destination(response: Response) -> tuple[str, int]:
    """Where a response goes over UDP (RFC 3261 section 18.2.2 with RFC 3581): ``received`` or the sent-by host, and
    the ``rport`` value or the sent-by port."""
    top = response.via[0]
    host = top.parameters.get("received") or top.host
    rport = top.parameters.get("rport")
    if rport and rport.isdigit():
        return (host, int(rport))
    return (host, top.port or DEFAULT_SIP_PORT)


def uri_destination(uri: URI) -> tuple[str, int]:
    """The UDP destination of a SIP URI without DNS SRV (RFC 3263 reduced to A records): maddr or host, port or 5060."""
    host = uri.parameters.get("maddr") or uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, uri.port or DEFAULT_SIP_PORT)


def via_for(host: str, port: int, branch: str) -> Via:
    """Our Via: UDP, the public address, the branch and an empty ``rport`` (RFC 3581)."""
    return Via("UDP", host, port, Parameters(branch=branch, rport=None))


_HEADER_ORDER = ("Via", "Route", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Contact")
_HEADER_LAST = ("Content-Type", "Content-Length")


def order_headers(message: Message) -> None:
    """Put the routing headers first and the body headers last (readability; RFC 3261 section 7.3.1 allows any order
    but recommends Via, Route and Max-Forwards early for proxies)."""
    names = message.headers.keys()
    lowered = {name.lower(): name for name in names}
    first = [lowered[name.lower()] for name in _HEADER_ORDER if name.lower() in lowered]
    last = [lowered[name.lower()] for name in _HEADER_LAST if name.lower() in lowered]
    middle = [name for name in names if name not in first and name not in last]
    headers = Headers()
    for name in first + middle + last:
        headers.setlist(name, list(message.headers.getlist(name)))
    message.headers = headers


def sdp_body(message: Message) -> str | None:
    """The SDP body of ``message``, or ``None`` (no body, another content type, not UTF-8)."""
    if not message.body.strip():
        return None
    content_type = message.headers.get("Content-Type")
    if content_type is not None and content_type.split(";")[0].strip().lower() != SDP:
        return None
    try:
        return message.body.decode("utf-8")
    except UnicodeDecodeError:
        return None
