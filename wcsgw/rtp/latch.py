"""Symmetric RTP for NAT traversal: learning the far end's real source address."""

from __future__ import annotations

from .params import Address, is_private_address


class SourceLatch:
    """Symmetric RTP (latching): which source addresses we accept, and where we send.

    With an SDP address that is private, unspecified or absent, the first valid packet's source is learned
    whatever it is; with a public one, only a source with that IP address (any port: NAT) is learned. Once
    learned, only that exact source is accepted, and replies go there."""

    def __init__(self, expected: Address | None) -> None:
        self.expected = expected
        self.learn_any = expected is None or is_private_address(expected[0])
        self.latched: Address | None = None

    def accepts(self, addr: Address) -> bool:
        if self.latched is not None:
            return addr == self.latched
        if self.learn_any:
            return True
        assert self.expected is not None
        return addr[0] == self.expected[0]

    def confirm(self, addr: Address) -> None:
        if self.latched is None:
            self.latched = addr

    @property
    def destination(self) -> Address | None:
        return self.latched or self.expected
