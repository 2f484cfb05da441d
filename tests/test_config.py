"""Tests for wcsgw.config: the settings table, the properties file and its errors."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from wcsgw import config

ROOT = Path(__file__).resolve().parent.parent


class PropertiesTests(SynchronousTestCase):
    def test_shipped_file_lists_every_setting_with_its_default(self) -> None:
        """etc/wcsgw.properties is exactly the rendering of the settings table: every setting, its default, a comment."""
        shipped = (ROOT / "etc" / "wcsgw.properties").read_text(encoding="utf-8")
        self.assertEqual(shipped, config.render_properties())
        values = config.read_properties(shipped, "etc/wcsgw.properties")
        self.assertEqual(values, config.defaults())

    def test_wcs_names(self) -> None:
        """Settings WCS has keep WCS's names and defaults (media ports 31001-32000, rtp_in_buffer, ...)."""
        defaults = config.defaults()
        self.assertEqual((defaults["media_port_from"], defaults["media_port_to"]), (31001, 32000))
        self.assertIn("rtp_in_buffer", defaults)
        self.assertIs(defaults["disable_streaming_proxy"], False)
        self.assertEqual(defaults["callapp_url"], "http://localhost:9091/CallApp")

    def test_reads_values_comments_and_blank_lines(self) -> None:
        """name=value and name = value lines are read; # and ! comments and blank lines are skipped."""
        values = config.read_properties("# c\n! c\n\nrest_port = 9000\nrtp_in_buffer=false\ncodecs=ulaw,h264\n")
        self.assertEqual(values, {"rest_port": 9000, "rtp_in_buffer": False, "codecs": ("ulaw", "h264")})

    def test_bad_value_names_file_line_and_setting(self) -> None:
        """A bad value is reported with the file, the line number and the setting."""
        with self.assertRaises(config.ConfigError) as caught:
            config.read_properties("profile=dev\n\nrest_port=eighty\n", "/etc/x.properties")
        self.assertEqual(str(caught.exception),
                         "/etc/x.properties:3: rest_port: expected an integer, got 'eighty'")

    def test_unknown_setting(self) -> None:
        """An unknown name is an error at its line."""
        with self.assertRaises(config.ConfigError) as caught:
            config.read_properties("no_such_thing=1\n", "f")
        self.assertEqual(str(caught.exception), "f:1: unknown setting 'no_such_thing'")

    def test_line_without_equals(self) -> None:
        """A line that is not name=value is an error at its line."""
        with self.assertRaises(config.ConfigError) as caught:
            config.read_properties("rest_port=1\njust words\n", "f")
        self.assertEqual(str(caught.exception), "f:2: expected name=value, got 'just words'")

    def test_setting_twice(self) -> None:
        """A setting given twice in one file is an error (the second one would silently win)."""
        with self.assertRaises(config.ConfigError) as caught:
            config.read_properties("sip_port=5060\nsip_port=5070\n", "f")
        self.assertEqual(str(caught.exception), "f:2: sip_port is set twice")

    def test_value_parsers(self) -> None:
        """Each kind of value is checked: ranges, choices, addresses, URLs, codec names, delays, activity."""
        cases = {
            ("profile", "staging"): "expected one of dev, production",
            ("sip_port", "70000"): "expected an integer from 0 to 65535",
            ("ip_local", "not-an-ip"): "expected an IP address",
            ("ip", "bad host!"): "expected an IP address or host name",
            ("callapp_url", "ftp://x/"): "expected an http:// or https:// URL",
            ("codecs", "ulaw,g729"): "unknown codec 'g729'",
            ("codecs", "ulaw,ulaw"): "a codec is listed twice",
            ("callapp_retry_delays", "1,x"): "expected comma-separated seconds",
            ("callapp_retry_delays", "0"): "each delay must be above 0",
            ("rtp_in_buffer", "yes"): "expected true or false",
            ("rtp_activity_detecting", "true,0"): "expected an integer from 1 to 86400",
            ("ended_call_ttl", "-1"): "expected a number from 0 to 86400",
        }
        for (name, text), message in cases.items():
            with self.assertRaises(config.ConfigError) as caught:
                config.parse_value(name, text)
            self.assertIn(f"{name}: {message}", str(caught.exception))

    def test_parsed_values(self) -> None:
        """Values are turned into their types: delays, activity pairs, a trimmed URL, an empty delay list."""
        self.assertEqual(config.parse_value("callapp_retry_delays", "0.5, 2"), (0.5, 2.0))
        self.assertEqual(config.parse_value("callapp_retry_delays", ""), ())
        self.assertEqual(config.parse_value("rtp_activity_detecting", "false"), (False, 60))
        self.assertEqual(config.parse_value("rtp_activity_detecting", "true,15"), (True, 15))
        self.assertEqual(config.parse_value("callapp_url", " http://h:9/CallApp/ "), "http://h:9/CallApp")
        self.assertEqual(config.parse_value("ip", "gw.example.com"), "gw.example.com")


class BuildSettingsTests(SynchronousTestCase):
    def test_layers_override_in_order(self) -> None:
        """Later layers (the command line) override earlier ones (the file), which override the defaults."""
        settings = config.build_settings({"rest_port": 9000, "sip_port": 5070}, {"rest_port": 9001})
        self.assertEqual((settings.rest_port, settings.sip_port, settings.https_port), (9001, 5070, 8444))

    def test_media_range_must_be_ordered(self) -> None:
        """media_port_from must be below media_port_to."""
        with self.assertRaises(config.ConfigError) as caught:
            config.build_settings({"media_port_from": 40000, "media_port_to": 39000})
        self.assertIn("media_port_from (40000) must be below media_port_to (39000)", str(caught.exception))

    def test_cert_and_key_together(self) -> None:
        """A certificate without its key (or the reverse) is refused."""
        with self.assertRaises(config.ConfigError):
            config.build_settings({"tls_cert_file": "/x.pem"})

    def test_rest_bind_address_follows_profile(self) -> None:
        """Without rest_address the dev profile listens on 127.0.0.1 only, production on every interface."""
        self.assertEqual(config.build_settings().rest_bind_address, "127.0.0.1")
        self.assertEqual(config.build_settings({"profile": "production"}).rest_bind_address, "0.0.0.0")
        self.assertEqual(config.build_settings({"rest_address": "10.0.0.1"}).rest_bind_address, "10.0.0.1")
