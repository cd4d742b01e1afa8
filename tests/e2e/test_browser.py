"""The launched app in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium; never
`playwright install`). Picks an example, moves the budget slider with the mouse and with the keyboard, and checks
that the overlay image and the curve's current-budget point change; the video example plays (duration > 0).

Screenshots go to $MONE_E2E_SHOTS (if set) or the test's tmp folder.
"""
import os
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent (apt-get install -y chromium); CI installs it")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from test_app import free_port, use_assets, write_card   # the same tiny random card + fake curve as the API tests
    assets = tmp_path_factory.mktemp("e2e_assets")
    write_card(assets, "tiny")
    with use_assets(assets):
        from app import app as app_module
        demo = app_module.build_demo()
        _, url, _ = app_module.launch(demo, server_port=free_port(), prevent_thread_lock=True, quiet=True)
        yield url
        demo.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1200})
        pg.set_default_timeout(60_000)
        pg.goto(server, wait_until="networkidle")
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("MONE_E2E_SHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


OVERLAY_SRC = "() => document.querySelector('#overlay img')?.src || null"
POINT_X = """() => {
  const gd = document.querySelector('#curve .js-plotly-plot');
  const t = gd && gd.data && gd.data.find(t => (t.name || '').startsWith('current budget'));
  return t ? t.x[0] : null; }"""


def _state(page):
    return page.evaluate(OVERLAY_SRC), page.evaluate(POINT_X)


def _wait_changed(page, before, what):
    src0, x0 = before
    page.wait_for_function(f"""() => {{ const s = ({OVERLAY_SRC})(); const x = ({POINT_X})();
        return s && x !== null && s !== {src0!r} && x !== {x0!r}; }}""", timeout=60_000)
    after = _settled(page)
    assert after[0] != src0 and after[1] != x0, what
    return after


def _settled(page, quiet_s: float = 1.5, poll_s: float = 0.25):
    """The state once no update has arrived for `quiet_s`: a drag or key repeat sends several events, and the first
    change seen may be an intermediate value whose successors are still on their way (a loaded machine shows this)."""
    state, quiet_since = _state(page), time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        time.sleep(poll_s)
        now = _state(page)
        if now != state:
            state, quiet_since = now, time.monotonic()
    return state


def test_image_example_and_slider_by_mouse_and_keyboard(page, shots):
    page.locator("#image-examples button").first.click()
    page.wait_for_function(f"() => ({OVERLAY_SRC})() !== null && ({POINT_X})() !== null")
    first = _state(page)
    page.screenshot(path=str(shots / "e2e_image.png"), full_page=True)

    # mouse: drag the thumb to 85 % of the track (input events while dragging, release on pointer-up)
    track = page.locator("#budget input[type=range]")
    box = track.bounding_box()
    value0 = float(track.input_value())
    page.mouse.move(box["x"] + box["width"] * (value0 - 0.15) / 0.85, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    after_mouse = _wait_changed(page, first, "mouse drag changed the overlay and the curve point")
    assert float(track.input_value()) > value0
    assert after_mouse[1] > first[1]                                # more budget, more MACs
    page.screenshot(path=str(shots / "e2e_slider_mouse.png"), full_page=True)

    # keyboard: focus the slider and press ArrowLeft (input events only; no pointer-up `release`)
    value1 = float(track.input_value())
    track.focus()
    for _ in range(4):
        page.keyboard.press("ArrowLeft")
        time.sleep(0.05)
    after_keys = _wait_changed(page, after_mouse, "arrow keys changed the overlay and the curve point")
    assert float(track.input_value()) == pytest.approx(value1 - 0.2, abs=1e-6)
    assert after_keys[1] < after_mouse[1]
    page.wait_for_function("() => document.querySelector('#readout')?.innerText.includes('Tokens per expert')")
    page.screenshot(path=str(shots / "e2e_slider_keys.png"), full_page=True)

    # click a patch: its router probabilities appear
    page.locator("#overlay img").click(position={"x": 30, "y": 30})
    page.wait_for_function("() => document.querySelector('#patch-info')?.innerText.includes('Patch row 1, column 1')")


VIDEO_STATE = """() => { const v = document.querySelector('#video-out video');
    return v && v.readyState >= 1 && v.duration > 0 ? [v.duration, v.videoWidth, v.src] : null; }"""


def test_video_example_plays_and_a_new_upload_replaces_it(page, shots):
    sys.path.insert(0, str(TESTS))
    from test_video import make_clip
    page.get_by_role("tab", name="Video").click()
    examples = page.locator("#video-examples button")
    if examples.count():
        examples.first.click()
    else:                                                          # no example shipped: upload a clip of our own
        clip, _ = make_clip(shots / "e2e_clip_a.mp4", frames=40, width=96, height=64, fps=10)
        page.locator("#video-in input[type=file]").set_input_files(str(clip))
    page.wait_for_function(f"() => ({VIDEO_STATE})() !== null", timeout=120_000)
    duration, width, src = page.evaluate(VIDEO_STATE)
    assert duration > 0 and width > 0
    page.wait_for_function("() => document.querySelector('#video-note')?.innerText.includes('frames')")
    page.screenshot(path=str(shots / "e2e_video.png"), full_page=True)

    # remove it and upload another clip (3.0 s): the new result replaces the old one
    clip, _ = make_clip(shots / "e2e_clip_b.mp4", frames=30, width=96, height=64, fps=10)
    page.locator("#video-in button[aria-label='Clear']").first.click()
    page.locator("#video-in input[type=file]").set_input_files(str(clip))
    page.wait_for_function(f"() => {{ const s = ({VIDEO_STATE})(); return s !== null && s[2] !== {src!r}; }}",
                           timeout=120_000)
    assert page.evaluate(VIDEO_STATE)[0] == pytest.approx(3.0, abs=0.25)
