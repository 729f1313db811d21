"""Ctrl-C, SIGTERM and SIGHUP: the first asks for a clean stop, any later one exits at once.

What reaches a rank (torchrun of torch 2.14, torch/distributed/elastic): torchrun starts each rank
in a session of its own, so a terminal's Ctrl-C reaches torchrun only. torchrun handles SIGINT,
SIGTERM, SIGHUP and SIGQUIT (`--signals-to-handle`) by sending the same signal to each rank's
process group (the rank and its DataLoader workers), waiting `--shutdown-timeout` seconds (default
30, or TORCH_ELASTIC_SHUTDOWN_TIMEOUT) and then SIGKILLing them; torchrun itself then exits with
status 1 and a SignalException traceback. A second signal to torchrun during that wait sends the
ranks SIGTERM (its clean-up path). SLURM's preemption and time limit send SIGTERM to every process
of the step, torchrun and ranks alike, so a rank gets it twice within milliseconds.

So: the first signal asks for a stop (the handler only sets a flag; ranks agree on it at the next
step, or the next validation batch, through an all-reduce, so every rank stops at the same point
and one checkpoint is written). A signal within DUPLICATE seconds of it is that same request. Any
later one, of whatever kind (a person's second Ctrl-C, which a rank under torchrun sees as SIGTERM)
kills this process's children (DataLoader workers) and exits at once with status 130, without a
checkpoint. Before `arm()` (before the first training step, when nothing has changed since the
checkpoint the run started from) the first signal already exits at once.
"""
import contextlib
import os
import signal
import time

import torch

from toolkit.data.workers import DUPLICATE, end_workers  # noqa: F401 (DUPLICATE: the workers' too)
from toolkit.engine import dist
from toolkit.errors import hard_exit

SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def say(message: str):
    """A line to stderr that can never end the stop: a closed terminal (SIGHUP) fails every write to
    it with EIO, a closed pipe with EPIPE; the log file has the line anyway where it matters."""
    with contextlib.suppress(OSError):
        os.write(2, f"\n{message}\n".encode())


def exit_now(message: str, status: int = 130):
    """Leave at once from a signal handler: no process left behind, no clean-up that could wait."""
    say(message)
    end_workers()
    hard_exit(status)  # the run's status file still says how it ended


class StopRequest:
    def __init__(self):
        self.signum, self.when, self.armed = 0, 0.0, False
        self._previous = {}

    def install(self):
        for name in SIGNALS:
            sig = getattr(signal, name)
            if signal.getsignal(sig) is signal.SIG_IGN:  # nohup: a hang-up stays ignored
                continue
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def arm(self):
        """From here on a stop writes a checkpoint (the run has moved since it started)."""
        self.armed = True

    def _handle(self, signum, frame):
        now, name = time.monotonic(), signal.Signals(signum).name
        if self.signum:
            if now - self.when > DUPLICATE:
                exit_now(f"{name} after a stop request: exiting now (no checkpoint)")
            return
        if not self.armed:
            exit_now(f"{name} before the first training step: exiting (nothing trained since the start)")
        self.signum, self.when = signum, now
        say(f"{name}: stopping at the next step and saving a checkpoint (Ctrl-C again to exit at once)")

    @property
    def requested(self) -> bool:
        return bool(self.signum)


class Agreement:
    """A stop request agreed by every rank at the same round (a validation batch): each round
    all-reduces this rank's flag (MAX) and reads the previous round's result, so the host never
    waits for the device, and every rank reads the same values at the same round. `rounds`: this
    rank's number of rounds; ranks with fewer batches keep agreeing in `finish()` until the most."""

    def __init__(self, stop, device, rounds: int):
        self.stop, self.device, self.done, self.pending = stop, device, 0, None
        self.rounds = int(dist.all_reduce_max(torch.tensor([rounds], device=device)).item())

    def round(self) -> bool:
        """Post this round's flag; True when the previous round's says stop (on every rank alike)."""
        self.done += 1
        flag = torch.tensor([float(bool(self.stop.requested))], device=self.device)
        previous, self.pending = self.pending, (flag, dist.all_reduce_max_async(flag))
        return self._read(previous)

    def finish(self) -> bool:
        """The rounds other ranks still have; True when a stop is agreed in one of them."""
        while self.done < self.rounds:
            if self.round():
                return True
        return False

    def drain(self) -> bool:
        pending, self.pending = self.pending, None
        return self._read(pending)

    @staticmethod
    def _read(pending) -> bool:
        if pending is None:
            return False
        flag, work = pending
        if work is not None:
            work.wait()
        return bool(flag.item())
