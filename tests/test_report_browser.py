"""The blend report in a real browser: Debian's headless Chromium through Selenium (pointed at the system's
browser and driver: nothing is downloaded). The report of the session's demo runs, renamed as a real
sweep's runs are (long names, recipes with extras, an extra target), so that its runs table is as wide as
one. Every image decodes, every part the report lists in its contents is there with its table or figures,
the console has no error, and the page fits a 1280-pixel-wide window without scrolling sideways. A
screenshot is kept in outputs/test-artifacts/."""

import base64
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from pipeline import predictions
from pipeline.ensemble.writing import blend
from tests.conftest import REPO, compose
from tests.factories import rewrite_preds

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]
WIDTH = 1280
ARTIFACTS = REPO / "outputs" / "test-artifacts"
# names and recipes as a real sweep gives them (pipeline.training.recipe.recipe_columns)
RUNS = {
    "tiny_squish32_32": (
        "convnext_large_squish480_224_ranger_flat_cos_label_smoothing-eps0.1_cutmix_ema_lrfind",
        {
            "optimizer": "ranger",
            "schedule": "flat_cos",
            "loss": "label_smoothing eps=0.1",
            "extras": "cutmix, ema 0.9999, lr find",
        },
    ),
    "tiny_pad32_32": (
        "swinv2_large_window12to24_192to384_crop640x480_320x224_sgd-mom0.8_one_cycle_mixup0.4_seed3",
        {
            "optimizer": "sgd mom=0.8",
            "schedule": "one_cycle pct_start=0.5",
            "loss": "cross_entropy",
            "extras": "mixup 0.4, seed 3",
        },
    ),
    "tiny_crop40_32": (
        "vit_large_patch16_224_pad480_224_lamb_fine_tune-freeze_epochs2_aux-variety",
        {"optimizer": "lamb", "schedule": "fine_tune freeze_epochs=2", "loss": "cross_entropy", "extras": "+variety"},
    ),
}


@pytest.fixture
def report(demo_runs, demo_root, tmp_path) -> Path:
    """The blend report of the demo's three runs under a real sweep's names, every weighting computed."""
    preds = demo_runs.copy_to(tmp_path)
    for source, (name, recipe) in RUNS.items():
        changes = {"recipe_summary": recipe}
        if name.endswith("aux-variety"):
            original = predictions.load(preds / f"{source}.pt")
            n = len(original.valid_ids)
            variety = {"vocab": list("abc"), "weight": 1.0, "valid_probs": torch.full((n, 3), 1 / 3)}
            variety["valid_targets"] = torch.zeros(n, dtype=torch.long)
            changes |= {
                "aux_targets": {"variety": variety},
                "metrics": original.metrics | {"valid_error_variety": 0.25},
            }
        rewrite_preds(preds, source, name, **changes)
        (preds / f"{source}.pt").unlink()
    output = tmp_path / "submission.csv"
    cfg = [
        "data=demo",
        f"data.root={demo_root}",
        f"paths.preds={preds}",
        f"blend.output={output}",
        "blend.weighting=greedy",
    ]
    return blend(compose("blend", cfg)).report_path


@pytest.fixture
def chromium():
    """Headless Chromium from Debian's packages, with a fresh profile, its console log kept."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


SECTIONS = """return [...document.querySelectorAll('nav a')].map(a => {
  const s = document.querySelector(a.getAttribute('href'));
  if (!s) return [a.getAttribute('href'), null, 0, 0];
  return [s.id, s.dataset.holds, s.querySelectorAll('table tbody tr').length, s.querySelectorAll('img').length];
});"""
IMAGES = "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);"
# each table's box against the window: its right edge, and whether its own box had to scroll
TABLES = """return [...document.querySelectorAll('table')].map(t => [
  t.closest('section').id, Math.ceil(t.getBoundingClientRect().right), t.parentElement.scrollWidth,
  t.parentElement.clientWidth]);"""


def test_the_blend_report_renders_whole_in_a_1280_pixel_window(report, chromium):
    chromium.get(report.as_uri())
    assert chromium.execute_script("return window.innerWidth") == WIDTH

    sections = chromium.execute_script(SECTIONS)
    promised = [s[0] for s in sections]
    assert {"weightings", "runs", "per-class", "confusion", "curves"} <= set(promised)  # the label review too, if any
    for key, holds, rows, images in sections:
        assert holds in ("table", "figures"), f"contents link #{key} leads to no section"
        assert (rows if holds == "table" else images) > 0, f"section {key} promises {holds} and shows none"
    images = chromium.execute_script(IMAGES)
    assert all(complete and width > 0 and height > 0 for _, complete, width, height in images), images
    curves = [alt for alt, *_ in images if alt.startswith("learning curves of ")]
    assert sorted(curves) == sorted(f"learning curves of {name}" for name, _ in RUNS.values())

    errors = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    page = chromium.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert page[0] <= page[1] <= WIDTH, f"the page scrolls sideways: {page[0]} px wide in a {page[1]} px window"
    tables = chromium.execute_script(TABLES)
    for section, right, scroll, client in tables:
        assert right <= page[1] and scroll <= client, (
            f"a table of {section} does not fit: {right} px, box {scroll}/{client}"
        )

    # the whole page, beyond the window (Chrome's DevTools protocol: a window as tall is capped by the screen)
    height = chromium.execute_script("return document.documentElement.scrollHeight")
    clip = {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1}
    shot = chromium.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "blend-report-1280.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    print(
        f"browser: {len(sections)} sections ({', '.join(promised)}), {len(tables)} tables, {len(images)} images "
        f"decoded, 0 console errors, page {page[0]} px wide in a {WIDTH} px window; screenshot {path}"
    )


@pytest.fixture
def review_report(flipped_kfold_runs, tmp_path) -> Path:
    """The stack blend of the flipped-label kfold runs: a stack row, the label review's 40 thumbnails."""
    runs, output = flipped_kfold_runs, tmp_path / "submission.csv"
    cfg = ["data=demo", f"data.root={runs.root}", f"paths.preds={runs.preds}", f"blend.output={output}"]
    return blend(compose("blend", [*cfg, "blend.weighting=stack"])).report_path


def test_the_label_review_renders_in_a_1280_pixel_window(review_report, chromium):
    chromium.get(review_report.as_uri())
    sections = {key: (holds, rows, images) for key, holds, rows, images in chromium.execute_script(SECTIONS)}
    assert sections["review"] == ("table", 40, 40)  # a row and a thumbnail per suspect
    images = chromium.execute_script(IMAGES)
    thumbnails = [i for i in images if "/" in i[0]]  # alt: the image's id, <label>/<file>
    assert len(thumbnails) == 40 and all(complete and width > 0 for _, complete, width, _ in thumbnails)
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []
    page = chromium.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert page[0] <= page[1] <= WIDTH, f"the page scrolls sideways: {page[0]} px wide"
    for section, right, scroll, client in chromium.execute_script(TABLES):
        assert right <= page[1] and scroll <= client, f"a table of {section} does not fit: {right} px"
