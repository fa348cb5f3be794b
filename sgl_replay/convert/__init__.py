"""Converters: each turns one file into another and starts no engine.
export (a trace to a public trace format), redact (a trace with every token
id replaced), export_test (a trace to a standalone pytest file of sglang's
scripted runtime). They run in the parent process.
"""
