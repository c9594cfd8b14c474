"""An asynchronous client for the dashboard API (README, "Dashboard") that turns every failure into one readable
message.

`TidalAPI(base_url, token)` offers `get(path, params)` and `post(path, body)`; both return the decoded JSON body or
raise `TidalAPIError` with a message written for the person (or the assistant) reading it. GETs go through the
optional `DiskCache` (cache.py), which decides alone what may be served from disk.
"""
from __future__ import annotations

import asyncio
from typing import Any

import httpx

from .cache import DiskCache

DEFAULT_API_URL = "http://127.0.0.1:4400"


class TidalAPIError(Exception):
    """A dashboard call that failed: `status` is the HTTP status (None when the dashboard was not reachable)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


def _describe_fields(detail: Any) -> str:
    if isinstance(detail, list):
        parts = [f"{d.get('field', '?')}: {d.get('message', 'invalid')}" for d in detail if isinstance(d, dict)]
        if parts:
            return "; ".join(parts)
    return str(detail) if detail is not None else "no detail"


class TidalAPI:
    """The dashboard at `base_url`; `token` (TIDAL_API_TOKEN) is sent as a bearer token on POSTs.

    `client_kwargs` go to `httpx.AsyncClient` (tests pass `event_hooks` to count requests). One HTTP client is kept
    per event loop, so the object can be shared by servers and tests that each run their own loop.
    """

    def __init__(self, base_url: str = DEFAULT_API_URL, token: str | None = None, *, cache: DiskCache | None = None,
                 timeout: float = 120.0, **client_kwargs):
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.cache = cache
        self.timeout = timeout
        self.client_kwargs = client_kwargs
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # a client's pooled connections belong to the loop that opened them: a new loop gets a new client
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout, **self.client_kwargs)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._loop = None

    # ------------------------------------------------------------------------------------------------ calls
    async def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` (query `params`, None values dropped); served from the disk cache when it may be."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if self.cache is None:
            return await self._request("GET", path, params=params)
        return await self.cache.get(self.base_url, path, params, self._fetch)

    async def post(self, path: str, body: dict[str, Any] | None = None, *, auth: bool = False,
                   headers: dict[str, str] | None = None) -> Any:
        """POST JSON `body` (None values dropped); `auth` sends the bearer token (a missing token is an error)."""
        json_body = {k: v for k, v in (body or {}).items() if v is not None}
        return await self._request("POST", path, json=json_body, headers=self._headers(path, auth, headers))

    async def patch(self, path: str, body: dict[str, Any]) -> Any:
        """PATCH JSON `body` as given (a None value means "clear this field"), with the bearer token."""
        return await self._request("PATCH", path, json=body, headers=self._headers(path, True, None))

    def _headers(self, path: str, auth: bool, headers: dict[str, str] | None) -> dict[str, str]:
        headers = dict(headers or {})
        if auth:
            if not self.token:
                raise TidalAPIError(f"TIDAL_API_TOKEN missing or wrong: {path} needs the dashboard's token "
                                    "(set TIDAL_API_TOKEN to the dashboard's TIDAL_AUTH_TOKEN)", 401)
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _fetch(self, path: str, params: dict[str, Any]) -> Any:
        return await self._request("GET", path, params=params)

    async def _request(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise TidalAPIError(f"the Tidal dashboard at {self.base_url} did not answer {method} {path} in time "
                                f"({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TidalAPIError(f"the Tidal dashboard at {self.base_url} is not reachable ({type(exc).__name__}); "
                                "start it with `make dashboard` or set TIDAL_API_URL") from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise TidalAPIError(f"the dashboard answered {method} {path} with a body that is not JSON",
                                    response.status_code) from None
        raise self._error(method, path, response)

    def _error(self, method: str, path: str, response: httpx.Response) -> TidalAPIError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200] or response.reason_phrase, "detail": None}
        if not isinstance(body, dict):
            body = {"error": str(body)[:200], "detail": None}
        error, detail = str(body.get("error") or response.reason_phrase), body.get("detail")
        if status == 401:
            message = f"TIDAL_API_TOKEN missing or wrong: the dashboard refused {method} {path} (401)"
        elif status == 404:
            message = f"not found: {error} ({method} {path})"
        elif status == 429:
            retry = response.headers.get("Retry-After", "a few")
            message = f"rate limited by the dashboard: retry after {retry} s ({method} {path})"
        elif status == 422:
            message = f"invalid request to {path}: {_describe_fields(detail)}"
        elif status == 409:
            message = f"conflict: {error}" + (f" ({detail})" if detail else "")
        else:
            message = f"the dashboard answered {status} to {method} {path}: {error}" + (
                f" ({_describe_fields(detail)})" if detail else "")
        return TidalAPIError(message, status, body)
