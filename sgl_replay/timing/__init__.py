"""Time in a trace: what a loop iteration costs on a recorded server
(model.py, used inside the scheduler by the modelled clock and in the parent
by the fit), the fit itself (fit.py), and per-request latency (latency.py).

A pure room: it imports sgl-replay's trace format and nothing of either
process side, and nothing of sglang."""
