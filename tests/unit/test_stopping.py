"""`bankflow.stopping.stop_on_signals`: the first signal asks for a clean stop, the second gives up."""

from __future__ import annotations

import signal
import threading

import pytest

from bankflow.stopping import stop_on_signals


def test_the_first_signal_sets_the_event_and_the_second_raises() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt), stop_on_signals(stop) as event:
        assert event is stop
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
        signal.raise_signal(signal.SIGINT)
        pytest.fail("a second signal must raise KeyboardInterrupt")
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_an_event_set_before_the_signal_counts_as_the_first() -> None:
    stop = threading.Event()
    with pytest.raises(KeyboardInterrupt), stop_on_signals(stop):
        stop.set()  # the run was asked to stop in another way: a signal now means give up
        signal.raise_signal(signal.SIGINT)


def test_previous_handlers_come_back_and_other_signals_are_left_alone() -> None:
    seen: list[int] = []

    def mine(signum: int, _frame: object) -> None:
        seen.append(signum)

    interrupt = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        stop = threading.Event()
        with stop_on_signals(stop, (signal.SIGINT,)):
            assert signal.getsignal(signal.SIGTERM) is mine
            signal.raise_signal(signal.SIGTERM)
            assert seen == [signal.SIGTERM] and not stop.is_set()
            signal.raise_signal(signal.SIGINT)
            assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_off_the_main_thread_nothing_changes() -> None:
    handlers: list[object] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            with stop_on_signals(threading.Event()):
                handlers.append(signal.getsignal(signal.SIGINT))
        except BaseException as exc:  # pragma: no cover - what the test is looking for
            errors.append(exc)

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert not errors and handlers == [before]
