"""Who made a request, as the upload service sees it: no HTTP objects below the adapters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class Caller:
    """The request behind a service call: what hooks report and limits count.

    The header map is built only when a hook asks for it (most requests send no hook).
    """

    method: str = ""
    uri: str = ""
    remote_addr: str = ""
    client_key: str = ""  # whom --max-concurrent-uploads counts: the owner, or the client IP
    raw_headers: Sequence[tuple[bytes, bytes]] = field(default=(), repr=False)

    @cached_property
    def header(self) -> Mapping[str, list[str]]:
        """Go's canonical header names, as tusd's hook JSON carries them."""
        header: dict[str, list[str]] = {}
        for raw_name, raw_value in self.raw_headers:
            name = raw_name.decode("latin-1")
            canonical = "-".join(part.capitalize() for part in name.split("-"))
            header.setdefault(canonical, []).append(raw_value.decode("latin-1"))
        return header


NOBODY = Caller()  # background work: the sweeper, the completion worker
