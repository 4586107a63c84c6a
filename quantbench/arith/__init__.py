"""Pure arithmetic: the formulas (KV cache, FLOPs, roofline, capacity), model shapes, the device
table with the machine calibration, and the fitted step-time model. No torch."""
