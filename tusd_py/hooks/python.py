"""In-process Python hooks (`--hooks-python module:object`).

The object has a method per event it handles, named like the event with underscores
(`pre_create`, `post_receive`, ...); each gets the event as tusd's hook JSON (a dict of
its own) and returns tusd's hook response as a dict, or None for no changes. An event
with no method has no hook (as a missing file in a hooks dir). An exception, or a call
that outlives the timeout, means the hook failed. A class is instantiated without
arguments; an `aclose()` method is awaited when the server stops.

    class Hooks:
        async def pre_create(self, event: dict) -> dict | None:
            if event["Event"]["Upload"]["MetaData"].get("filename", "").endswith(".exe"):
                return {"RejectUpload": True, "HTTPResponse": {"StatusCode": 415}}
            return None
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import anyio

from .event import HOOK_TYPES, HookResponse
from .sender import HookFailed


def method_name(hook_type: str) -> str:
    return hook_type.replace("-", "_")


class PythonHook:
    """One method call per event; not retried (an exception is the hook's answer)."""

    def __init__(self, target: object, *, timeout: float, name: str = "") -> None:
        self.target = target
        self.timeout = timeout
        self.name = name or type(target).__name__
        if not any(callable(getattr(target, method_name(t), None)) for t in HOOK_TYPES):
            methods = ", ".join(method_name(t) for t in HOOK_TYPES)
            raise ValueError(f"--hooks-python {self.name} has none of the hook methods "
                             f"({methods})")

    @classmethod
    def load(cls, spec: str, *, timeout: float) -> PythonHook:
        """'package.module:object' (the same form as --auth-hook)."""
        module_name, sep, attribute = spec.partition(":")
        if not sep or not module_name or not attribute:
            raise ValueError(f"--hooks-python must be module:object, not {spec!r}")
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ValueError(f"--hooks-python {spec!r}: {module_name} has no "
                                 f"{attribute}") from None
        if inspect.isclass(target):
            target = target()
        return cls(target, timeout=timeout, name=spec)

    def describe(self) -> str:
        return f"python {self.name}"

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        method = getattr(self.target, method_name(hook_type), None)
        if method is None:
            return HookResponse()
        try:
            with anyio.fail_after(self.timeout):
                result = method(copy.deepcopy(dict(body)))
                if inspect.isawaitable(result):
                    result = await result
        except TimeoutError:
            raise HookFailed(f"{self.name}.{method_name(hook_type)} took longer than "
                             f"{self.timeout:g}s", retry=False) from None
        except Exception as exc:
            raise HookFailed(f"{self.name}.{method_name(hook_type)} raised "
                             f"{type(exc).__name__}: {exc}", retry=False) from exc
        if result is None:
            return HookResponse()
        try:
            return HookResponse.parse(result)
        except ValueError as exc:
            raise HookFailed(f"{self.name}.{method_name(hook_type)} returned no tusd hook "
                             f"response: {exc}", retry=False) from None

    async def aclose(self) -> None:
        close = getattr(self.target, "aclose", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result
