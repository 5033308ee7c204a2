"""ttt-checks: evidence that a model's Test-Time-Training layers learn, help and still talk."""

__version__ = "0.1.0"
