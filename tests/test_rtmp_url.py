"""Tests for wcsgw.rtmp.url."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wcsgw.rtmp.url import check_stream_name, normalize, parse, split_stream_name


class ParseTests(SynchronousTestCase):
    def assertRefused(self, url: str, message: str) -> None:
        with self.assertRaises(ValueError) as caught:
            parse(url)
        self.assertEqual(str(caught.exception), message)

    def test_simple(self) -> None:
        """rtmp://host/app gives the host, the default port 1935 and the app."""
        url = parse("rtmp://example.com/live")
        self.assertEqual((url.scheme, url.host, url.port, url.app), ("rtmp", "example.com", 1935, "live"))
        self.assertEqual(url.tc_url, "rtmp://example.com/live")
        self.assertFalse(url.tls)

    def test_rtmps_default_port(self) -> None:
        """rtmps defaults to port 443 and uses TLS."""
        url = parse("rtmps://live-api-s.facebook.com/rtmp/")
        self.assertEqual((url.port, url.app, url.tls), (443, "rtmp", True))

    def test_explicit_port_kept_in_tc_url(self) -> None:
        """An explicit port is used and kept in tcUrl."""
        url = parse("rtmp://localhost:1936/live")
        self.assertEqual(url.port, 1936)
        self.assertEqual(url.tc_url, "rtmp://localhost:1936/live")

    def test_wcs_documentation_example(self) -> None:
        """The WCS example "rtmp://localhost:1935/live /" loses its trailing space and slash."""
        url = parse("rtmp://localhost:1935/live /")
        self.assertEqual((url.host, url.port, url.app), ("localhost", 1935, "live"))
        self.assertEqual(url.tc_url, "rtmp://localhost:1935/live")

    def test_surrounding_whitespace(self) -> None:
        """Leading and trailing whitespace and trailing slashes are trimmed."""
        self.assertEqual(parse("  rtmp://h/live//\n").app, "live")

    def test_instance(self) -> None:
        """app/instance both go into the connect app."""
        url = parse("rtmp://wowza:1935/live/_definst_")
        self.assertEqual((url.app_name, url.instance, url.app), ("live", "_definst_", "live/_definst_"))
        self.assertEqual(url.tc_url, "rtmp://wowza:1935/live/_definst_")

    def test_query_carried(self) -> None:
        """The query string travels in both app and tcUrl."""
        url = parse("rtmp://h/live/_definst_?token=abc&x=1")
        self.assertEqual(url.query, "token=abc&x=1")
        self.assertEqual(url.app, "live/_definst_?token=abc&x=1")
        self.assertEqual(url.tc_url, "rtmp://h/live/_definst_?token=abc&x=1")

    def test_credentials(self) -> None:
        """user:pass@ is parsed out and kept out of tcUrl."""
        url = parse("rtmp://bob:s3cr:et@h:1935/live")
        self.assertEqual((url.username, url.password, url.host), ("bob", "s3cr:et", "h"))
        self.assertEqual(url.tc_url, "rtmp://h:1935/live")

    def test_user_without_password(self) -> None:
        """A user name alone has no password."""
        url = parse("rtmp://bob@h/live")
        self.assertEqual((url.username, url.password), ("bob", None))

    def test_ipv6(self) -> None:
        """IPv6 literals are bracketed; the brackets are not part of the host."""
        url = parse("rtmp://[::1]:1935/live")
        self.assertEqual((url.host, url.port), ("::1", 1935))
        self.assertEqual(url.tc_url, "rtmp://[::1]:1935/live")

    def test_scheme_case(self) -> None:
        """The scheme is case-insensitive."""
        self.assertEqual(parse("RTMP://h/live").scheme, "rtmp")

    def test_errors(self) -> None:
        """Each malformed URL is refused with a message naming the problem."""
        self.assertRefused("", "rtmpUrl is empty")
        self.assertRefused(" / ", "rtmpUrl is empty")
        self.assertRefused(
            "localhost/live", "rtmpUrl 'localhost/live' has no scheme (expected rtmp:// or rtmps://)"
        )
        self.assertRefused("http://h/live", "rtmpUrl scheme 'http' is not supported (expected rtmp or rtmps)")
        self.assertRefused(
            "rtmpt://h/live", "rtmpUrl scheme 'rtmpt' is not supported (expected rtmp or rtmps)"
        )
        self.assertRefused("rtmp://h", "rtmpUrl 'rtmp://h' has no application name")
        self.assertRefused("rtmp://h:1935/", "rtmpUrl 'rtmp://h:1935/' has no application name")
        self.assertRefused(
            "rtmp://h?x=1", "rtmpUrl 'rtmp://h?x=1' has a query string but no application name"
        )
        self.assertRefused("rtmp:///live", "rtmpUrl 'rtmp:///live' has no host")
        self.assertRefused("rtmp://h:abc/live", "rtmpUrl 'rtmp://h:abc/live' has an invalid port 'abc'")
        self.assertRefused("rtmp://h:/live", "rtmpUrl 'rtmp://h:/live' has an invalid port ''")
        self.assertRefused(
            "rtmp://h:70000/live", "rtmpUrl 'rtmp://h:70000/live' has port 70000 outside 1..65535"
        )
        self.assertRefused("rtmp://h:0/live", "rtmpUrl 'rtmp://h:0/live' has port 0 outside 1..65535")
        self.assertRefused("rtmp://h//live", "rtmpUrl 'rtmp://h//live' has an empty path segment")
        self.assertRefused(
            "rtmp://h/a/b/c", "rtmpUrl 'rtmp://h/a/b/c' has 3 path segments; expected /app or /app/instance"
        )
        self.assertRefused("rtmp://h/li ve", "rtmpUrl 'rtmp://h/li ve' contains whitespace")
        self.assertRefused(
            "rtmp://ex_a!mple/live", "rtmpUrl 'rtmp://ex_a!mple/live' has an invalid host 'ex_a!mple'"
        )
        self.assertRefused("rtmp://[::1/live", "rtmpUrl 'rtmp://[::1/live' has an unclosed '[' in the host")
        self.assertRefused("rtmp://[zz]/live", "rtmpUrl 'rtmp://[zz]/live' has an invalid IPv6 address 'zz'")
        self.assertRefused(
            "rtmp://:pw@h/live", "rtmpUrl 'rtmp://:pw@h/live' has an empty user name before '@'"
        )

    def test_not_a_string(self) -> None:
        """Non-string input is a ValueError too."""
        with self.assertRaises(ValueError):
            parse(None)  # type: ignore[arg-type]


class NormalizeTests(SynchronousTestCase):
    def test_equivalent_forms(self) -> None:
        """Case of scheme and host, default port and trailing slash do not matter."""
        forms = ["rtmp://Example.COM/live", "RTMP://example.com:1935/live/", "rtmp://example.com:1935/live "]
        self.assertEqual({normalize(form) for form in forms}, {"rtmp://example.com:1935/live"})

    def test_path_case_matters(self) -> None:
        """Application names keep their case: servers treat them case-sensitively."""
        self.assertNotEqual(normalize("rtmp://h/Live"), normalize("rtmp://h/live"))

    def test_credentials_dropped(self) -> None:
        """Credentials do not make a destination different."""
        self.assertEqual(normalize("rtmp://u:p@h/live"), "rtmp://h:1935/live")

    def test_rtmps(self) -> None:
        """rtmps normalizes with port 443; query strings are kept."""
        self.assertEqual(normalize("rtmps://H/app/inst?k=v"), "rtmps://h:443/app/inst?k=v")

    def test_ipv6(self) -> None:
        """IPv6 hosts are bracketed and lower-cased."""
        self.assertEqual(normalize("rtmp://[FE80::1]/live"), "rtmp://[fe80::1]:1935/live")


class StreamNameTests(SynchronousTestCase):
    def test_query(self) -> None:
        """A stream name may carry its own query string."""
        self.assertEqual(split_stream_name("cam1?token=x"), ("cam1", "token=x"))
        self.assertEqual(split_stream_name("cam1"), ("cam1", None))
        self.assertEqual(check_stream_name("cam1?a=1&b=2"), "cam1?a=1&b=2")

    def test_invalid(self) -> None:
        """Empty names, whitespace and bare query strings are refused."""
        for name, message in [
            ("", "stream name is empty"),
            ("a b", "stream name 'a b' contains whitespace or control characters"),
            ("?k=v", "stream name '?k=v' is only a query string"),
        ]:
            with self.assertRaises(ValueError) as caught:
                check_stream_name(name)
            self.assertEqual(str(caught.exception), message)
