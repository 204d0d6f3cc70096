"""Preemption: stop cleanly on SIGTERM or SIGUSR1 so that the same command can continue the run.

A scheduler warns a job before killing it: SLURM sends SIGTERM on preemption or scancel, and
`#SBATCH --signal=USR1@120` asks for SIGUSR1 two minutes before the time limit. Here a signal only
sets a flag; the training loop checks it after every step, all ranks agree (an all-reduce of the
flag) to stop after the same step, rank 0 writes a snapshot and the full training state, and
train.py exits with PREEMPTED_EXIT_CODE. Running the same command again with `--resume=auto`
continues from that state (examples/slurm/ requeues the job to do so).
"""
import signal
import threading

# EX_TEMPFAIL from sysexits.h ("temporary failure; the user is invited to retry"): distinct from
# Python errors (1), usage errors (2), `timeout` (124) and deaths by signal (128 + n).
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Context manager: while active, STOP_SIGNALS set a flag instead of killing the process.

    Call the object to ask whether a stop was requested (it fits TrainingLoop(abort_fn=...)).
    Nothing is printed from the handler itself (printing there can re-enter a half-done write);
    `received` names the first signal for the loop to log.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def _handle(self, signum, _frame):
        if self.received is None:
            self.received = signal.Signals(signum).name

    def request(self, name='request'):
        """Ask for a stop without a signal (tests, other callers)."""
        if self.received is None:
            self.received = name

    def __call__(self):
        return self.received is not None

