"""The README's result tables are the report generated from the committed result files, verbatim."""
from pathlib import Path

from mone import report


def test_readme_tables_are_generated_from_result_files():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index(report.BEGIN) + len(report.BEGIN):readme.index(report.END)]
    assert block.strip() == report.report().strip(), "run `python -m mone.report --write`"


def test_report_reads_every_shipped_curve():
    text = report.report()
    for name, what, _ in report.CURVES:
        if (report.ASSETS / "curves" / f"{name}.json").is_file():
            assert what in text
