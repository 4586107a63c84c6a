"""quantbench: one model, every quantization format, measured beside what the hardware allows."""
from quantbench.core.records import read_results
from quantbench.track.history import read_history

__all__ = ["read_history", "read_results"]
__version__ = "0.1.0"
