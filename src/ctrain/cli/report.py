"""`ctrain report DIR`: figures and one HTML page of a run or a sweep (ctrain.reporting.report)."""

from __future__ import annotations

from jsonargparse import CLI

from ctrain.reporting.report import report


def report_main(args: list[str]) -> None:
    page = CLI(report, args=args, as_positional=True, prog="ctrain report")
    print(f"ctrain report: {page} ({len(list(page.parent.glob('*.png')))} figures)")
