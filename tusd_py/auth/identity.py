"""Who is asking: bearer tokens, JWTs or an operator's hook, and the request's subject.

The subject becomes an upload's owner at creation; every later request for the
upload must come from the same subject (others get 404, so ids are no oracle).
"""

from __future__ import annotations

import contextvars
import hmac
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from starlette.requests import Request

# The authenticated subject of the request being handled (None: auth is off).
_subject: contextvars.ContextVar[str | None] = contextvars.ContextVar("subject", default=None)


def current_subject() -> str | None:
    return _subject.get()


def set_subject(subject: str | None) -> contextvars.Token[str | None]:
    return _subject.set(subject)


def reset_subject(token: contextvars.Token[str | None]) -> None:
    _subject.reset(token)


class Unauthorized(Exception):
    """The request proves no identity we accept; the message says why (one line)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)


class Authenticator(Protocol):
    async def authenticate(self, request: Request) -> Principal:
        """Return who sent the request, or raise Unauthorized."""
        ...


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization: Bearer <token>")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


class StaticTokenAuth:
    """One shared secret: every holder is the same subject (simple setups)."""

    def __init__(self, token: str, subject: str = "token") -> None:
        self._token = token.encode()
        self._subject = subject

    async def authenticate(self, request: Request) -> Principal:
        # Constant-time compare: the token must not leak through response timing.
        if not hmac.compare_digest(bearer_token(request).encode(), self._token):
            raise Unauthorized("invalid token")
        return Principal(self._subject)


class JwtAuth:
    """Signed JWTs (HS256 with a shared secret; RS256/ES256 with a public key).

    The subject is the `sub` claim; `exp` is required so a leaked token dies.
    """

    def __init__(
        self, key: str, algorithms: Sequence[str], *, audience: str | None = None,
        issuer: str | None = None, leeway: float = 30.0,
    ) -> None:
        import jwt  # with cryptography ~10 MiB per process: only when JWTs are configured

        self._jwt = jwt
        self._key = key
        self._algorithms = list(algorithms)
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway

    async def authenticate(self, request: Request) -> Principal:
        token = bearer_token(request)
        try:
            claims: dict[str, Any] = self._jwt.decode(
                token, self._key, algorithms=self._algorithms, audience=self._audience,
                issuer=self._issuer, leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except self._jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        return Principal(str(claims["sub"]), claims)


HookResult = str | Principal | None
HookFunction = Callable[[Request], HookResult | Awaitable[HookResult]]


class HookAuth:
    """`--auth-hook module:function`: the function gets the request and returns the
    subject (or a Principal), or None / raises Unauthorized to refuse it."""

    def __init__(self, function: HookFunction) -> None:
        self._function = function

    @classmethod
    def load(cls, spec: str) -> HookAuth:
        module_name, sep, name = spec.partition(":")
        if not sep or not module_name or not name:
            raise ValueError(f"--auth-hook must be module:function, not {spec!r}")
        function = getattr(importlib.import_module(module_name), name)
        if not callable(function):
            raise ValueError(f"--auth-hook {spec!r} is not callable")
        return cls(function)

    async def authenticate(self, request: Request) -> Principal:
        result = self._function(request)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, Principal):
            return result
        if isinstance(result, str) and result:
            return Principal(result)
        raise Unauthorized("refused by the auth hook")


class AnyOf:
    """Several methods side by side (e.g. a service token and users' JWTs)."""

    def __init__(self, methods: Sequence[Authenticator]) -> None:
        self._methods = list(methods)

    async def authenticate(self, request: Request) -> Principal:
        reason = "no authentication method accepted the request"
        for method in self._methods:
            try:
                return await method.authenticate(request)
            except Unauthorized as exc:
                reason = str(exc)
        raise Unauthorized(reason)


def build_authenticator(
    *, token: str | None = None, jwt_secret: str | None = None,
    jwt_public_key: Path | None = None, jwt_algorithms: Sequence[str] = (),
    jwt_audience: str | None = None, jwt_issuer: str | None = None,
    hook: str | None = None,
) -> Authenticator | None:
    """The configured methods, or None when the server is open (the default)."""
    methods: list[Authenticator] = []
    if token:
        methods.append(StaticTokenAuth(token))
    if jwt_secret:
        methods.append(JwtAuth(jwt_secret, jwt_algorithms or ["HS256"],
                               audience=jwt_audience, issuer=jwt_issuer))
    if jwt_public_key:
        methods.append(JwtAuth(jwt_public_key.read_text(), jwt_algorithms or ["RS256", "ES256"],
                               audience=jwt_audience, issuer=jwt_issuer))
    if hook:
        methods.append(HookAuth.load(hook))
    if not methods:
        return None
    return methods[0] if len(methods) == 1 else AnyOf(methods)
