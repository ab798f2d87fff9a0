"""gRPC hooks (tusd's -hooks-grpc): HookHandler.InvokeHook of tusd's hook.proto.

grpc and protobuf are imported only here, when --hooks-grpc is set. The channel is made
on the first call, inside the event loop that uses it (grpc.aio binds to one loop).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .event import HookResponse
from .http import canonical
from .proto import INVOKE_HOOK, messages, request_message, response_document
from .sender import HookFailed

# tusd's client retries what go-grpc-middleware retries by default (UNAVAILABLE,
# RESOURCE_EXHAUSTED); DEADLINE_EXCEEDED is --hooks-timeout here (tusd sets none).
RETRIED = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


def _modules() -> tuple[Any, Any]:
    try:
        return importlib.import_module("grpc"), importlib.import_module("grpc.aio")
    except ImportError:
        raise ValueError("--hooks-grpc needs the grpcio and protobuf packages "
                         "(pip install grpcio protobuf)") from None


class GrpcHook:
    """One InvokeHook per call; the sender retries (codes in RETRIED)."""

    def __init__(self, target: str, *, timeout: float, secure: bool = False,
                 server_certificate: Path | None = None,
                 client_certificate: Path | None = None, client_key: Path | None = None,
                 forward_headers: Sequence[str] = ()) -> None:
        self._grpc, self._aio = _modules()
        try:
            messages()
        except ImportError:
            raise ValueError("--hooks-grpc needs the protobuf package") from None
        self.target = target
        self.timeout = timeout
        self.forward = tuple(h.strip() for h in forward_headers if h.strip())
        self._credentials: Any = None
        if secure:
            if server_certificate is None:
                # tusd's words.
                raise ValueError("hooks-grpc-secure was set to true but no gRPC server TLS "
                                 "certificate file was provided. A value for "
                                 "hooks-grpc-server-tls-certificate is missing")
            chain = key = None
            if client_certificate is not None and client_key is not None:
                chain, key = client_certificate.read_bytes(), client_key.read_bytes()
            elif client_certificate is not None or client_key is not None:
                raise ValueError("--hooks-grpc-client-tls-certificate and "
                                 "--hooks-grpc-client-tls-key go together")
            self._credentials = self._grpc.ssl_channel_credentials(
                root_certificates=server_certificate.read_bytes(), private_key=key,
                certificate_chain=chain)
        self._channel: Any = None
        self._invoke: Any = None

    def describe(self) -> str:
        return f"grpc {self.target}"

    def _stub(self) -> Any:
        if self._invoke is None:
            if self._credentials is not None:
                self._channel = self._aio.secure_channel(self.target, self._credentials)
            else:
                self._channel = self._aio.insecure_channel(self.target)
            self._invoke = self._channel.unary_unary(
                INVOKE_HOOK, request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=messages().HookResponse.FromString)
        return self._invoke

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        header: Mapping[str, list[str]] = body["Event"]["HTTPRequest"]["Header"]
        metadata = [(name.lower(), values[0]) for name in self.forward
                    if (values := header.get(canonical(name)))]
        try:
            response = await self._stub()(request_message(body), timeout=self.timeout,
                                          metadata=metadata or None)
        except self._aio.AioRpcError as exc:
            code = exc.code().name
            raise HookFailed(f"gRPC {code}: {exc.details()}", retry=code in RETRIED) from None
        try:
            return HookResponse.parse(response_document(response))
        except ValueError as exc:
            raise HookFailed(f"{hook_type} hook answered no tusd hook response: {exc}",
                             retry=False) from None

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
