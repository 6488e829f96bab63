"""The report as a reviewer sees it: rendered by headless Chromium, offline.

Skipped (with the reason) when no Chromium binary is on PATH. On Debian/Ubuntu:
``apt-get install -y --no-install-recommends chromium``.

Chromium runs with every host name resolving to nothing (``--host-resolver-rules``) and a
network log. Chromium's own background services (component updater, sign-in, network time)
still try to reach Google whatever the flags, so the log is filtered to requests made *by the
page*: those whose initiator is an origin or whose network isolation key is the ``file://``
page. A control page with two external images proves the filter sees page requests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(CHROMIUM is None, reason=f"no Chromium binary on PATH ({', '.join(CHROMIUM_NAMES)}); "
                       "install one, e.g. `apt-get install -y --no-install-recommends chromium`"),
]

BANNER_RGB = (0xB3, 0x26, 0x1E)  # .banner background in report.html.j2 (NOT PRETRAINED)


def chromium(page: Path, work: Path, *, mode: str, timeout: float = 180, height: int = 4000) -> dict:
    """Run headless Chromium offline on ``page``; ``mode`` is ``"screenshot"`` or ``"dump-dom"``
    (``height``: of the window, in pixels: the screenshot's height).

    Returns ``{"stdout", "png", "netlog"}``.
    """
    work.mkdir(parents=True, exist_ok=True)
    png, netlog = work / f"{mode}-{height}.png", work / f"{mode}-{height}-net.json"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={work / f'profile-{mode}'}", f"--window-size=1280,{height}",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}"]
    args += [f"--screenshot={png}"] if mode == "screenshot" else ["--dump-dom"]
    proc = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}"
    return {"stdout": proc.stdout, "png": png, "netlog": netlog}


def page_requests(netlog: Path) -> list[str]:
    """http(s) URLs the page itself asked for, from a Chromium ``--log-net-log`` file."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        p = event.get("params") or {}
        if event["type"] != start_job or not str(p.get("url", "")).startswith(("http:", "https:")):
            continue
        by_page = p.get("initiator") not in (None, "not an origin") or "file://" in str(
            p.get("network_isolation_key", ""))
        if by_page:
            urls.append(p["url"])
    return urls


def colours(png: Path) -> tuple[np.ndarray, int]:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB"))
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    return rgb, len(np.unique(packed))


# ------------------------------------------------------------------ the filter sees page requests


def test_control_page_with_external_images_is_caught(tmp_path):
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><head><title>control</title></head><body>'
                    '<img src="http://example.com/x.png"><img src="https://cdn.example.org/y.png">'
                    '</body></html>',
                    encoding="utf-8")
    out = chromium(page, tmp_path / "chrome", mode="dump-dom")
    assert "<title>control</title>" in out["stdout"]
    urls = sorted(page_requests(out["netlog"]))
    assert urls == ["http://example.com/x.png", "https://cdn.example.org/y.png"]


# ------------------------------------------------------------------ the e2e report


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, session_cache):
    from tests.test_external import trained_tiny_run

    run = trained_tiny_run(tmp_path_factory.getbasetemp() / "tiny-source")
    report = run / "report.html"
    work = tmp_path_factory.mktemp("chromium")
    return {"report": report, "html": report.read_text(encoding="utf-8"),
            "shot": chromium(report, work, mode="screenshot"), "dom": chromium(report, work, mode="dump-dom"),
            "tall": chromium(report, work, mode="screenshot", height=TALL, timeout=600)}


TALL = 16_000  # px: a window tall enough to hold the whole report (about 12,000 px; the sections below 4000 px)


@pytest.mark.slow
def test_dom_keeps_title_banner_and_every_inline_image(rendered):
    dom, html = rendered["dom"]["stdout"], rendered["html"]
    title = re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert title.startswith("medxcept report — tiny-demo — ")
    assert f"<title>{title}</title>" in dom
    assert 'id="not-pretrained"' in dom and 'id="headline-auc"' in dom
    src_imgs = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', html)
    dom_imgs = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', dom)
    assert len(src_imgs) >= 4 and dom_imgs == src_imgs


@pytest.mark.slow
def test_screenshot_is_a_rendered_page_with_the_red_banner_near_the_top(rendered):
    rgb, n_colours = colours(rendered["shot"]["png"])
    assert rgb.shape[:2] == (4000, 1280)
    assert n_colours > 2000, f"only {n_colours} distinct colours: blank page or figures not decoded"
    top = rgb[:700].astype(int)
    red = (np.abs(top - np.array(BANNER_RGB)).sum(axis=2) <= 6).sum()
    assert red > 20_000, f"{red} banner-red pixels in the top 700 px: the NOT PRETRAINED banner is missing"
    assert (np.abs(rgb[700:].astype(int) - np.array(BANNER_RGB)).sum(axis=2) <= 6).sum() < red


@pytest.mark.slow
def test_the_clinical_reading_figure_is_drawn_where_the_page_puts_it(rendered):
    """The decision curve / smoothed calibration figure, decoded from the HTML, is found pixel for pixel
    (up to the browser's rescaling) in the screenshot of the whole page, inside the Clinical reading."""
    import base64
    import io

    from PIL import Image

    html = rendered["html"]
    assert 'id="clinical"' in html and "Clinical reading" in html and 'id="clinical-sample-size-sentence"' in html
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)" id="clinical-figure"', html).group(1)
    figure = Image.open(io.BytesIO(base64.b64decode(uri))).convert("L")
    shot = np.asarray(Image.open(rendered["tall"]["png"]).convert("L")).astype(np.float64)
    assert shot.shape[0] == TALL and (shot[-50:] == shot[-1, 0]).all(), "the page is taller than the window"
    # the white section boxes give the content column: the figure is drawn at its width (or its own)
    white = shot == 255
    row = int(np.argmax(white.sum(axis=1)))
    cols = np.flatnonzero(white[row])
    left, width = int(cols.min()) + 20, int(cols.max() - cols.min() + 1) - 40
    shown_w = min(figure.width, width)
    shown = np.asarray(figure.resize((shown_w, round(figure.height * shown_w / figure.width)),
                                     Image.Resampling.BILINEAR)).astype(np.float64)
    # locate it by its row profile, then compare the pixels there
    strip = shot[:, left:left + shown_w]
    prof, fig_prof = strip.mean(axis=1), shown.mean(axis=1)
    h = shown.shape[0]
    costs = np.array([np.abs(prof[y:y + h] - fig_prof).mean() for y in range(0, shot.shape[0] - h)])
    y = int(np.argmin(costs))
    diff = np.abs(strip[y:y + h] - shown).mean()
    assert diff < 12, f"the figure is not visible where expected (mean difference {diff:.1f} grey levels at y={y})"
    # ... and it lies below the Calibration section and above Subgroups / Reproducibility
    assert (shot[y:y + h] < 200).mean() > 0.02  # ink: axes, curves, text
    assert html.index('id="calibration"') < html.index('id="clinical-figure"') < html.index('id="reproducibility"')


@pytest.mark.slow
def test_the_report_makes_no_network_request(rendered):
    for out in (rendered["shot"], rendered["dom"]):
        assert page_requests(out["netlog"]) == []


# ------------------------------------------------------------------ hostile strings, in a real browser


def test_hostile_cohort_report_runs_no_script_in_chromium(tmp_path, session_cache):
    from tests.test_report_escaping import SCRIPT, build_escaping_report

    report, _ = build_escaping_report(tmp_path / "escape")
    out = chromium(report, tmp_path / "chrome", mode="dump-dom")
    dom = out["stdout"]
    assert "<title>medxcept report — escape &lt;b&gt;&amp;\"' cohort" in dom
    assert not re.search(r"<script\b", dom, re.I) and "<b>" not in dom
    assert SCRIPT.replace("<", "&lt;").replace(">", "&gt;") in dom  # shown as text
    assert page_requests(out["netlog"]) == []
