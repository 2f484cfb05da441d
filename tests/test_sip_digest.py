"""Tests for wcsgw.sip.digest: RFC 2069/2617/7616 vectors and the client's challenge handling."""

from __future__ import annotations

import hashlib
import itertools

from sipmessage import AuthCredentials, Message, Request, Response
from twisted.trial.unittest import SynchronousTestCase

from wcsgw.sip.digest import DigestChallenge, DigestClient, RealmKey, compute_digest_response, parse_auth_challenge

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def make_request(method: str = "INVITE", body: bytes = b"") -> Request:
    message = Message.parse(
        f"{method} sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nCall-ID: c\r\n"
        f"CSeq: 1 {method}\r\nFrom: <sip:a@example.org>;tag=1\r\nTo: <sip:bob@example.org>\r\n\r\n".encode()
        + body
    )
    assert isinstance(message, Request)
    return message


def challenge_response(code: int, *values: str) -> Response:
    response = Response(code, "Unauthorized")
    for value in values:
        response.headers.add("Proxy-Authenticate" if code == 407 else "WWW-Authenticate", value)
    return response


def credentials(request: Request, header: str = "Authorization") -> list[dict[str, str]]:
    result = []
    for value in request.headers.getlist(header):
        parsed = AuthCredentials.parse(value)
        assert parsed.parameters is not None
        result.append(dict(parsed.parameters))
    return result


class VectorTests(SynchronousTestCase):
    def test_rfc2617_md5_qop_auth(self) -> None:
        """RFC 2617 section 3.5: Mufasa / "Circle Of Life" gives 6629fae49393a05397450978507c4ef1."""
        response = compute_digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        self.assertEqual(response, "6629fae49393a05397450978507c4ef1")

    def test_rfc2069_without_qop(self) -> None:
        """Without qop the RFC 2069 form H(HA1:nonce:HA2) is used."""
        response = compute_digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="testrealm@host.com",
            password="CircleOfLife",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            method="GET",
            uri="/dir/index.html",
        )
        self.assertEqual(response, "1949323746fe6a43ef61f9606e7febea")

    def test_rfc7616_md5(self) -> None:
        """RFC 7616 section 3.9.1, MD5: 8ca523f5e9506fed4657c9700eebdbec."""
        response = compute_digest_response(
            algorithm="MD5",
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            nonce=RFC7616_NONCE,
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            cnonce=RFC7616_CNONCE,
        )
        self.assertEqual(response, "8ca523f5e9506fed4657c9700eebdbec")

    def test_rfc7616_sha256(self) -> None:
        """RFC 7616 section 3.9.1, SHA-256: 753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1."""
        response = compute_digest_response(
            algorithm="SHA-256",
            username="Mufasa",
            realm="http-auth@example.org",
            password="Circle of Life",
            nonce=RFC7616_NONCE,
            method="GET",
            uri="/dir/index.html",
            qop="auth",
            cnonce=RFC7616_CNONCE,
        )
        self.assertEqual(response, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")

    def test_rfc7616_challenge_parses(self) -> None:
        """The RFC 7616 challenge, with qop="auth, auth-int" (which sipmessage alone rejects), parses."""
        challenge = DigestChallenge.from_header(
            'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
            f'nonce="{RFC7616_NONCE}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
            proxy=False,
        )
        self.assertEqual(challenge.qop, ("auth", "auth-int"))
        self.assertEqual(challenge.algorithm, "SHA-256")
        self.assertEqual(challenge.opaque, "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS")
        self.assertTrue(challenge.supported)

    def test_parse_errors(self) -> None:
        """A challenge that is not Digest, or lacks realm or nonce, is refused with a precise message."""
        with self.assertRaises(ValueError) as caught:
            DigestChallenge.from_header('Basic realm="x"', proxy=False)
        self.assertEqual(str(caught.exception), "not a Digest challenge: scheme Basic")
        with self.assertRaises(ValueError) as caught:
            DigestChallenge.from_header('Digest nonce="n"', proxy=False)
        self.assertEqual(str(caught.exception), "Digest challenge without realm")
        with self.assertRaises(ValueError) as caught:
            DigestChallenge.from_header('Digest realm="r"', proxy=False)
        self.assertEqual(str(caught.exception), "Digest challenge without nonce")
        with self.assertRaises(ValueError) as caught:
            parse_auth_challenge("Digest")
        self.assertEqual(str(caught.exception), "invalid authentication challenge 'Digest'")


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        counter = itertools.count(1)
        self.client = DigestClient("alice", "s3cret", cnonce=lambda: f"cn{next(counter)}")

    def answer(self, *values: str, code: int = 401, previous: frozenset[RealmKey] = frozenset()) -> frozenset[RealmKey]:
        """The realms to answer for a challenge the client accepts."""
        realms = self.client.challenge(challenge_response(code, *values), previous)
        assert realms is not None
        return realms

    def authorized(self, realms: frozenset[RealmKey], method: str = "INVITE", body: bytes = b"") -> Request:
        request = make_request(method, body)
        self.client.authorize(request, realms)
        return request

    def test_authorizes_with_qop_auth(self) -> None:
        """A 401 with qop=auth gives an Authorization with username, uri, nc=00000001, cnonce and a correct response."""
        response = challenge_response(401, 'Digest realm="sip.example.org", nonce="abc", qop="auth", opaque="op"')
        realms = self.client.challenge(response)
        self.assertEqual(realms, frozenset({(False, "sip.example.org")}))
        assert realms is not None
        request = self.authorized(realms)
        [params] = credentials(request)
        self.assertEqual(params["username"], "alice")
        self.assertEqual(params["uri"], "sip:bob@example.org")
        self.assertEqual((params["nc"], params["cnonce"], params["qop"]), ("00000001", "cn1", "auth"))
        self.assertEqual(params["opaque"], "op")
        ha1 = md5("alice:sip.example.org:s3cret")
        ha2 = md5("INVITE:sip:bob@example.org")
        self.assertEqual(params["response"], md5(f"{ha1}:abc:00000001:cn1:auth:{ha2}"))

    def test_nonce_count_grows_per_nonce(self) -> None:
        """Each request on the same nonce increments nc; a new nonce starts again at 1."""
        realms = self.answer('Digest realm="r", nonce="n1", qop="auth"')
        for expected in ("00000001", "00000002"):
            request = self.authorized(realms, "BYE")
            self.assertEqual(credentials(request)[0]["nc"], expected)
        self.assertEqual(self.client.nonce_count("n1"), 2)
        realms = self.answer('Digest realm="r", nonce="n2", qop="auth", stale=true', previous=realms)
        request = self.authorized(realms, "BYE")
        self.assertEqual((credentials(request)[0]["nonce"], credentials(request)[0]["nc"]), ("n2", "00000001"))

    def test_second_challenge_for_answered_realm_gives_up(self) -> None:
        """A realm challenged again after we answered it (stale absent) means wrong credentials: give up."""
        first = self.answer('Digest realm="r", nonce="n1"')
        self.assertIsNone(self.client.challenge(challenge_response(401, 'Digest realm="r", nonce="n2"'), first))

    def test_stale_challenge_is_retried(self) -> None:
        """stale=true allows another attempt with the new nonce."""
        first = self.answer('Digest realm="r", nonce="n1"')
        again = self.answer('Digest realm="r", nonce="n2", stale=TRUE', previous=first)
        self.assertEqual(again, first)

    def test_new_realm_after_proxy_is_answered_too(self) -> None:
        """A 401 from the far end after the proxy's 407 was answered keeps both credentials."""
        proxy = self.answer('Digest realm="proxy", nonce="p"', code=407)
        both = self.answer('Digest realm="uas", nonce="u"', previous=proxy)
        self.assertEqual(both, frozenset({(True, "proxy"), (False, "uas")}))
        request = self.authorized(both)
        self.assertEqual(credentials(request, "Proxy-Authorization")[0]["realm"], "proxy")
        self.assertEqual(credentials(request, "Authorization")[0]["realm"], "uas")

    def test_proxy_authenticate_gives_proxy_authorization(self) -> None:
        """A 407 Proxy-Authenticate is answered in Proxy-Authorization."""
        realms = self.answer('Digest realm="p", nonce="n"', code=407)
        request = self.authorized(realms)
        self.assertEqual(request.headers.get("Authorization"), None)
        self.assertEqual(len(credentials(request, "Proxy-Authorization")), 1)

    def test_first_supported_algorithm_of_a_realm_wins(self) -> None:
        """RFC 8760: of several challenges for one realm, the first supported one is used (here SHA-256)."""
        response = challenge_response(
            401,
            'Digest realm="r", nonce="n", algorithm=UNKNOWN-HASH',
            'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
            'Digest realm="r", nonce="n", algorithm=MD5, qop="auth"',
        )
        realms = self.client.challenge(response)
        assert realms is not None
        [params] = credentials(self.authorized(realms))
        self.assertEqual(params["algorithm"], "SHA-256")
        self.assertEqual(len(params["response"]), 64)

    def test_unsupported_only_gives_up(self) -> None:
        """Nothing we support (unknown algorithm, Basic) means no retry."""
        response = challenge_response(401, 'Digest realm="r", nonce="n", algorithm=FOO', 'Basic realm="r"')
        self.assertIsNone(self.client.challenge(response))

    def test_md5_sess_uses_session_key(self) -> None:
        """MD5-sess computes HA1 = H(H(user:realm:pass):nonce:cnonce) with the first cnonce of the nonce."""
        realms = self.answer('Digest realm="r", nonce="n", algorithm=MD5-sess, qop="auth"')
        request = self.authorized(realms)
        [params] = credentials(request)
        ha1 = md5(f"{md5('alice:r:s3cret')}:n:cn1")
        self.assertEqual(params["response"], md5(f"{ha1}:n:00000001:cn1:auth:{md5('INVITE:sip:bob@example.org')}"))
        second = self.authorized(realms, "BYE")
        [again] = credentials(second)
        self.assertEqual(again["response"], md5(f"{ha1}:n:00000002:cn2:auth:{md5('BYE:sip:bob@example.org')}"))

    def test_sha256_sess(self) -> None:
        """SHA-256-sess is supported."""
        realms = self.answer('Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth"')
        request = self.authorized(realms)
        self.assertEqual(credentials(request)[0]["algorithm"], "SHA-256-sess")

    def test_auth_int_hashes_the_body(self) -> None:
        """qop=auth-int alone is used with H(body) in HA2."""
        realms = self.answer('Digest realm="r", nonce="n", qop="auth-int"')
        request = self.authorized(realms, "INFO", b"Signal=1")
        [params] = credentials(request)
        ha2 = md5(f"INFO:sip:bob@example.org:{md5('Signal=1')}")
        self.assertEqual(params["qop"], "auth-int")
        self.assertEqual(params["response"], md5(f"{md5('alice:r:s3cret')}:n:00000001:cn1:auth-int:{ha2}"))

    def test_without_qop_no_cnonce_or_nc(self) -> None:
        """A challenge without qop gets the RFC 2069 form: no cnonce, nc or qop."""
        realms = self.answer('Digest realm="r", nonce="n"')
        request = self.authorized(realms)
        [params] = credentials(request)
        self.assertNotIn("cnonce", params)
        self.assertNotIn("nc", params)
        self.assertEqual(params["response"], md5(f"{md5('alice:r:s3cret')}:n:{md5('INVITE:sip:bob@example.org')}"))

    def test_password_not_in_repr(self) -> None:
        """The password never shows in repr."""
        self.client.challenge(challenge_response(401, 'Digest realm="r", nonce="n"'))
        self.assertNotIn("s3cret", repr(self.client))
