"""quantbench: one model, every quantization format, measured beside what the hardware allows."""
from quantbench.history import read_history
from quantbench.records import read_results

__all__ = ["read_history", "read_results"]
__version__ = "0.1.0"
