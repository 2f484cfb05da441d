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

from tests.e2e.gateway import ROOT, CallAppReceiver, free_tcp_port, free_udp_port, start_gateway, wait_for
from tests.e2e.sipp import Sipp, require_sipp


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
        """The README's curl examples work against a started gateway calling a SIPp far end; CallApp gets the
        call's events in order."""
        require_sipp()
        sipp = Sipp(reactor, "uas_answer.xml", workdir=self.mktemp())
        self.addCleanup(sipp.stop)
        yield sipp.start()
        receiver = CallAppReceiver()
        receiver.start(self)
        port = free_tcp_port()
        gateway = yield start_gateway(self, ["--rest-port", str(port), "--callapp-url", receiver.url,
                                             "--sip-port", "0", "--sip-address", "127.0.0.1",
                                             "--media-ports", "42000-42999"])
        outputs = []
        for number, command in enumerate(readme_curl_examples()):
            command = command.replace("localhost:8081", f"127.0.0.1:{port}")
            command = command.replace('"sipPort": "5060"', f'"sipPort": "{sipp.port}"')
            argv = shlex.split(command)
            out, err, code = yield getProcessOutputAndValue("/usr/bin/curl", argv[1:])
            self.assertEqual(code, 0, f"{command}: {err!r}")
            outputs.append(json.loads(out))
            if number == 0:  # let the far end answer before the examples that need an established call
                yield wait_for(lambda: receiver.statuses("call-1")[-1:] == [("ESTABLISHED", "RTMP_STREAM_WAIT")],
                               what="the call to be ESTABLISHED")
        self.assertEqual(len(outputs), 7)
        self.assertEqual(outputs[0], {})
        self.assertEqual([c["callId"] for c in outputs[1]], ["call-1"])
        self.assertEqual((outputs[1][0]["status"], outputs[1][0]["sipStatus"]), ("ESTABLISHED", 200))
        self.assertIn("m=audio", outputs[1][0]["sdp"])
        self.assertEqual(outputs[3]["rtmpStream"], "copy1")
        self.assertEqual(outputs[5], {})  # DTMF sent
        self.assertEqual(outputs[6], {})
        yield wait_for(lambda: receiver.statuses("call-1")[-1:] and receiver.statuses("call-1")[-1][0] == "FINISH",
                       what="the FINISH event")
        statuses = [status for status, _ in receiver.statuses("call-1")]
        self.assertEqual(statuses[:2], ["NEW", "PENDING"])
        self.assertEqual([s for s in statuses if s not in ("NEW", "PENDING")][0], "TRYING")
        self.assertEqual(statuses[-1], "FINISH")
        self.assertIn("RING", statuses)
        self.assertLess(statuses.index("RING"), statuses.index("ESTABLISHED"))
        self.assertEqual({path for path, _ in receiver.events}, {"/CallApp/CallStatusEvent"})
        final = receiver.events[-1][1]
        self.assertEqual((final["info"], final["appKey"], final["caller"]), ("NORMAL_CALL_CLEARING", "callApp", "10009"))
        code = yield sipp.wait_exit(timeout=30)
        self.assertEqual(code, 0, sipp.describe())
        self.assertNotIn('"1234"', gateway.output)

    @inlineCallbacks
    def test_receiver_down_at_first(self) -> None:
        """Events for a CallApp receiver that starts late are retried and arrive in order."""
        receiver = CallAppReceiver()
        port = free_tcp_port()
        config = Path(self.mktemp()).resolve()
        config.write_text("callapp_retry_delays=0.3,0.5,1,1,2,2,4,4\n")
        gateway = yield start_gateway(self, ["--rest-port", str(port), "--callapp-url", receiver.url,
                                             "--config", str(config), "--sip-port", "0",
                                             "--sip-address", "127.0.0.1", "--media-ports", "43000-43099"])
        base = f"http://127.0.0.1:{port}/rest-api"
        nobody = free_udp_port()  # no SIP peer there: each call fails at once (ICMP port unreachable -> 503)
        for n in range(3):
            code, _ = yield self.post(base + "/call/startup", {"callId": f"late-{n}", "callee": "1",
                                                               "sipDomain": "127.0.0.1", "sipPort": nobody,
                                                               "sipLogin": "u", "sipPassword": "pw-Zq81x"})
            self.assertEqual(code, 200)
        yield wait_for(lambda: "did not take an event" in gateway.output, what="a failed delivery in the log")
        receiver.start(self)
        for n in range(3):
            yield wait_for(lambda n=n: "FAILED" in [s for s, _ in receiver.statuses(f"late-{n}")], timeout=60,
                           what=f"events of late-{n}")
            statuses = [s for s, _ in receiver.statuses(f"late-{n}")]
            self.assertEqual((statuses[:2], statuses[-1]), (["NEW", "PENDING"], "FAILED"))
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
        local = Path(self.mktemp()).resolve()
        local.write_text("rest_address=127.0.0.1\n")  # tests never listen beyond 127.0.0.1
        yield start_gateway(self, ["--profile", "production", "--rest-port", str(http_port), "--https-port",
                                   str(https_port), "--state-dir", str(state), "--sip-port", "0",
                                   "--sip-address", "127.0.0.1", "--config", str(local)])
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
