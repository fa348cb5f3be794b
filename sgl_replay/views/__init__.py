"""Views of traces for people: a timeline for Perfetto and an HTML diff report.

Both run in the parent process and never import sglang.
"""

from sgl_replay.views.report import write_report
from sgl_replay.views.timeline import write_timeline

__all__ = ["write_report", "write_timeline"]
