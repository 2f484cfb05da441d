"""SRTP with SDES keying (RFC 4568 ``a=crypto``) and a protect/unprotect context over libsrtp (pylibsrtp).

Supported suites: AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32 (RFC 4568 section 6.2), one inline key
without MKI. Unprotect failures (authentication, replay) are counted and raised as ``ValueError``: callers drop.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import pylibsrtp

AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
SUPPORTED_SUITES = (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32)
MASTER_KEY_LENGTH = 16
MASTER_SALT_LENGTH = 14
KEY_SALT_LENGTH = MASTER_KEY_LENGTH + MASTER_SALT_LENGTH

_PROFILES = {
    AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}
_TAG = re.compile(r"[0-9]{1,9}")
_LIFETIME = re.compile(r"(?:2\^[0-9]{1,2}|[0-9]{1,20})")
_MKI = re.compile(r"([0-9]{1,10}):([0-9]{1,3})")


@dataclass(frozen=True)
class CryptoAttribute:
    """One ``a=crypto`` line: tag, suite, master key||salt, optional lifetime and MKI, session parameters."""

    tag: int
    suite: str
    key_salt: bytes
    lifetime: str | None = None
    mki: tuple[int, int] | None = None  # (value, length in bytes)
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> CryptoAttribute:
        """Parse the attribute value (``a=crypto:`` prefix optional)."""
        text = value.strip()
        for prefix in ("a=crypto:", "crypto:"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
        fields = text.split()
        if len(fields) < 3:
            raise ValueError(f"crypto attribute needs a tag, a suite and key parameters: {value!r}")
        tag_text, suite, key_params, *session_params = fields
        if not _TAG.fullmatch(tag_text):
            raise ValueError(f"crypto tag {tag_text!r} is not a 1-9 digit number")
        if suite not in SUPPORTED_SUITES:
            raise ValueError(f"crypto suite {suite} is not supported")
        if ";" in key_params:
            raise ValueError("crypto attribute with several keys is not supported")
        if not key_params.startswith("inline:"):
            raise ValueError(f"crypto key method in {key_params!r} is not inline")
        key_info, *extras = key_params[len("inline:") :].split("|")
        if len(extras) > 2:
            raise ValueError(f"crypto key parameters {key_params!r} have too many '|' fields")
        try:
            key_salt = base64.b64decode(key_info, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"crypto key {key_info!r} is not valid base64") from exc
        if len(key_salt) != KEY_SALT_LENGTH:
            raise ValueError(f"crypto key||salt is {len(key_salt)} bytes, {suite} needs {KEY_SALT_LENGTH}")
        lifetime = None
        mki = None
        for extra in extras:
            match = _MKI.fullmatch(extra)
            if match and mki is None:
                mki = (int(match.group(1)), int(match.group(2)))
                if not 1 <= mki[1] <= 128:
                    raise ValueError(f"crypto MKI length {mki[1]} is outside 1..128")
            elif _LIFETIME.fullmatch(extra) and lifetime is None and mki is None:
                lifetime = extra
            else:
                raise ValueError(f"crypto key parameter {extra!r} is neither a lifetime nor an MKI")
        return cls(int(tag_text), suite, key_salt, lifetime, mki, tuple(session_params))

    def __str__(self) -> str:
        """The attribute value, without ``a=crypto:``."""
        key = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            key += "|" + self.lifetime
        if self.mki is not None:
            key += f"|{self.mki[0]}:{self.mki[1]}"
        return " ".join([str(self.tag), self.suite, key, *self.session_params])


def generate_key_salt(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """A fresh 30-byte master key||salt."""
    return random_bytes(KEY_SALT_LENGTH)


def generate_crypto(
    tag: int = 1,
    suite: str = AES_CM_128_HMAC_SHA1_80,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> CryptoAttribute:
    """Our own crypto attribute with a new key, for an offer or an answer."""
    if suite not in SUPPORTED_SUITES:
        raise ValueError(f"crypto suite {suite} is not supported")
    return CryptoAttribute(tag, suite, generate_key_salt(random_bytes))


def _check_usable(crypto: CryptoAttribute) -> None:
    if crypto.mki is not None:
        raise ValueError("crypto attribute with an MKI is not supported")
    if crypto.session_params:
        raise ValueError(f"crypto session parameters {' '.join(crypto.session_params)} are not supported")


class SrtpContext:
    """Protects what we send with ``local`` and unprotects what we receive with ``remote``."""

    def __init__(self, local: CryptoAttribute, remote: CryptoAttribute) -> None:
        if local.suite != remote.suite:
            raise ValueError(f"local suite {local.suite} differs from remote suite {remote.suite}")
        _check_usable(local)
        _check_usable(remote)
        profile = _PROFILES[local.suite]
        outbound = pylibsrtp.Policy(
            key=local.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile
        )
        inbound = pylibsrtp.Policy(
            key=remote.key_salt, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile
        )
        self._tx = pylibsrtp.Session(outbound)
        self._rx = pylibsrtp.Session(inbound)
        self.auth_failures = 0
        self.replay_failures = 0
        self.other_failures = 0

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet; ``ValueError`` when it fails authentication or replay checks."""
        return self._unprotect(self._rx.unprotect, packet, "SRTP")

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._unprotect(self._rx.unprotect_rtcp, packet, "SRTCP")

    def _unprotect(self, function: Callable[[bytes], bytes], packet: bytes, name: str) -> bytes:
        try:
            return function(packet)
        except pylibsrtp.Error as exc:
            reason = str(exc)
            if "authentication" in reason:
                self.auth_failures += 1
            elif "replay" in reason:
                self.replay_failures += 1
            else:
                self.other_failures += 1
            raise ValueError(f"{name} unprotect failed: {reason}") from exc
        except ValueError as exc:  # pylibsrtp: packet too long for its buffer
            self.other_failures += 1
            raise ValueError(f"{name} unprotect failed: {exc}") from exc
