"""Ctrl-C and SIGTERM during training: finish the current step, checkpoint it, then stop.

A signal that lands in the middle of an optimizer step (weights updated, step counter not yet) or
of a checkpoint write would leave a state no checkpoint describes. So while ``fit()`` runs, SIGINT
and SIGTERM only set a flag; the loop looks at it between steps, where the state is whole, writes
last.pt and raises ``RunInterrupted``. A second signal raises at once (for a step that hangs).
"""

from __future__ import annotations

import signal
import sys
import threading


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after checkpointing its last finished step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopOnSignal:
    """Context manager: while active, SIGINT/SIGTERM request a stop (``.signum``) instead of raising.

    Signal handlers can only be installed from the main thread; elsewhere this does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise RunInterrupted(signum)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
