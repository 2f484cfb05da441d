"""
End-to-end tests of the gateway process: ``twistd -n wcsgw`` started as ``make run`` starts it, driven with the
README's own curl examples, a real CallApp receiver on 127.0.0.1 (also one that is down at first), and the
production profile over real TLS with auth changed by ``wcsgw-passwd``.
"""

from __future__ import annotations

import base64
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from tests.e2e.gateway import ROOT, CallAppReceiver, free_tcp_port, start_gateway, wait_for


def readme_curl_examples() -> list[str]:
    """The ``$ curl`` lines of the README's REST examples."""
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    section = text.split("Examples\n--------", 1)[1].split("In the production profile", 1)[0]
    return [line.strip()[2:] for line in section.splitlines() if line.strip().startswith("$ curl")]


class GatewayProcessTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @inlineCallbacks
    def post(self, url: str, body: Any, headers: dict[bytes, list[bytes]] | None = None) -> Any:
        response = yield self.http.post(url, data=json.dumps(body).encode(), headers=headers or {})
        content = yield treq.content(response)
        return response.code, (json.loads(content) if content else None)

    @inlineCallbacks
    def test_readme_curl_examples_and_ordered_events(self) -> None:
        """The README's curl examples work against a started gateway; CallApp gets each call's events in order."""
        receiver = CallAppReceiver()
        receiver.start(self)
        port = free_tcp_port()
        yield start_gateway(self, ["--rest-port", str(port), "--callapp-url", receiver.url,
                                   "--sip-port", "0"])
        outputs = []
        for command in readme_curl_examples():
            argv = shlex.split(command.replace("localhost:8081", f"127.0.0.1:{port}"))
            out, err, code = yield getProcessOutputAndValue("/usr/bin/curl", argv[1:])
            self.assertEqual(code, 0, f"{command}: {err!r}")
            outputs.append(json.loads(out))
        self.assertEqual(len(outputs), 7)
        self.assertEqual(outputs[0], {})
        self.assertEqual([c["callId"] for c in outputs[1]], ["call-1"])
        self.assertEqual(outputs[1][0]["status"], "PENDING")
        self.assertEqual(outputs[3]["rtmpStream"], "copy1")
        self.assertEqual(outputs[5]["status"], 409)  # DTMF before ESTABLISHED
        self.assertEqual(outputs[6], {})
        yield wait_for(lambda: len(receiver.statuses("call-1")) >= 3, what="three CallApp events")
        self.assertEqual(receiver.statuses("call-1"), [("NEW", "RTMP_STREAM_WAIT"), ("PENDING", "RTMP_STREAM_WAIT"),
                                                       ("FINISH", "RTMP_STREAM_WAIT")])
        self.assertEqual({path for path, _ in receiver.events}, {"/CallApp/CallStatusEvent"})
        final = receiver.events[-1][1]
        self.assertEqual((final["info"], final["appKey"], final["caller"]), ("NORMAL_CALL_CLEARING", "callApp", "10009"))
        self.assertNotIn("1234", json.dumps([e for _, e in receiver.events]))

    @inlineCallbacks
    def test_receiver_down_at_first(self) -> None:
        """Events for a CallApp receiver that starts late are retried and arrive in order."""
        receiver = CallAppReceiver()
        port = free_tcp_port()
        config = Path(self.mktemp()).resolve()
        config.write_text("callapp_retry_delays=0.3,0.5,1,1,2,2,4,4\n")
        gateway = yield start_gateway(self, ["--rest-port", str(port), "--callapp-url", receiver.url,
                                             "--config", str(config)])
        base = f"http://127.0.0.1:{port}/rest-api"
        for n in range(3):
            code, _ = yield self.post(base + "/call/startup", {"callId": f"late-{n}", "callee": "1",
                                                               "sipDomain": "127.0.0.1", "sipLogin": "u",
                                                               "sipPassword": "pw-Zq81x"})
            self.assertEqual(code, 200)
            code, _ = yield self.post(base + "/call/terminate", {"callId": f"late-{n}"})
            self.assertEqual(code, 200)
        yield wait_for(lambda: "did not take an event" in gateway.output, what="a failed delivery in the log")
        receiver.start(self)
        for n in range(3):
            yield wait_for(lambda n=n: len(receiver.statuses(f"late-{n}")) >= 3, timeout=60,
                           what=f"events of late-{n}")
            self.assertEqual([s for s, _ in receiver.statuses(f"late-{n}")], ["NEW", "PENDING", "FINISH"])
        self.assertIn("late-2", gateway.output)
        self.assertNotIn("pw-Zq81x", gateway.output)
        self.assertNotIn("pw-Zq81x", json.dumps([e for _, e in receiver.events]))

    @inlineCallbacks
    def test_bad_option_exits_nonzero_naming_it(self) -> None:
        """A bad option value makes twistd exit non-zero with a usage error naming the option."""
        twistd = str(Path(sys.executable).with_name("twistd"))
        out, err, code = yield getProcessOutputAndValue(
            twistd, ["-n", "--pidfile=", "wcsgw", "--rest-port", "eighty"], env={"PYTHONPATH": str(ROOT)},
            path=str(ROOT))
        self.assertNotEqual(code, 0)
        self.assertIn(b"--rest-port: expected an integer, got 'eighty'", out + err)

    @inlineCallbacks
    def test_help_lists_options(self) -> None:
        """twistd wcsgw --help documents the options."""
        twistd = str(Path(sys.executable).with_name("twistd"))
        out, err, code = yield getProcessOutputAndValue(twistd, ["wcsgw", "--help"], env={"PYTHONPATH": str(ROOT)},
                                                        path=str(ROOT))
        self.assertEqual(code, 0, err)
        for option in (b"--config", b"--profile", b"--rest-port", b"--media-ports", b"--state-dir"):
            self.assertIn(option, out)

    def tearDown(self) -> Any:
        return self.pool.closeCachedConnections()


class ProductionProfileTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_https_and_basic_auth_changed_by_passwd_command(self) -> None:
        """Production: a real TLS handshake against the generated certificate; auth refused, accepted, changed."""
        state = Path(self.mktemp()).resolve()
        http_port, https_port = free_tcp_port(), free_tcp_port()
        yield start_gateway(self, ["--profile", "production", "--rest-port", str(http_port), "--https-port",
                                   str(https_port), "--state-dir", str(state), "--sip-port", "0"])
        cert_pem = (state / "tls" / "wcsgw-cert.pem").read_bytes()
        trust = ssl.Certificate.loadPEM(cert_pem)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        https = treq.client.HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool))
        plain = treq.client.HTTPClient(Agent(reactor, pool=pool))
        url = f"https://localhost:{https_port}/rest-api/call/find_all"
        plain_url = f"http://127.0.0.1:{http_port}/rest-api/call/find_all"

        def auth(user: str, password: str) -> dict[bytes, list[bytes]]:
            return {b"Authorization": [b"Basic " + base64.b64encode(f"{user}:{password}".encode())]}

        @inlineCallbacks
        def status(client: Any, target: str, headers: dict[bytes, list[bytes]]) -> Any:
            response = yield client.post(target, data=b"{}", headers=headers)
            yield treq.content(response)
            return response.code, response.headers

        code, headers = yield status(https, url, {})
        self.assertEqual(code, 401)
        self.assertTrue(headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic"))
        self.assertEqual((yield status(https, url, auth("admin", "wrong")))[0], 401)
        self.assertEqual((yield status(https, url, auth("admin", "admin")))[0], 404)
        self.assertEqual((yield status(plain, plain_url, {}))[0], 401)
        self.assertEqual((yield status(plain, plain_url, auth("admin", "admin")))[0], 404)

        passwd = str(Path(sys.executable).with_name("wcsgw-passwd"))
        out, err, code = yield _run_with_stdin(passwd, ["--state-dir", str(state), "--password-stdin"], b"N3w-pw\n")
        self.assertEqual(code, 0, err)
        stored = (state / "rest-credentials").read_text()
        self.assertNotIn("N3w-pw", stored)
        self.assertIn("admin:scrypt$", stored)
        self.assertEqual((yield status(https, url, auth("admin", "admin")))[0], 401)
        self.assertEqual((yield status(https, url, auth("admin", "N3w-pw")))[0], 404)
        self.assertEqual((yield status(plain, plain_url, auth("admin", "N3w-pw")))[0], 404)

        untrusting = treq.client.HTTPClient(Agent(reactor, pool=pool))
        yield self.assertFailure(untrusting.post(url, data=b"{}", headers=auth("admin", "N3w-pw")), Exception)


def _run_with_stdin(executable: str, args: list[str], data: bytes) -> Any:
    """Run a command feeding ``data`` on its standard input; fires with (out, err, exit code)."""
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ProcessProtocol

    class Feed(ProcessProtocol):
        def __init__(self) -> None:
            self.out, self.err = bytearray(), bytearray()
            self.done: Deferred[tuple[bytes, bytes, int]] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(data)
            self.transport.closeStdin()

        def outReceived(self, chunk: bytes) -> None:
            self.out += chunk

        def errReceived(self, chunk: bytes) -> None:
            self.err += chunk

        def processEnded(self, reason: Any) -> None:
            self.done.callback((bytes(self.out), bytes(self.err), reason.value.exitCode))

    proto = Feed()
    reactor.spawnProcess(proto, executable, [executable, *args], env={"PYTHONPATH": str(ROOT)}, path=str(ROOT))
    return proto.done
