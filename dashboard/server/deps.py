"""Request dependencies: the service container, bearer authentication, and rate limiting."""
from __future__ import annotations

import hashlib
import ipaddress
import secrets

from fastapi import Request

from .errors import RateLimited, Unauthorized

RATE_LIMIT_STATE = "rate_limit"


def get_services(request: Request):
    return request.app.state.services


def _digest(token: str) -> bytes:
    # hashing both sides gives equal-length inputs to compare_digest and allows any (non-ASCII) characters
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def require_auth(request: Request) -> None:
    """`Authorization: Bearer <TIDAL_AUTH_TOKEN>`: scheme case-insensitive (RFC 7235), token compared exactly."""
    expected = request.app.state.services.settings.auth_token
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="tidal"'})
    scheme, _, token = header.partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("expected 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": 'Bearer realm="tidal", error="invalid_request"'})
    if not expected or not secrets.compare_digest(_digest(token), _digest(expected)):
        raise Unauthorized("invalid bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="tidal", error="invalid_token"'})


def client_ip(request: Request, trusted_proxies: tuple) -> str:
    """The peer address; X-Forwarded-For is honoured only when the peer is a trusted proxy, and then the
    right-most address that is not itself a trusted proxy is the client."""
    peer = request.client.host if request.client else "unknown"
    if not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer
    return peer


def _is_trusted(address: str, networks: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


async def rate_limit(request: Request) -> None:
    """Token bucket per client IP; runs before the body is used. Headers go on every answer (see app.py)."""
    services = request.app.state.services
    decision = await services.limiter.check(client_ip(request, services.settings.trusted_proxies))
    request.state.rate_limit = decision
    if not decision.allowed:
        raise RateLimited(f"rate limit exceeded; try again in {decision.retry_after} s",
                          detail={"retryAfter": decision.retry_after, "limit": decision.limit})
