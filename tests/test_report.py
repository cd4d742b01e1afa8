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


def test_router_health_flags_a_router_no_gradient_reaches(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file
    monkeypatch.setattr(report, "ASSETS", tmp_path)
    router = torch.zeros(4, 64)
    router[:, 0] = 0.5                                                   # row norm 0.5; at init 0.02·sqrt(64) = 0.16
    for name, alphas in (("mone_a", [-0.2, -0.1]), ("mone_b", [-0.2, 0.3])):
        save_file({"blocks.0.alpha": torch.tensor(alphas[0]), "blocks.1.alpha": torch.tensor(alphas[1]),
                   "router.weight": router}, tmp_path / f"{name}.safetensors")
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(weights=f"{name}.safetensors")))
    rows = report.router_health_table()
    assert rows[2] == "| mone_a.json | -0.20, -0.10 | 0 of 2 | 0.50 (0.16) | **frozen**: no gradient reaches it |"
    assert rows[3] == "| mone_b.json | -0.20, 0.30 | 1 of 2 | 0.50 (0.16) | learning |"
