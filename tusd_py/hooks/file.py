"""File hooks (tusd's -hooks-dir): one executable per event, named like the event.

As tusd runs them: the event's JSON on stdin, TUS_ID / TUS_SIZE / TUS_OFFSET in the
environment, the hook directory as working directory; exit status 0 and stdout holds
the hook response JSON (empty: no changes), anything else means the hook failed. A
missing file means no hook for that event. What the process writes to stderr is logged.
The process runs beside the event loop (anyio), killed when it outlives the timeout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream

from ..ops import logs
from .event import HookResponse
from .sender import HookFailed

STDERR_LOGGED = 4000  # characters of a hook's stderr put in the log line


class FileHook:
    """One process per call; a file hook is not retried (tusd's are not)."""

    def __init__(self, directory: Path, *, timeout: float) -> None:
        self.dir = directory.resolve()
        if not self.dir.is_dir():
            raise ValueError(f"--hooks-dir {directory} is not a directory")
        self.timeout = timeout

    def describe(self) -> str:
        return f"file {self.dir}"

    async def aclose(self) -> None:
        pass

    async def call(self, hook_type: str, body: Mapping[str, Any]) -> HookResponse:
        path = self.dir / hook_type
        if not path.exists():
            return HookResponse()  # tusd: 'the user is only using a subset of the hooks'
        upload = body["Event"]["Upload"]
        env = {**os.environ, "TUS_ID": upload["ID"] or "", "TUS_SIZE": str(upload["Size"]),
               "TUS_OFFSET": str(upload["Offset"])}
        try:
            with anyio.fail_after(self.timeout):
                status, out, err = await _run(path, json.dumps(body).encode(), env, self.dir)
        except TimeoutError:
            raise HookFailed(f"{path} ran longer than {self.timeout:g}s and was killed",
                             retry=False) from None
        except OSError as exc:  # not executable, a missing interpreter, ...
            raise HookFailed(f"{path} could not run: {exc}", retry=False) from None
        if err.strip():
            logs.event("hook.stderr", upload["ID"] or None,
                       level=logging.WARNING if status else logging.INFO, type=hook_type,
                       stderr=err.decode(errors="replace").strip()[:STDERR_LOGGED])
        if status != 0:
            raise HookFailed(f"{path} exited with status {status}: "
                             f"{out.decode(errors='replace').strip()[:200]}", retry=False)
        if not out.strip():
            return HookResponse()
        try:
            return HookResponse.parse(json.loads(out))
        except ValueError as exc:  # JSONDecodeError is one
            raise HookFailed(f"{path} printed no tusd hook response: {exc}",
                             retry=False) from None


async def _run(path: Path, payload: bytes, env: Mapping[str, str],
               cwd: Path) -> tuple[int, bytes, bytes]:
    """Exit status, stdout and stderr of `path` fed `payload` on stdin.

    Cancelled (the timeout), the process is killed. A hook that exits without reading its
    stdin is fine (no broken pipe error), as with Go's exec.
    """
    out, err = bytearray(), bytearray()
    async with await anyio.open_process([str(path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=cwd, env=env) as process:
        async def feed() -> None:
            assert process.stdin is not None
            try:
                await process.stdin.send(payload)
                await process.stdin.aclose()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

        async def drain(stream: ByteReceiveStream | None, into: bytearray) -> None:
            if stream is not None:
                async for chunk in stream:
                    into += chunk

        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(drain, process.stdout, out)
            tg.start_soon(drain, process.stderr, err)
        status = await process.wait()
    return status, bytes(out), bytes(err)
