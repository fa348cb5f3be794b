"""Time in a trace: what a loop iteration costs on a recorded server
(model.py, used inside the scheduler by the modelled clock and in the parent
by the fit), the fit itself (fit.py), per-request latency (latency.py), and
a capture's chats, whose next turns wait for their answers (turns.py).

A shared room: it imports sgl-replay's trace format and nothing of either
process side, and nothing of sglang (fit.py imports numpy and scipy, only
in the parent's calls)."""
