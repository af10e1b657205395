"""Addresses in URLs, for code on both sides of the HTTP API (kept free of heavy imports: the command line
loads it for `dsm status`)."""

from __future__ import annotations

from urllib.parse import urlsplit


def url_on_host(url: str, peer_addr: str) -> bool:
    """Whether `url` is an http(s) address on the host of a member's peer address `peer_addr` (host:port,
    an IPv6 host in brackets): where a member's advertised HTTP address may take a caller's bearer token
    (`GET /v1/overlay`, `dsm status`), so that a member's metadata cannot send it to another host."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return False
    host = peer_addr.rsplit(":", 1)[0].strip("[]")
    return parts.scheme in ("http", "https") and hostname is not None and hostname == host
