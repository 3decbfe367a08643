"""The HTML report as a standalone page: nothing fetched, R coloured as a heat map, every figure
embedded (including figures other commands write into the run directory), the settings folded
away, and the compare report across run directories."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from chromium import check_page, find_chromium
from test_render import R_FINETUNE, R_JOINT, make_compare, make_run

from retain.cli import main
from retain.report import render
from retain.report.page import heat
from retain.report.record import CompareRecord, load_record
from retain.report.render import heat_style, render_html, render_markdown, write_reports

FIXTURES = Path(__file__).parent / "fixtures"
# A 1x1 PNG: an image another command (a landscape, a study) wrote into the run directory.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db40000000049454e44ae426082"
)


def _compare() -> CompareRecord:
    return make_compare(
        {
            "finetune": make_run("finetune", R_FINETUNE),
            "joint": make_run("joint", R_JOINT, joint=True),
        }
    )


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """A comparison's reports with every plot drawn (once: plotting takes seconds)."""
    out = tmp_path_factory.mktemp("report")
    write_reports(out, _compare())
    return out


def test_page_is_self_contained_and_responsive(report_dir):
    tmp_path = report_dir
    page = (tmp_path / "report.html").read_text()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<script" not in page.lower()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
    assert "@media (max-width:640px)" in page and "overflow-x:auto" in page
    # Every plot drawn is in the page, among them the training loss and the trade-off scatter.
    for key in ("compare-bars", "compare-curves", "compare-plasticity", "loss-finetune"):
        assert (tmp_path / "plots" / f"{key}.png").is_file(), key
    assert page.count("<img ") == len(list((tmp_path / "plots").glob("*.png")))


def test_score_matrix_is_a_heat_table():
    page = render_html(_compare())
    table = page.split('<table class="heat">')[1].split("</table>")[0]
    # finetune's R: 0.9 on t1 after t1 is near the top of the scale (yellow-green), 0.1 dark.
    after_t1 = table.split("<tr>")[3]
    assert after_t1.startswith("<td>after t1</td>")
    cells = re.findall(
        r'<td style="background:#([0-9a-f]{6});color:(#[0f]{3})">([^<]*)</td>', after_t1
    )
    assert [c[2].split(" ")[0] for c in cells] == ["0.900", "0.200", "0.100"]
    bright = [int(c[0][:2], 16) + int(c[0][2:4], 16) for c in cells]
    assert bright[0] > bright[1] > bright[2]
    assert cells[0][1] == "#000" and cells[2][1] == "#fff"  # text stays readable


def test_heat_follows_the_score_direction_and_range():
    low_better = heat([[1.0, 3.0]], "loss", higher=False)
    assert (low_better["lo"], low_better["hi"]) == (1.0, 3.0)
    assert heat_style(1.0, low_better) == heat_style(1.0, heat([[0.0, 1.0]], "accuracy", True))
    assert heat_style(float("nan"), low_better) == ""
    assert heat([[0.2, 0.4]], "accuracy", True)["lo"] == 0.0  # accuracy: always [0, 1]


def test_settings_are_folded_away():
    page = render_html(_compare())
    details = re.search(r"<details><summary>(.*?)</summary><pre>(.*?)</pre></details>", page, re.S)
    assert details and details.group(1) == "demo: config.resolved.yaml"
    assert "seed: 7" in details.group(2) and "train:" in details.group(2)
    assert "<details><summary>demo: config.resolved.yaml</summary>\n\n```yaml\nname: demo" in (
        render_markdown(_compare())
    )


def test_a_new_section_figure_appears_without_renderer_code(tmp_path, monkeypatch):
    """An image block naming a file in the run directory (as a landscape or study section
    would) is embedded in the HTML and linked from the Markdown; a missing one is left out."""
    (tmp_path / "landscape").mkdir()
    (tmp_path / "landscape" / "plane.png").write_bytes(PNG)
    (tmp_path / "landscape" / "path.svg").write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"></svg>'
    )
    real = render.build_blocks
    extra = [
        ("h", 2, "Loss landscape"),
        ("img", "landscape/plane.png", "the plane"),
        ("img", "landscape/path.svg", "the path"),
        ("img", "landscape/missing.png", "never drawn"),
    ]
    monkeypatch.setattr(render, "build_blocks", lambda rec: real(rec) + extra)
    write_reports(tmp_path, _compare(), plots=False)
    page = (tmp_path / "report.html").read_text()
    assert 'alt="the plane" src="data:image/png;base64,iVBORw0KGgo' in page
    assert 'alt="the path" src="data:image/svg+xml;base64,' in page
    assert "never drawn" not in page
    md = (tmp_path / "report.md").read_text()
    assert "![the plane](landscape/plane.png)" in md and "never drawn" not in md


def test_report_of_several_run_directories(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_reports(a, make_compare({"finetune": make_run("finetune", R_FINETUNE)}), plots=False)
    (a / "result.json").write_text(
        json.dumps(make_compare({"finetune": make_run("finetune", R_FINETUNE)}).to_dict())
    )
    b.mkdir()
    other = make_compare(
        {
            "finetune": make_run("finetune", R_FINETUNE),
            "joint": make_run("joint", R_JOINT, joint=True),
        }
    )
    (b / "result.json").write_text(json.dumps(other.to_dict()))
    before = {p: p.read_bytes() for p in (a / "result.json", b / "result.json")}
    out = tmp_path / "both"
    assert main(["report", str(a), str(b), "--out", str(out), "--no-plots", "-q"]) == 0
    rec = load_record(out / "result.json")
    assert isinstance(rec, CompareRecord)
    # The same label from two directories is told apart by the directory's name.
    assert list(rec.runs) == ["a/finetune", "b/finetune", "joint"]
    # Every run's gap is to the report's one joint run (a's run had none of its own).
    assert rec.runs["a/finetune"].metrics.gap_to_joint == pytest.approx(
        rec.runs["joint"].metrics.avg_accuracy - rec.runs["a/finetune"].metrics.avg_accuracy
    )
    page = (out / "report.html").read_text()
    assert f"from the run directories {a}, {b}" in page
    assert {p: p.read_bytes() for p in before} == before  # the sources are left as they were
    # The combined folder renders again on its own, and --out may be the same folder again.
    assert main(["report", str(out), "--no-plots", "-q"]) == 0
    assert main(["report", str(a), str(b), "--out", str(out), "--no-plots", "-q"]) == 0


def test_one_directory_keeps_working_and_may_go_elsewhere(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURES / "v1-run" / "result.json", run / "result.json")
    assert main(["report", str(run), "--no-plots", "-q"]) == 0
    assert (run / "report.html").is_file()
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere"), "--no-plots", "-q"]) == 0
    assert (tmp_path / "elsewhere" / "report.html").read_text() == (run / "report.html").read_text()
    assert not (tmp_path / "elsewhere" / "result.json").exists()


# --------------------------------------------------------------------------- in a real browser

chromium_only = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium here (CI installs Debian's chromium)"
)


def _shots(tmp_path: Path) -> Path:
    """Where screenshots go: $RETAIN_ARTIFACTS/screenshots when set (CI keeps that folder), else
    the test's own pytest temporary folder."""
    where = os.environ.get("RETAIN_ARTIFACTS")
    return Path(where) / "screenshots" if where else tmp_path / "screenshots"


@chromium_only
def test_report_loads_in_a_real_browser(report_dir, tmp_path):
    """Headless Chromium at a laptop's and a phone's width: every figure decoded, no console
    error, nothing wider than the window (wide tables scroll inside themselves)."""
    n = len(list((report_dir / "plots").glob("*.png")))
    for view in check_page(report_dir / "report.html", shots=_shots(tmp_path)):
        assert view.problems() == []
        assert len(view.images) == n and all(i["width"] > 0 for i in view.images)
        assert view.screenshot is not None and view.screenshot.stat().st_size > 10_000


@chromium_only
def test_the_browser_check_fails_a_broken_page(report_dir, tmp_path):
    """The same page with one figure's bytes corrupted, one figure missing from disk, a script
    error and an element wider than a phone: each is reported."""
    page = (report_dir / "report.html").read_text()
    first_alt = re.search(r'<img alt="([^"]*)"', page).group(1)
    page = page.replace("base64,iVBORw0KGgo", "base64,AAAAAAAAAAAA", 1)
    page = page.replace(
        "</body>",
        '<figure><img alt="gone" src="plots/gone.png"></figure>'
        '<div style="width:900px">wide</div><script>console.error("boom")</script></body>',
    )
    broken = tmp_path / "broken.html"
    broken.write_text(page)
    laptop, phone = check_page(broken, shots=_shots(tmp_path))
    for view in (laptop, phone):
        assert view.broken == [first_alt, "gone"]
        assert any("boom" in e for e in view.errors)
    assert not laptop.overflows and phone.overflows
    assert any("px wide on a 390px screen" in p for p in phone.problems())
