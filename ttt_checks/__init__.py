"""ttt-checks: evidence that a model's Test-Time-Training layers learn, help and still talk."""

import os as _os

__version__ = "0.1.0"

# onnxruntime (faster-whisper's Silero VAD) sends usage telemetry on Linux since 1.2x and writes a
# device id and an event store under ~/.cache/Microsoft unless this is set before it starts. A
# checker run on a cluster must neither phone home nor write outside its report dir; a user who
# wants the telemetry can set the variable to 0 themselves.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
