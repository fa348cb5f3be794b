"""What a recording sends: workload specs (a built-in's name, `serve`, a
user's `module:function`, a public serving trace) and the parsing, selection,
scaling and prompt building of public traces.

Shared by both sides of the process boundary, like sgl_replay.trace and
sgl_replay.job: the parent reads specs and checks trace files here, and the
scheduler builds the same prompts from them. It imports neither side, and
nothing of sglang.
"""
