"""ttt-checks: evidence that a model's Test-Time-Training layers learn, help and still talk."""

import os as _os

__version__ = "0.1.0"

# onnxruntime (faster-whisper's Silero VAD) sends usage telemetry on Linux since 1.2x and writes a
# device id and an event store under ~/.cache/Microsoft unless this is set before it starts. A
# checker run on a cluster must neither phone home nor write outside its report dir; a user who
# wants the telemetry can set the variable to 0 themselves.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def restore_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt again when this process was started with it ignored.

    A background job of a non-interactive shell script and every child of an xdist worker inherit
    SIGINT as "ignored", and Python then installs no handler: Ctrl-C or ``kill -INT`` would not stop
    ``ttt-checks watch`` or a health run, and no incomplete report would be written. Only an
    ignored SIGINT is changed; a handler someone installed is left alone.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
