"""Who is asking (bearer tokens, JWTs, an operator's hook) and the middleware that asks.

`tusd_py.auth.Principal` is what an `--auth-hook` function may return."""

from .identity import (
    Authenticator,
    Principal,
    Unauthorized,
    build_authenticator,
    current_subject,
    reset_subject,
    set_subject,
)
from .middleware import AuthMiddleware

__all__ = ["AuthMiddleware", "Authenticator", "Principal", "Unauthorized",
           "build_authenticator", "current_subject", "reset_subject", "set_subject"]
