"""The one way bankflow stops on SIGINT/SIGTERM: the first signal asks for a clean stop, the second gives up.

A clean stop means the running loop sees its `threading.Event` set, flushes its batches, acknowledges what is
durable and returns. Used by `Pipeline.apply` (the cdc stage) and by the Kafka consumer's workers and their
supervisor.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _or_default(handler: Any) -> Any:
    return signal.SIG_DFL if handler is None else handler


@contextmanager
def stop_on_signals(stop: threading.Event,
                    signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[threading.Event]:
    """While inside, the first of `signals` sets `stop`; one that comes when `stop` is already set restores
    that signal's previous handling (the default, unless something else installed a handler) and raises
    KeyboardInterrupt. The previous handlers come back on exit.

    Off the main thread, where Python cannot install signal handlers, this changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # getsignal is None for a handler installed from C: the default is the closest to it that can be restored
    previous: dict[int, Any] = {sig: _or_default(signal.getsignal(sig)) for sig in signals}

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # asked to stop already: give up now
            signal.signal(signum, previous[signum])
            raise KeyboardInterrupt
        stop.set()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
