"""What runs inside sglang's scheduler process: the plugin sglang loads, the
recorder it installs, the input codec, the trace header, the workload
scripts, the HTTP poster, the record, replay and subset scripts, and the
driver of a run on the modelled clock (timed.py).

Imports of sgl-replay only this package and the shared rooms (sgl_replay.trace,
sgl_replay.job, sgl_replay.credentials, sgl_replay.traffic, sgl_replay.timing); tests/test_layout.py
walks the imports. Nothing here may depend on the CLI, the engine launcher,
the converters, the diff, golden or bisect, which run in the process that
started the engine.
"""
