"""What runs in the process that drives the engine: starting and stopping it
(engine: the process tree; child: the engine's own main; embedded_model: the
model it loads; pool: engines shared by configuration; errors), a capture and
the sealing of what it wrote (capture), recording a workload (record),
replaying a trace (replay), replay-then-diff with its verdict (check), and
their progress on a terminal (progress).
The scripts these hand to the engine run inside its scheduler:
sgl_replay.scheduler.
"""
