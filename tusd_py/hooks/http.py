"""HTTP hooks: each event POSTed as JSON to one URL (tusd's -hooks-http)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .event import HookResponse
from .sender import HookFailed


def canonical(name: str) -> str:
    """Go's http.CanonicalHeaderKey, as the event's header map is keyed."""
    return "-".join(part.capitalize() for part in name.split("-"))


def forwarded(body: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, str]]:
    """The values of the client request headers `names` (every value, as tusd sends them)."""
    header: Mapping[str, list[str]] = body["Event"]["HTTPRequest"]["Header"]
    return [(name, value) for name in names for value in header.get(canonical(name), ())]


class HttpHook:
    """One attempt per call; the sender retries. Network errors and 5xx are retryable."""

    def __init__(self, url: str, *, timeout: float, forward_headers: Sequence[str] = ()) -> None:
        import httpx  # it pulls in click and pygments: only in processes that send hooks

        self._httpx = httpx
        self.url = url
        # tusd's -hooks-http-forward-headers: these client request headers are set on the
        # hook request too (e.g. a Cookie a proxy in front of the receiver checks).
        self.forward = tuple(h.strip() for h in forward_headers if h.strip())
        self._client = httpx.AsyncClient(timeout=timeout)

    def describe(self) -> str:
        return f"http {self.url}"

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        headers = forwarded(body, self.forward)
        try:
            response = await self._client.post(self.url, json=body, headers=headers)
        except self._httpx.HTTPError as exc:
            raise HookFailed(f"{type(exc).__name__}: {exc}", retry=True) from exc
        if response.status_code >= 500:
            raise HookFailed(f"HTTP {response.status_code}", retry=True)
        if not response.is_success:
            raise HookFailed(f"{hook_type} hook answered HTTP {response.status_code}",
                             retry=False)
        if not response.content.strip():
            return HookResponse()  # tusd: an empty body means no changes
        try:
            return HookResponse.parse(response.json())
        except ValueError as exc:
            raise HookFailed(f"{hook_type} hook answered no tusd hook response: {exc}",
                             retry=False) from None

    async def aclose(self) -> None:
        await self._client.aclose()
