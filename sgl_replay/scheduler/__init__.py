"""What runs inside sglang's scheduler process: the plugin sglang loads, the
recorder it installs, the input codec, the trace header, the workloads and
the record and replay scripts.

Imports only sgl_replay.trace and sgl_replay.job of sgl-replay (a test walks
the imports): nothing here may depend on the CLI, the engine launcher, the
diff, golden or bisect, which run in the process that started the engine.
"""
