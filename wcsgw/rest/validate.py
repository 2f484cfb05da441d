"""
Validation of REST request bodies: WCS clients send booleans as JSON booleans or "true"/"false" strings and ports
as numbers or strings; anything we cannot use is refused with a message naming the field.
"""

from __future__ import annotations

import json
import re
from typing import Any

from wcsgw.calls import CallRequest
from wcsgw.rtmp.url import parse as parse_rtmp_url

#: Largest request body accepted (413 above it).
MAX_BODY = 64 * 1024

#: WCS's message for a SIP login or authentication name that is not a valid SIP user part (known issue 3).
RESERVED_SYMBOLS_MESSAGE = "SIP login or authentication name contains reserved symbols"

# RFC 3261 25.1: user = 1*( unreserved / escaped / user-unreserved ).
_SIP_USER_RE = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+$")
# Printable, no white space: what may go into a Call-ID, a callee user part or a stream name.
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")
_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?)$")
DTMF_DIGITS = frozenset("0123456789*#ABCD")
DTMF_TYPES = ("RFC2833", "INFO")


class ApiError(Exception):
    """A request refused by the REST layer; ``code`` is the HTTP status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; an empty body is ``{}``."""
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad("request body must be a JSON object")
    return body


def text(body: dict[str, Any], name: str, *, required: bool = False, pattern: re.Pattern[str] | None = None,
         max_length: int = 256) -> str | None:
    """A string field (numbers are accepted and turned into strings); empty and null mean absent."""
    value = body.get(name)
    if isinstance(value, bool) or not (value is None or isinstance(value, (str, int, float))):
        raise bad(f"{name} must be a string")
    if isinstance(value, (int, float)):
        value = str(value)
    if value is not None:
        value = value.strip()
    if not value:
        if required:
            raise bad(f"{name} is required")
        return None
    if len(value) > max_length:
        raise bad(f"{name} is longer than {max_length} characters")
    if pattern is not None and not pattern.match(value):
        raise bad(f"{name} contains characters that are not allowed: {value!r}")
    return value


def boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise bad(f"{name} must be true or false, got {value!r}")


def port(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise bad(f"{name} must be a port number from 1 to 65535, got {value!r}")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise bad(f"{name} must be a port number from 1 to 65535, got {value!r}")
    return value


def rtmp_url(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """An rtmp:// or rtmps:// URL, trimmed of spaces and trailing slashes (WCS's example has ``live /``)."""
    value = text(body, name, required=required, max_length=2048)
    if value is None:
        return None
    try:
        parse_rtmp_url(value)
    except ValueError as exc:
        raise bad(f"{name} is not a usable rtmp:// or rtmps:// URL: {exc}") from None
    return value.rstrip("/ ")


def sip_user(body: dict[str, Any], name: str) -> str | None:
    """sipLogin / sipAuthenticationName: characters reserved in a SIP user part get WCS's HTTP 500."""
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise bad(f"{name} must be a string")
    if not _SIP_USER_RE.match(value):
        raise ApiError(500, RESERVED_SYMBOLS_MESSAGE)
    return value


def call_request(body: dict[str, Any], new_call_id: str, session_id: str) -> CallRequest:
    """A ``CallRequest`` from a ``call/startup`` body."""
    call_id = text(body, "callId", pattern=_TOKEN_RE) or new_call_id
    callee = text(body, "callee", required=True, pattern=_TOKEN_RE)
    sip_domain = text(body, "sipDomain", required=True, pattern=_HOST_RE)
    proxy = text(body, "sipOutboundProxy", pattern=_HOST_RE)
    sip_port = port(body, "sipPort")
    url = rtmp_url(body, "rtmpUrl")
    stream = text(body, "rtmpStream", pattern=_TOKEN_RE, max_length=1024)
    to_stream = text(body, "toStream", pattern=_TOKEN_RE) or call_id
    has_audio = boolean(body, "hasAudio", True)
    has_video = boolean(body, "hasVideo", True)
    register = boolean(body, "sipRegisterRequired", False)
    app_key = text(body, "appKey")
    visible_name = text(body, "visibleName")
    if visible_name is not None and any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in visible_name):
        raise bad("visibleName contains control characters")
    password = body.get("sipPassword")
    if isinstance(password, (int, float)) and not isinstance(password, bool):
        password = str(password)
    if password is not None and not isinstance(password, str):
        raise bad("sipPassword must be a string")
    login = sip_user(body, "sipLogin")
    auth_name = sip_user(body, "sipAuthenticationName")
    assert callee is not None and sip_domain is not None
    return CallRequest(
        call_id=call_id,
        callee=callee,
        sip_domain=sip_domain,
        to_stream=to_stream,
        rtmp_url=url,
        rtmp_stream=stream,
        has_audio=has_audio,
        has_video=has_video,
        sip_login=login or "anonymous",
        sip_authentication_name=auth_name,
        sip_password=password or None,
        sip_outbound_proxy=proxy,
        sip_port=sip_port,
        app_key=app_key,
        sip_register_required=register,
        visible_name=visible_name,
        session_id=session_id,
    )


def dtmf(body: dict[str, Any], default_type: str) -> tuple[str, str, str]:
    """(callId, digits, type) of a ``call/send_dtmf`` body."""
    call_id = text(body, "callId", required=True)
    digits = text(body, "dtmf", required=True, max_length=64)
    assert call_id is not None and digits is not None
    digits = digits.upper()
    wrong = sorted(set(digits) - DTMF_DIGITS)
    if wrong:
        raise bad(f"dtmf may hold only 0-9 * # A-D, got {''.join(wrong)!r}")
    kind = text(body, "type") or default_type
    kind = kind.upper()
    if kind not in DTMF_TYPES:
        raise bad(f"type must be RFC2833 or INFO, got {kind!r}")
    return call_id, digits, kind
