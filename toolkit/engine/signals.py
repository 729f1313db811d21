"""Ctrl-C and SIGTERM: the first one asks for a clean stop, a second Ctrl-C exits at once.

The handler only sets a flag; ranks agree on it at the next step boundary (an all-reduce in the
trainer), so every rank stops at the same step and one checkpoint is written. Under torchrun a
terminal Ctrl-C reaches every rank and torchrun, which then forwards SIGINT (or SIGTERM, by
version) to the ranks within milliseconds: any signal in the GRACE seconds after the first is that
same request. A person's second Ctrl-C comes later, and exits at once without a checkpoint.
"""
import os
import signal
import time

GRACE = 1.5  # seconds


class StopRequest:
    def __init__(self):
        self.signum, self.when = 0, 0.0
        self._previous = {}

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signum and signum == signal.SIGINT and now - self.when > GRACE:
            os.write(2, b"\nsecond Ctrl-C: exiting now (no checkpoint)\n")
            os._exit(130)
        if not self.signum:
            self.signum, self.when = signum, now
            name = signal.Signals(signum).name
            os.write(2, f"\n{name}: stopping at the end of this step and saving a checkpoint "
                        "(Ctrl-C again to exit at once)\n".encode())

    @property
    def requested(self) -> bool:
        return bool(self.signum)
