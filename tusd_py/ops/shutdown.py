"""Graceful shutdown: on SIGTERM, in-flight transfers save, answer and let go of locks.

uvicorn stops accepting and waits for running requests, but a PATCH streaming a
multi-GB body would hold the process (and its upload's lock) until the grace
period ends and then be cut without its last checkpoint. Instead every body
transfer is asked to stop at once, as a newer request for the upload would.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

Undo = Callable[[], None]


def _exit_zero_after_drain(handler: Callable[..., object], sig: int) -> None:
    """A drained SIGTERM is a clean stop: exit 0, not 'killed by SIGTERM' (143).

    uvicorn (0.29+) records the signals it handled and raises them again after its
    shutdown, with the default handler back, so the process dies of SIGTERM — which
    systemd and Kubernetes report as a failed stop. Forget the SIGTERM it recorded.
    """
    captured = getattr(getattr(handler, "__self__", None), "_captured_signals", None)
    if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
        captured.remove(sig)


def on_exit_signal(callback: Callable[[], None]) -> Undo:
    """Run callback on the running event loop when SIGTERM/SIGINT arrives, then let the
    handler already installed (uvicorn's, which starts its own shutdown) run too."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # in-process test clients: signals are not ours to take
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(sig: int, frame: FrameType | None) -> None:
        # Signal handlers run between bytecodes: hand the work to the loop itself.
        loop.call_soon_threadsafe(callback)
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)
            _exit_zero_after_drain(chained, sig)
        elif chained == signal.SIG_DFL:
            raise KeyboardInterrupt

    for sig in previous:
        signal.signal(sig, handler)

    def undo() -> None:
        for sig, old in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, old)

    return undo
