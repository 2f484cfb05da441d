"""Tests for the REST API through treq's StubTreq: every method, status code and field of the spec."""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import RecordingBackend, RecordingSink
from tests.test_calls import SPEC_FIELDS
from wcsgw.calls import CallManager, CallUnavailable
from wcsgw.model import CallStatus
from wcsgw.rest.app import ApiResource, RestApi
from wcsgw.rest.auth import CredentialStore, PasswordHash, write_credentials

BASE = "http://127.0.0.1:8081/rest-api"
SPEC_STARTUP = {
    "callId": "123456711", "callee": "10000", "toStream": "stream1", "rtmpUrl": "rtmp://localhost:1935/live /",
    "rtmpStream": "rtmp_stream1", "hasAudio": "true", "hasVideo": "true", "sipLogin": "10009",
    "sipAuthenticationName": "10009", "sipPassword": "1234", "sipDomain": "226.226.225.226",
    "sipOutboundProxy": "226.226.225.226", "sipPort": "5060", "appKey": "defaultApp", "sipRegisterRequired": "false",
}


class RestTestCase(SynchronousTestCase):
    credentials: CredentialStore | None = None

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.sink = RecordingSink()
        self.backend = RecordingBackend()
        ids = itertools.count(1)
        self.manager = CallManager(self.clock, self.sink, node_id="node@127.0.0.1", backend=self.backend,
                                   id_factory=lambda: f"id{next(ids)}")
        api = RestApi(self.manager, self.clock)
        self.stub = StubTreq(ApiResource(api.app.resource(), self.clock, self.credentials))

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[bytes, list[bytes]] | None = None) -> tuple[int, Any, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        response = self.successResultOf(self.stub.post(BASE + path, data=data, headers=headers or {}))
        content = self.successResultOf(response.content())
        self.stub.flush()
        parsed = json.loads(content) if content else None
        return response.code, parsed, response.headers

    def assertError(self, result: tuple[int, Any, Any], code: int, message: str, path: str) -> None:
        status, body, headers = result
        self.assertEqual(status, code)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertEqual(list(body), ["error", "exception", "message", "path", "status", "timestamp"])
        self.assertEqual((body["status"], body["path"], body["timestamp"]), (code, path, int(self.clock.seconds() * 1000)))
        self.assertIn(message, body["message"])


class StartupTests(RestTestCase):
    def test_spec_example_accepted(self) -> None:
        """The spec's own call/startup example is accepted with 200 {} and every field is taken as sent."""
        code, body, headers = self.post("/call/startup", SPEC_STARTUP)
        self.assertEqual((code, body), (200, {}))
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        (call,) = self.backend.started
        req = call.request
        self.assertEqual((req.call_id, req.callee, req.to_stream, req.rtmp_url, req.rtmp_stream),
                         ("123456711", "10000", "stream1", "rtmp://localhost:1935/live", "rtmp_stream1"))
        self.assertEqual((req.has_audio, req.has_video, req.sip_register_required), (True, True, False))
        self.assertEqual((req.sip_login, req.sip_authentication_name, req.sip_password), ("10009", "10009", "1234"))
        self.assertEqual((req.sip_domain, req.sip_outbound_proxy, req.sip_port, req.app_key),
                         ("226.226.225.226", "226.226.225.226", 5060, "defaultApp"))
        self.assertTrue(req.session_id.startswith("127.0.0.1:"))

    def test_json_booleans_numbers_and_defaults(self) -> None:
        """JSON booleans and numeric ports are accepted; a missing callId is generated; toStream defaults to it."""
        code, _, _ = self.post("/call/startup", {"callee": 10000, "sipDomain": "example.com", "hasAudio": False,
                                                 "hasVideo": True, "sipPort": 5070, "visibleName": "Ralf C"})
        self.assertEqual(code, 200)
        req = self.backend.started[0].request
        self.assertEqual((req.call_id, req.to_stream, req.callee, req.has_audio, req.sip_port),
                         ("id1", "id1", "10000", False, 5070))
        self.assertEqual((req.visible_name, req.rtmp_url), ("Ralf C", None))

    def test_conflicts(self) -> None:
        """409 for a callId in use and for a normalized rtmpUrl+rtmpStream another live call publishes to."""
        self.post("/call/startup", SPEC_STARTUP)
        self.assertError(self.post("/call/startup", dict(SPEC_STARTUP, rtmpStream="other")), 409,
                         "callId '123456711' is in use", "/rest-api/call/startup")
        again = dict(SPEC_STARTUP, callId="2", toStream="s2", rtmpUrl="RTMP://LOCALHOST/live")
        self.assertError(self.post("/call/startup", again), 409, "already published", "/rest-api/call/startup")

    def test_reserved_symbols_get_wcs_500(self) -> None:
        """sipLogin/sipAuthenticationName with characters reserved in a SIP user part: WCS's exact 500 JSON."""
        for field, value in [("sipLogin", "Ralf C12441@host.com"), ("sipAuthenticationName", "Ralf C"),
                             ("sipLogin", "<10009>"), ("sipLogin", 'a"b'), ("sipLogin", "a:b"),
                             ("sipLogin", "a\x01b"), ("sipLogin", "a%zz")]:
            code, body, _ = self.post("/call/startup", dict(SPEC_STARTUP, **{field: value}))
            self.assertEqual(code, 500, (field, value))
            self.assertEqual(body, {
                "error": "Internal Server Error",
                "exception": "com.flashphoner.rest.server.exception.InternalErrorException",
                "message": "SIP login or authentication name contains reserved symbols",
                "path": "/rest-api/call/startup",
                "status": 500,
                "timestamp": 1_700_000_000_000,
            })
        code, _, _ = self.post("/call/startup", dict(SPEC_STARTUP, sipLogin="Ralf_C12441", callId="ok",
                                                     sipAuthenticationName="a%20b.c!~*'()&=+$,;?/"))
        self.assertEqual(code, 200)
        self.assertEqual(self.backend.started[-1].request.sip_login, "Ralf_C12441")

    def test_bad_requests_name_the_field(self) -> None:
        """Malformed requests get 400 with a message naming the field."""
        cases = [
            (dict(SPEC_STARTUP, callee=None), "callee is required"),
            ({k: v for k, v in SPEC_STARTUP.items() if k != "sipDomain"}, "sipDomain is required"),
            (dict(SPEC_STARTUP, rtmpUrl="http://x/live"), "rtmpUrl is not a usable rtmp:// or rtmps:// URL"),
            (dict(SPEC_STARTUP, sipPort="50x"), "sipPort must be a port number"),
            (dict(SPEC_STARTUP, sipPort=70000), "sipPort must be a port number"),
            (dict(SPEC_STARTUP, hasAudio="yes"), "hasAudio must be true or false"),
            (dict(SPEC_STARTUP, sipRegisterRequired=1), "sipRegisterRequired must be true or false"),
            (dict(SPEC_STARTUP, callee={"a": 1}), "callee must be a string"),
            (dict(SPEC_STARTUP, callId="has space"), "callId contains characters that are not allowed"),
            (dict(SPEC_STARTUP, sipDomain="bad domain"), "sipDomain contains characters"),
        ]
        for body, message in cases:
            self.assertError(self.post("/call/startup", body), 400, message, "/rest-api/call/startup")

    def test_malformed_json_and_non_object(self) -> None:
        """Malformed JSON and a body that is not an object are 400."""
        self.assertError(self.post("/call/startup", raw=b"{nope"), 400, "malformed JSON", "/rest-api/call/startup")
        self.assertError(self.post("/call/startup", raw=b"[1, 2]"), 400, "must be a JSON object",
                         "/rest-api/call/startup")
        self.assertError(self.post("/call/startup", raw=b"\xff\xfe"), 400, "malformed JSON", "/rest-api/call/startup")

    def test_body_too_large(self) -> None:
        """A body over 64 KiB is 413."""
        big = json.dumps(dict(SPEC_STARTUP, visibleName="x" * 70000)).encode()
        self.assertError(self.post("/call/startup", raw=big), 413, "larger than 65536", "/rest-api/call/startup")

    def test_backend_refusal(self) -> None:
        """A call the backend cannot take (ports exhausted) gets the backend's status code as JSON."""
        self.backend.refuse = CallUnavailable("media port range 31001-32000 is exhausted")
        self.assertError(self.post("/call/startup", SPEC_STARTUP), 503, "exhausted", "/rest-api/call/startup")


class FindTests(RestTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.post("/call/startup", SPEC_STARTUP)
        self.post("/call/startup", dict(SPEC_STARTUP, callId="two", toStream="s2", rtmpStream="r2", callee="777"))
        self.manager.update_call("two", CallStatus.ESTABLISHED, sip_status=200)

    def test_find_by_each_filter(self) -> None:
        """call/find filters on callId, callee, rtmpUrl and status; all given must match."""
        for filters, expected in [({"callId": "two"}, ["two"]), ({"callee": "10000"}, ["123456711"]),
                                  ({"status": "ESTABLISHED"}, ["two"]),
                                  ({"rtmpUrl": "rtmp://LOCALHOST/live"}, ["123456711", "two"]),
                                  ({"callee": "777", "status": "PENDING"}, None)]:
            code, body, _ = self.post("/call/find", filters)
            if expected is None:
                self.assertEqual(code, 404)
                continue
            self.assertEqual(code, 200)
            self.assertEqual([c["callId"] for c in body], expected)

    def test_find_object_fields(self) -> None:
        """Call objects carry every field of the spec's example in its order, and no password."""
        code, body, _ = self.post("/call/find", {"callId": "two"})
        self.assertEqual(list(body[0]), SPEC_FIELDS)
        self.assertEqual((body[0]["status"], body[0]["sipStatus"]), ("ESTABLISHED", 200))
        self.assertNotIn("1234", json.dumps(body).replace("123456711", ""))

    def test_find_all_and_404(self) -> None:
        """call/find_all lists every call (an empty body is fine); 404 when there is none."""
        code, body, _ = self.post("/call/find_all")
        self.assertEqual((code, len(body)), (200, 2))
        self.manager.update_call("two", CallStatus.FINISH)
        self.manager.update_call("123456711", CallStatus.FINISH)
        self.clock.advance(61)
        self.assertError(self.post("/call/find_all", {}), 404, "not found", "/rest-api/call/find_all")
        self.assertError(self.post("/call/find", {"callId": "two"}), 404, "not found", "/rest-api/call/find")

    def test_terminate(self) -> None:
        """call/terminate: 200 for a live call (the backend hangs up), 404 otherwise, 400 without callId."""
        self.assertEqual(self.post("/call/terminate", {"callId": "two"})[:2], (200, {}))
        self.assertEqual([c.call_id for c in self.backend.terminated], ["two"])
        self.assertError(self.post("/call/terminate", {"callId": "zzz"}), 404, "not found",
                         "/rest-api/call/terminate")
        self.assertError(self.post("/call/terminate", {}), 400, "callId is required", "/rest-api/call/terminate")

    def test_send_dtmf(self) -> None:
        """call/send_dtmf: 200 sent; 404 unknown call; 400 for a bad digit or type; 409 before ESTABLISHED."""
        self.assertEqual(self.post("/call/send_dtmf", {"callId": "two", "dtmf": "9", "type": "RFC2833"})[0], 200)
        self.assertEqual(self.post("/call/send_dtmf", {"callId": "two", "dtmf": "*#a", "type": "info"})[0], 200)
        self.assertEqual(self.post("/call/send_dtmf", {"callId": "two", "dtmf": "5"})[0], 200)
        self.assertEqual(self.backend.dtmf, [("two", "9", "RFC2833"), ("two", "*#A", "INFO"),
                                             ("two", "5", "RFC2833")])
        path = "/rest-api/call/send_dtmf"
        self.assertError(self.post("/call/send_dtmf", {"callId": "x", "dtmf": "1"}), 404, "not found", path)
        self.assertError(self.post("/call/send_dtmf", {"callId": "two", "dtmf": "E"}), 400, "0-9 * # A-D", path)
        self.assertError(self.post("/call/send_dtmf", {"callId": "two", "dtmf": "1", "type": "SIP"}), 400,
                         "type must be RFC2833 or INFO", path)
        self.assertError(self.post("/call/send_dtmf", {"callId": "123456711", "dtmf": "1"}), 409,
                         "not ESTABLISHED", path)


class PushRestTests(RestTestCase):
    def test_push_api(self) -> None:
        """push/startup, find, find_all and terminate with their 200, 404 and 409 answers."""
        self.post("/call/startup", SPEC_STARTUP)
        code, push, _ = self.post("/push/startup", {"streamName": "stream1", "rtmpUrl": "rtmp://b:1936/app/",
                                                    "rtmpStream": "copy"})
        self.assertEqual(code, 200)
        self.assertEqual(list(push), ["mediaSessionId", "streamName", "rtmpUrl", "rtmpStream", "status"])
        self.assertEqual((push["streamName"], push["rtmpUrl"], push["rtmpStream"], push["status"]),
                         ("stream1", "rtmp://b:1936/app", "copy", "RTMP_STREAM_WAIT"))
        self.assertError(self.post("/push/startup", {"streamName": "stream1", "rtmpUrl": "rtmp://B:1936/app",
                                                     "rtmpStream": "copy"}), 409, "already published",
                         "/rest-api/push/startup")
        self.assertError(self.post("/push/startup", {"streamName": "nope", "rtmpUrl": "rtmp://b/app"}), 404,
                         "not found", "/rest-api/push/startup")
        self.assertError(self.post("/push/startup", {"streamName": "stream1"}), 400, "rtmpUrl is required",
                         "/rest-api/push/startup")
        for filters in ({"streamName": "stream1"}, {"rtmpUrl": "rtmp://b:1936/app"},
                        {"mediaSessionId": push["mediaSessionId"]}):
            code, found, _ = self.post("/push/find", filters)
            self.assertEqual((code, found), (200, [push]))
        self.assertEqual(self.post("/push/find_all")[:2], (200, [push]))
        self.assertEqual(self.post("/push/terminate", {"mediaSessionId": push["mediaSessionId"]})[:2], (200, {}))
        self.assertEqual(self.post("/push/find_all")[0], 404)
        self.assertEqual(self.post("/push/find", {"streamName": "stream1"})[0], 404)
        self.assertEqual(self.post("/push/terminate", {"mediaSessionId": push["mediaSessionId"]})[0], 404)


class RoutingTests(RestTestCase):
    def test_unknown_path_404_json(self) -> None:
        """Unknown paths are 404 in the JSON error shape."""
        self.assertError(self.post("/call/nope", {}), 404, "no such REST method", "/rest-api/call/nope")

    def test_wrong_method_405_json(self) -> None:
        """GET on a POST method is 405 in the JSON error shape, with Allow."""
        response = self.successResultOf(self.stub.get(BASE + "/call/find_all"))
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["status"]), (405, 405))
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST, OPTIONS"])

    def test_wrong_method_on_metrics_names_get(self) -> None:
        """POST on /metrics (a GET resource) is 405 with Allow: GET, OPTIONS."""
        response = self.successResultOf(self.stub.post("http://127.0.0.1:8081/metrics", data=b""))
        self.successResultOf(response.content())
        self.assertEqual((response.code, response.headers.getRawHeaders(b"allow")), (405, [b"GET, OPTIONS"]))

    def test_cors_preflight(self) -> None:
        """OPTIONS answers CORS preflight for browsers without needing credentials."""
        response = self.successResultOf(self.stub.request("OPTIONS", BASE + "/call/startup"))
        self.assertEqual(response.code, 204)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])
        self.assertIn(b"Authorization", response.headers.getRawHeaders(b"access-control-allow-headers")[0])


def basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {b"Authorization": [f"Basic {token}".encode()]}


class AuthTests(RestTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "rest-credentials"
        self.credentials = CredentialStore(self.path, Clock(), max_slow_checks_per_second=1000)
        super().setUp()

    def test_default_admin_admin(self) -> None:
        """Without a credentials file admin:admin is accepted."""
        self.assertEqual(self.post("/call/find_all", headers=basic("admin", "admin"))[0], 404)

    def test_refused_with_www_authenticate(self) -> None:
        """No, malformed or wrong credentials: 401 JSON with WWW-Authenticate: Basic."""
        for headers in ({}, basic("admin", "wrong"), basic("root", "admin"),
                        {b"Authorization": [b"Basic !!!"]}, {b"Authorization": [b"Bearer x"]},
                        {b"Authorization": [b"Basic " + base64.b64encode(b"nocolon")]}):
            code, body, response_headers = self.post("/call/find_all", headers=headers)
            self.assertEqual(code, 401)
            self.assertEqual(body["status"], 401)
            self.assertTrue(response_headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic realm="))
        self.assertEqual(self.backend.started, [])

    def test_changed_password_applies_at_once(self) -> None:
        """A changed credentials file is used from the next request: the old password stops working."""
        self.assertEqual(self.post("/call/find_all", headers=basic("admin", "admin"))[0], 404)
        write_credentials(self.path, {"admin": PasswordHash.make("n3w", n=2**10)})
        self.assertEqual(self.post("/call/find_all", headers=basic("admin", "admin"))[0], 401)
        self.assertEqual(self.post("/call/find_all", headers=basic("admin", "n3w"))[0], 404)
