"""The README's result tables are the report generated from the committed result files, verbatim."""
import json
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


def _write_curve(root: Path, name: str, images: int, points: list[dict]) -> None:
    """A curve file with the same points on `test` and on a second split."""
    (root / "curves").mkdir(exist_ok=True)
    other = dict(split="test_instances", images=images, points=points)
    (root / "curves" / f"{name}.json").write_text(
        json.dumps(dict(split="test", images=images, points=points, splits={"test_instances": other})))


def test_dense_twin_fills_the_missing_dense_point_only_on_the_same_images(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    monkeypatch.setattr(report, "DENSE_TWINS", {"m": "d"})
    mone_point = dict(method="mone", effective_capacity=0.5, macs=10, top1=0.7)
    dense_point = dict(method="dense", effective_capacity=1.0, macs=20, top1=0.8)
    _write_curve(tmp_path, "m", 100, [mone_point])
    _write_curve(tmp_path, "d", 100, [dense_point])
    assert report._curve_points("m") == [mone_point, dense_point]
    assert report._curve_points("m", "test_instances") == [mone_point, dense_point]
    _write_curve(tmp_path, "d", 50, [dense_point])        # other images: not comparable, left out
    assert report._curve_points("m") == [mone_point]
    own_dense = dict(dense_point, top1=0.75)              # the curve's own dense point wins
    _write_curve(tmp_path, "m", 100, [mone_point, own_dense])
    _write_curve(tmp_path, "d", 100, [dense_point])
    assert report._curve_points("m") == [mone_point, own_dense]
