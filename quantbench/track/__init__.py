"""Over time: the compare gate, the per-machine history and change-point trends."""
