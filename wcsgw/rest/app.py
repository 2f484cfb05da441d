"""
The REST API of Flashphoner WCS's "SIP as RTMP": POST, JSON in, JSON out, under ``/rest-api``.

Errors are JSON in the shape WCS uses (error, exception, message, path, status, timestamp in ms); every answer
carries ``Access-Control-Allow-Origin: *``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from http import HTTPStatus
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from wcsgw.calls import CallError, CallManager
from wcsgw.rest import validate
from wcsgw.rest.auth import CredentialStore
from wcsgw.rest.validate import ApiError

log = Logger()

_EXCEPTIONS = {
    400: "BadRequestException",
    401: "UnauthorizedException",
    404: "NotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "PayloadTooLargeException",
    500: "InternalErrorException",
    503: "ServiceUnavailableException",
}
REALM = "wcsgw"


def error_body(code: int, message: str, path: str, now: float) -> bytes:
    """WCS's error JSON (the shape of the spec's known issue 3)."""
    exception = _EXCEPTIONS.get(code, "InternalErrorException")
    return json.dumps({
        "error": HTTPStatus(code).phrase,
        "exception": f"com.flashphoner.rest.server.exception.{exception}",
        "message": message,
        "path": path,
        "status": code,
        "timestamp": int(now * 1000),
    }, indent=2).encode("utf-8")


def _path(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")


class RestApi:
    """Routes of the REST API; all state lives in the injected ``CallManager``."""

    app = Klein()

    def __init__(self, manager: CallManager, reactor: IReactorTime, *, default_dtmf: str = "RFC2833",
                 metrics: Callable[[], str] | None = None) -> None:
        self._manager = manager
        self._reactor = reactor
        self._default_dtmf = default_dtmf.upper()
        self._metrics = metrics

    # -- helpers ------------------------------------------------------------------------------------------

    def _reply(self, request: IRequest, value: Any, code: int = 200) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(value, indent=2).encode("utf-8")

    def _error(self, request: IRequest, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return error_body(code, message, _path(request), self._reactor.seconds())

    def _body(self, request: IRequest) -> dict[str, Any]:
        raw = request.content.read() if request.content is not None else b""
        return validate.parse_body(raw)

    # -- errors -------------------------------------------------------------------------------------------

    @app.handle_errors(ApiError)
    def _api_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        return self._error(request, exc.code, exc.message)

    @app.handle_errors(CallError)
    def _call_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        return self._error(request, exc.code, exc.message)

    @app.handle_errors(NotFound)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return self._error(request, 404, f"no such REST method: {_path(request)}")

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(set(failure.value.valid_methods or ["POST"]) - {"HEAD"}) + ["OPTIONS"]
        request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        method = request.method.decode("ascii", "replace")
        return self._error(request, 405, f"method {method} is not allowed; use {' or '.join(allowed[:-1])}")

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("REST {path} failed", failure, path=_path(request))
        return self._error(request, 500, "internal error")

    # -- metrics ------------------------------------------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Counters in the Prometheus text format (behind the same auth as the REST API)."""
        if self._metrics is None:
            raise ApiError(404, "metrics are not available")
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._metrics().encode("utf-8")

    # -- calls --------------------------------------------------------------------------------------------

    @app.route("/rest-api/call/startup", methods=["POST"])
    def call_startup(self, request: IRequest) -> bytes:
        body = self._body(request)
        peer = request.getClientAddress()
        session_id = f"{getattr(peer, 'host', 'unknown')}:{secrets.randbelow(10**19)}"
        call_request = validate.call_request(body, self._manager.new_call_id(), session_id)
        self._manager.startup(call_request)
        return self._reply(request, {})

    @app.route("/rest-api/call/find", methods=["POST"])
    def call_find(self, request: IRequest) -> bytes:
        body = self._body(request)
        calls = self._manager.find(
            call_id=validate.text(body, "callId"),
            callee=validate.text(body, "callee"),
            rtmp_url=validate.rtmp_url(body, "rtmpUrl"),
            status=validate.text(body, "status"),
        )
        if not calls:
            raise ApiError(404, "call with the given parameters is not found")
        return self._reply(request, [call.to_json() for call in calls])

    @app.route("/rest-api/call/find_all", methods=["POST"])
    def call_find_all(self, request: IRequest) -> bytes:
        self._body(request)
        calls = self._manager.find()
        if not calls:
            raise ApiError(404, "calls are not found")
        return self._reply(request, [call.to_json() for call in calls])

    @app.route("/rest-api/call/terminate", methods=["POST"])
    def call_terminate(self, request: IRequest) -> bytes:
        call_id = validate.text(self._body(request), "callId", required=True)
        assert call_id is not None
        self._manager.terminate(call_id)
        return self._reply(request, {})

    @app.route("/rest-api/call/send_dtmf", methods=["POST"])
    def call_send_dtmf(self, request: IRequest) -> bytes:
        call_id, digits, kind = validate.dtmf(self._body(request), self._default_dtmf)
        self._manager.send_dtmf(call_id, digits, kind)
        return self._reply(request, {})

    # -- pushes -------------------------------------------------------------------------------------------

    @app.route("/rest-api/push/startup", methods=["POST"])
    def push_startup(self, request: IRequest) -> bytes:
        body = self._body(request)
        stream_name = validate.text(body, "streamName", required=True)
        rtmp_url = validate.rtmp_url(body, "rtmpUrl", required=True)
        rtmp_stream = validate.text(body, "rtmpStream", max_length=1024)
        assert stream_name is not None and rtmp_url is not None
        destination = self._manager.push_startup(stream_name, rtmp_url, rtmp_stream)
        return self._reply(request, destination.to_json())

    @app.route("/rest-api/push/find", methods=["POST"])
    def push_find(self, request: IRequest) -> bytes:
        body = self._body(request)
        found = self._manager.push_find(
            stream_name=validate.text(body, "streamName"),
            rtmp_url=validate.rtmp_url(body, "rtmpUrl"),
            media_session_id=validate.text(body, "mediaSessionId"),
        )
        if not found:
            raise ApiError(404, "push with the given parameters is not found")
        return self._reply(request, [destination.to_json() for destination in found])

    @app.route("/rest-api/push/find_all", methods=["POST"])
    def push_find_all(self, request: IRequest) -> bytes:
        self._body(request)
        found = self._manager.push_find()
        if not found:
            raise ApiError(404, "pushes are not found")
        return self._reply(request, [destination.to_json() for destination in found])

    @app.route("/rest-api/push/terminate", methods=["POST"])
    def push_terminate(self, request: IRequest) -> bytes:
        media_session_id = validate.text(self._body(request), "mediaSessionId", required=True)
        assert media_session_id is not None
        self._manager.push_terminate(media_session_id)
        return self._reply(request, {})


class ApiResource(Resource):
    """
    The root resource: CORS headers and preflight on every path, HTTP Basic auth when a ``CredentialStore`` is
    given (production profile), then the Klein routes.
    """

    isLeaf = True

    def __init__(self, inner: IResource, reactor: IReactorTime, credentials: CredentialStore | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._reactor = reactor
        self._credentials = credentials

    def render(self, request: IRequest) -> Any:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        if request.method == b"OPTIONS":
            request.setHeader(b"Access-Control-Allow-Methods", b"POST, GET, OPTIONS")
            request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type, Authorization")
            request.setHeader(b"Access-Control-Max-Age", b"600")
            request.setResponseCode(204)
            return b""
        if self._credentials is not None and not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader(b"WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode("ascii"))
            request.setHeader(b"Content-Type", b"application/json")
            return error_body(401, "authentication required", _path(request), self._reactor.seconds())
        return self._inner.render(request)

    def _authorized(self, request: IRequest) -> bool:
        assert self._credentials is not None
        raw = request.getHeader(b"Authorization")
        if not raw:
            return False
        scheme, _, encoded = raw.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        return self._credentials.check(user, password)
