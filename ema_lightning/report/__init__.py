"""The study report: Markdown tables (`tables`), figures (`figures`), concept-vector sections
(`concepts`) and `write_report`, which puts them together from a `StudyResult`."""

from ema_lightning.report.writer import write_report

__all__ = ["write_report"]
