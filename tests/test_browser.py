"""The web demo in a real headless browser: Debian's Chromium driven by Playwright (no browser download).

Starts the real `lookalike serve` on the tiny generated gallery, uploads an image through the
page, checks the result grid, switches method, searches from a result and from a random
gallery image, shows a bad upload's error, and saves a screenshot.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

import lookalike
from lookalike.search.dupes import PRESETS

from .conftest import LOOKALIKE

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("LOOKALIKE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_TIMEOUT_S = 240  # importing torch on a busy 2-core machine can take a while
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def served(tiny_gallery):
    """`lookalike serve` over the resnet18 gallery; yields its URL."""
    with running_server(tiny_gallery) as url:
        yield url


@pytest.fixture(scope="module")
def served_clip(clip_gallery):
    """`lookalike serve` over the CLIP gallery (text queries); yields its URL."""
    with running_server(clip_gallery) as url:
        yield url


@contextmanager
def running_server(gallery: Path):
    """`lookalike serve --port 0` as a subprocess; yields the URL it prints once it listens."""
    proc = subprocess.Popen(
        [*LOOKALIKE, "serve", "--gallery", str(gallery), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen = []
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                pytest.fail(f"lookalike serve printed no URL within {START_TIMEOUT_S} s:\n{''.join(seen)}")
            seen.append(line)
            if m := re.search(r"http://127\.0\.0\.1:\d+", line):
                break
            if proc.poll() is not None:
                pytest.fail(f"lookalike serve exited with {proc.returncode}:\n{''.join(seen)}")
        yield m.group(0)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is not installed (looked for {CHROMIUM}): install Debian's chromium "
            "(`apt-get install chromium`, which scripts/install-browser.sh runs) or set LOOKALIKE_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, url: str):
    """The page at a laptop's 1366×768, with every request URL and every console error recorded."""
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    requests, console_errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.goto(url + "/")
    return page, requests, console_errors


def test_search_in_the_page(served, browser, tiny_collection, tmp_path):
    from playwright.sync_api import expect

    page, requests, console_errors = open_page(browser, served)

    # provenance: random weights and generated data are flagged where a user sees them
    expect(page.locator("#real-badge")).to_have_text(re.compile("NOT A REAL RESULT"), timeout=WAIT_MS)
    expect(page.locator("#warnings")).to_contain_text("RANDOM weights")
    expect(page.locator("#warnings")).to_contain_text("GENERATED data")
    expect(page.locator("#provenance")).to_contain_text("resnet18")
    expect(page.locator("#method option")).to_have_count(3)  # brute, flat, ivf

    # upload through the page: k results, each with a score, best first
    k = 6
    page.locator("#k").fill(str(k))
    page.locator("#k").dispatch_event("change")
    query = sorted((tiny_collection / "val" / "images").glob("*.JPEG"))[0]
    page.set_input_files("#file-input", str(query))
    results = page.locator("#results .result")
    expect(results).to_have_count(k, timeout=WAIT_MS)
    expect(page.locator("#status")).to_contain_text("ivf")
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert len(scores) == k and scores == sorted(scores, reverse=True)
    expect(page.locator("#latency")).to_contain_text("embed")
    assert re.search(r"\d+(\.\d+)? ms", page.locator("#latency").inner_text())
    expect(page.locator("#nprobe-row")).to_be_visible()
    ivf_paths = page.locator("#results .path").all_inner_texts()

    # switch method: flat is exact, and ivf with its default nprobe (all 10 lists) was exact too
    page.select_option("#method", "flat")
    expect(page.locator("#status")).to_contain_text("flat", timeout=WAIT_MS)
    expect(results).to_have_count(k)
    expect(page.locator("#nprobe-row")).to_be_hidden()
    assert page.locator("#results .path").all_inner_texts() == ivf_paths

    # click a result: search from it; results sharing its label are marked
    first_id = results.first.get_attribute("data-id")
    results.first.locator(".card").click()
    expect(page.locator("#query-caption")).to_contain_text(f"gallery id {first_id}", timeout=WAIT_MS)
    expect(page.locator("#results .result").first.locator(".self-mark")).to_have_text("= query")
    expect(page.locator("#results .result.same").first).to_be_visible()
    expect(page.locator("#latency")).to_contain_text("(stored)")

    # a random gallery image
    page.click("#random-btn")
    expect(page.locator("#query-caption")).to_contain_text("gallery id", timeout=WAIT_MS)
    expect(results).to_have_count(k, timeout=WAIT_MS)
    page.wait_for_load_state("networkidle")

    screenshot = tmp_path / "lookalike-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert console_errors == []

    # a file that is not an image: the page shows the server's message
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    page.set_input_files("#file-input", str(bad))
    expect(page.locator("#error")).to_contain_text("not a recognised image format", timeout=WAIT_MS)

    # the page works offline: every request went to this server
    outside = [url for url in requests if not url.startswith((served, "blob:", "data:"))]
    assert outside == []
    page.close()


def test_more_and_less_like_a_result(served, browser, tiny_gallery):
    """＋/− on a result add it to the query's examples: the page sends them, shows them, and leaves them out of the
    results, which are the server's combination of the examples (checked against numpy here)."""
    import numpy as np
    from playwright.sync_api import expect

    x = np.asarray(lookalike.open_gallery(tiny_gallery).embeddings)
    page, _, console_errors = open_page(browser, served)
    expect(page.locator("#method option")).to_have_count(3, timeout=WAIT_MS)
    page.select_option("#method", "brute")
    page.locator("#k").fill("5")
    page.locator("#k").dispatch_event("change")
    page.locator("#random-btn").click()
    results = page.locator("#results .result")
    expect(results).to_have_count(5, timeout=WAIT_MS)
    query = int(page.locator("#query-caption").inner_text().split("gallery id ")[1].split()[0])
    more = int(results.nth(1).get_attribute("data-id"))
    results.nth(1).locator(".more").click()
    expect(page.locator("#examples li.positive")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator(f"#results .result[data-id='{more}']")).to_have_count(0, timeout=WAIT_MS)
    less = int(results.nth(2).get_attribute("data-id"))
    results.nth(2).locator(".less").click()
    expect(page.locator("#examples li.negative")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator(f"#results .result[data-id='{less}']")).to_have_count(0, timeout=WAIT_MS)
    q = x[[query, more]].mean(axis=0) - 0.5 * x[less]
    scores = x @ (q / np.linalg.norm(q))
    scores[[query, more, less]] = -np.inf
    expected = [str(i) for i in np.argsort(-scores, kind="stable")[:5]]
    expect(results).to_have_count(5)
    assert [results.nth(i).get_attribute("data-id") for i in range(5)] == expected
    expect(page.locator("#examples li.query")).to_have_count(1)  # the query image, shown as an example too
    page.locator("#examples li.negative button").click()  # remove the negative: the query and one example left
    expect(page.locator("#examples li")).to_have_count(2, timeout=WAIT_MS)
    page.locator("#examples-clear").click()
    expect(page.locator("#examples")).to_be_hidden()
    assert console_errors == []
    page.close()


def test_filter_by_label_split_path_ids_and_change_date(served, browser, tiny_gallery):
    from playwright.sync_api import expect

    gallery = lookalike.open_gallery(tiny_gallery)
    label = gallery.labels[30]
    page, _, console_errors = open_page(browser, served)
    expect(page.locator("#method option")).to_have_count(3, timeout=WAIT_MS)
    page.select_option("#method", "brute")
    page.locator("#random-btn").click()
    results = page.locator("#results .result")
    expect(results.first).to_be_visible(timeout=WAIT_MS)
    page.select_option("#filter-label", label)
    expect(page.locator(f"#results .result:not([data-label='{label}'])")).to_have_count(0, timeout=WAIT_MS)
    expect(results.first).to_be_visible()
    page.select_option("#filter-split", "val")
    expect(page.locator("#results .result:not([data-split='val'])")).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator(f"#results .result:not([data-label='{label}'])")).to_have_count(0)
    shown = page.locator("#results .result").count()  # the val images of that label
    assert shown == sum(1 for i in range(gallery.count) if gallery.labels[i] == label and gallery.splits[i] == "val")
    assert console_errors == []
    page.locator("#filter-path").fill("*no-such-folder*")  # nothing matches: the server's sentence on the page
    page.locator("#filter-path").dispatch_event("change")
    expect(page.locator("#error")).to_contain_text("matches the filter", timeout=WAIT_MS)

    # an id list (the other filters cleared): exactly those rows come back, best first
    page.locator("#filter-path").fill("")
    page.select_option("#filter-label", "")
    page.select_option("#filter-split", "")
    wanted = {3, 17, 42}
    page.locator("#filter-ids").fill("3, 17 42")
    page.locator("#filter-ids").dispatch_event("change")
    expect(page.locator("#results .result")).to_have_count(len(wanted), timeout=WAIT_MS)
    assert {int(i) for i in results.evaluate_all("els => els.map(e => e.dataset.id)")} == wanted
    page.locator("#filter-ids").fill("3, x")  # not an id: the server's sentence on the page
    page.locator("#filter-ids").dispatch_event("change")
    expect(page.locator("#error")).to_contain_text("list of gallery ids", timeout=WAIT_MS)
    page.locator("#filter-ids").fill("")
    # a change-date range that ends before these files were written: none of them matches
    page.locator("#filter-to").fill("2001-01-31")
    page.locator("#filter-to").dispatch_event("change")
    expect(page.locator("#error")).to_contain_text("matches the filter", timeout=WAIT_MS)
    page.close()


def test_the_map(served, browser):
    """The Map tab draws every row; hover shows the point's image, a click searches from it, a box lists the rows in
    it. Positions are computed here from GET /api/map, as the page's documented layout places them."""
    import base64

    import httpx
    import numpy as np
    from playwright.sync_api import expect

    answer = httpx.get(f"{served}/api/map", timeout=60).json()
    x, y = (np.frombuffer(base64.b64decode(answer[k]), "<u2").astype(float) for k in ("x", "y"))
    size, margin = 760, 8  # the canvas's size and margin in app.js
    px = margin + x / answer["grid"] * (size - 2 * margin)
    py = size - margin - y / answer["grid"] * (size - 2 * margin)
    gaps = np.hypot(px[:, None] - px[None], py[:, None] - py[None]) + np.eye(len(px)) * 1e9
    loner = int(gaps.min(axis=1).argmax())  # the point farthest from any other: unambiguous under the pointer

    page, _, console_errors = open_page(browser, served)
    expect(page.locator("#method option")).to_have_count(3, timeout=WAIT_MS)
    page.locator("#tab-map").click()
    expect(page.locator("#map-status")).to_contain_text(f"{answer['count']} images", timeout=WAIT_MS)
    coloured = page.evaluate(
        """() => { const d = document.getElementById("map-canvas").getContext("2d").getImageData(0, 0, 760, 760).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== 255 || d[i + 1] !== 255 || d[i + 2] !== 255) n++;
        return n; }"""
    )
    assert coloured >= answer["count"]  # every point drew at least its pixel
    assert float(page.locator("body").get_attribute("data-map-draw-ms")) > 0

    box = page.locator("#map-canvas").bounding_box()
    scale = box["width"] / size
    page.mouse.move(box["x"] + px[loner] * scale, box["y"] + py[loner] * scale)
    expect(page.locator("#map-tip")).to_be_visible(timeout=WAIT_MS)
    assert page.locator("#map-tip").get_attribute("data-id") == str(loner)

    # a box over the top left (within the window): the rows whose positions fall in it
    x0, y0, x1, y1 = 10, 10, size / 2, size / 3
    page.mouse.move(box["x"] + x0 * scale, box["y"] + y0 * scale)
    page.mouse.down()
    page.mouse.move(box["x"] + x1 * scale, box["y"] + y1 * scale, steps=5)
    page.mouse.up()
    inside = int(((px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)).sum())
    assert 0 < inside < len(px)  # a box that holds some points and not all: the count can be wrong
    expect(page.locator("#map-selection-status")).to_contain_text(f"{inside} images in the box", timeout=WAIT_MS)

    page.mouse.click(box["x"] + px[loner] * scale, box["y"] + py[loner] * scale)  # a click searches from the point
    expect(page.locator("#query-caption")).to_contain_text(f"gallery id {loner}", timeout=WAIT_MS)
    expect(page.locator("#search-view")).to_be_visible()
    assert console_errors == []
    page.close()


def set_slider(page, selector: str, value: int) -> None:
    """Move a range input as a user's drag ends: set the value, then fire input and change."""
    page.eval_on_selector(
        selector,
        "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); e.dispatchEvent(new Event('change')); }",
        value,
    )


def test_text_query_and_compare_with_exact(served_clip, browser, tmp_path):
    from playwright.sync_api import expect

    page, requests, console_errors = open_page(browser, served_clip)
    expect(page.locator("#provenance")).to_contain_text("clip", timeout=WAIT_MS)
    expect(page.locator("#text-form")).to_be_visible()

    # a text query: results, and the random weights said where the results are
    k = 8
    page.locator("#k").fill(str(k))
    page.locator("#k").dispatch_event("change")
    page.locator("#text-input").fill("a red car")
    page.locator("#text-btn").click()
    results = page.locator("#results .result")
    expect(results).to_have_count(k, timeout=WAIT_MS)
    expect(page.locator("#query-caption")).to_contain_text("a red car")
    expect(page.locator("#status")).to_contain_text("RANDOM weights")
    expect(page.locator("#status")).to_contain_text("no learned meaning")
    expect(page.locator("#latency")).to_contain_text("tokenize")
    expect(page.locator("#compare-strip")).to_be_hidden()

    # compare with exact, ivf probing every list of this small index: nothing missed (the page starts on the default
    # the server measured on the gallery's held-out queries, which a text query need not match)
    page.locator("#method").select_option("ivf")
    set_slider(page, "#nprobe", int(page.locator("#nprobe").get_attribute("max")))
    page.locator("#compare").check()
    expect(page.locator("#compare-strip")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#compare-recall")).to_have_text(f"recall@{k} 1.00", timeout=WAIT_MS)
    expect(page.locator("#missed")).to_be_hidden()
    expect(page.locator("#results .exact-mark")).to_have_count(k)

    # nprobe 1: the approximate results lose neighbours, shown in a row of their own
    set_slider(page, "#nprobe", 1)
    expect(page.locator("#status")).to_contain_text("nprobe=1", timeout=WAIT_MS)
    expect(page.locator("#missed")).to_be_visible(timeout=WAIT_MS)
    missed = page.locator("#missed-results .result")
    n_missed = missed.count()
    assert n_missed > 0
    # as the page's toFixed(2) rounds: the float's exact value, a tie up (1/8 = 0.125 shows 0.13; Python's format gives
    # 0.12)
    shown = Decimal((k - n_missed) / k)
    expect(page.locator("#compare-recall")).to_have_text(
        f"recall@{k} {shown.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}"
    )
    expect(page.locator("#compare-latency")).to_contain_text("ivf")
    expect(page.locator("#compare-latency")).to_contain_text("brute (exact)")
    assert re.search(r"\d+(\.\d+)? ms", page.locator("#compare-latency").inner_text())
    shown = set(results.evaluate_all("els => els.map(e => e.dataset.id)"))
    assert not shown & set(missed.evaluate_all("els => els.map(e => e.dataset.id)"))  # missed = exact minus approximate
    assert page.locator("#results .not-exact-mark").count() == results.count() - (k - n_missed)
    page.wait_for_load_state("networkidle")
    screenshot = tmp_path / "lookalike-compare.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert console_errors == []

    # an empty text query: the server's message (the browser logs the 422 itself as a console error)
    page.locator("#text-input").fill("")
    page.locator("#text-btn").click()
    expect(page.locator("#error")).to_contain_text("the text query is empty", timeout=WAIT_MS)
    assert [url for url in requests if not url.startswith((served_clip, "blob:", "data:"))] == []
    page.close()


def expect_rows(page, answer: dict) -> None:
    """The page's result rows are the server's `answer`: the same ids in the same order, with its scores."""
    from playwright.sync_api import expect

    results = page.locator("#results .result")
    expect(results).to_have_count(len(answer["results"]), timeout=WAIT_MS)
    for i, row in enumerate(answer["results"]):
        expect(results.nth(i)).to_have_attribute("data-id", str(row["id"]), timeout=WAIT_MS)
    shown = [float(s) for s in results.evaluate_all("els => els.map(e => e.dataset.score)")]
    assert shown == [row["score"] for row in answer["results"]]


def test_an_upload_and_a_text_together(served_clip, browser, tiny_collection):
    """Upload an image, add a text beside it (＋), a result as a negative (−) and a text to move away from (−): each
    time the page shows the server's answer to that combination; removing the image leaves the texts and the id."""
    import httpx
    from playwright.sync_api import expect

    path = sorted((tiny_collection / "val" / "images").glob("*.JPEG"))[2]
    fields = {"method": "brute", "k": "6"}

    def server(**more) -> dict:
        files = {"image": (path.name, path.read_bytes(), "image/jpeg")} if more.pop("upload", True) else None
        response = httpx.post(f"{served_clip}/api/search", files=files, data={**fields, **more}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    page, requests, console_errors = open_page(browser, served_clip)
    expect(page.locator("#method option")).to_have_count(3, timeout=WAIT_MS)
    page.select_option("#method", "brute")
    page.locator("#k").fill("6")
    page.locator("#k").dispatch_event("change")
    page.set_input_files("#file-input", str(path))
    alone = server()
    expect_rows(page, alone)
    expect(page.locator("#examples")).to_be_hidden()

    page.locator("#text-input").fill("at night")
    page.locator("#text-add").click()  # this image, but at night
    both = server(text="at night")
    assert [r["id"] for r in both["results"]] != [r["id"] for r in alone["results"]]  # the text changes the answer
    expect_rows(page, both)
    expect(page.locator("#query-caption")).to_contain_text(f"upload: {path.name}")
    expect(page.locator("#query-caption")).to_contain_text("+ “at night”")
    expect(page.locator("#examples li.query")).to_have_count(2)  # the image and the text, each removable
    expect(page.locator("#latency")).to_contain_text("decode + preprocess + tokenize")

    less = both["results"][0]["id"]
    page.locator(f"#results .result[data-id='{less}'] .less").click()
    expect_rows(page, server(text="at night", negative=str(less)))
    expect(page.locator("#examples li.negative")).to_have_count(1)

    page.locator("#text-input").fill("a red car")
    page.locator("#text-not").click()
    expect_rows(page, server(text="at night", negative=str(less), negative_text="a red car"))
    expect(page.locator("#examples li.negative-text")).to_have_text("− “a red car” ×")

    page.locator("#examples li.query[data-part='image'] button").click()  # the texts and the id are left
    expect_rows(page, server(upload=False, text="at night", negative=str(less), negative_text="a red car"))
    expect(page.locator("#query-img")).to_be_hidden()
    expect(page.locator("#examples li")).to_have_count(3)
    page.locator("#examples li.query[data-part='text'] button").click()  # no positive left: nothing to search with
    expect(page.locator("#status")).to_contain_text("Nothing left to search with", timeout=WAIT_MS)
    expect(page.locator("#results .result")).to_have_count(0)
    assert console_errors == []
    assert [url for url in requests if not url.startswith((served_clip, "blob:", "data:"))] == []
    page.close()


@pytest.fixture(scope="module")
def served_planted(planted):
    """`lookalike serve` over the gallery with planted copies (conftest.plant_copies); yields its URL."""
    with running_server(planted.gallery) as url:
        yield url


def shown_groups(page) -> set[frozenset[str]]:
    return {
        frozenset(paths)
        for paths in page.locator("#dupes-groups .group").evaluate_all(
            "groups => groups.map(g => [...g.querySelectorAll('.member')].map(m => m.dataset.path))"
        )
    }


def test_duplicates_view(served_planted, planted, browser, tmp_path):
    import csv
    import json

    from playwright.sync_api import expect

    page, requests, console_errors = open_page(browser, served_planted)
    expect(page.locator("#provenance")).to_contain_text("resnet18", timeout=WAIT_MS)
    expect(page.locator("#dupes-view")).to_be_hidden()
    page.click("#tab-dupes")
    expect(page.locator("#search-view")).to_be_hidden()
    expect(page.locator("#dupes-deletes-nothing")).to_contain_text("The server deletes nothing")

    # the page opens on the default preset (near: it also joins this collection's near-identical drawings of one
    # class); the `exact` button shows the planted pairs, each with its keeper marked, the enlarged copy kept
    groups = page.locator("#dupes-groups .group")
    expect(page.locator("#dupes-presets .preset.active")).to_have_text(f"near {PRESETS['near']:g}", timeout=WAIT_MS)
    page.click('#dupes-presets .preset[data-preset="exact"]')
    expect(page.locator("#dupes-threshold-value")).to_have_text(f"{PRESETS['exact']:.2f}", timeout=WAIT_MS)
    expect(groups).to_have_count(len(planted.pairs()), timeout=WAIT_MS)
    assert shown_groups(page) == planted.pairs()
    expect(page.locator("#dupes-presets .preset.active")).to_have_text(f"exact {PRESETS['exact']:g}")
    expect(page.locator("#dupes-groups .member.keeper")).to_have_count(len(planted.pairs()))
    enlarged = groups.filter(has=page.locator(f'.member[data-path="{planted.larger.copy}"]'))
    expect(enlarged.locator(".member.keeper")).to_have_attribute("data-path", planted.larger.copy)
    expect(enlarged.locator(".keep-mark")).to_have_text("★ keep")
    expect(enlarged.locator("h3")).to_contain_text("lowest pairwise score 0.9")
    expect(enlarged.locator(".member:not(.keeper) .reason")).to_have_text("similarity")
    expect(page.locator("#dupes-status")).to_contain_text("identical content: checked")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(tmp_path / "lookalike-duplicates.png"), full_page=True)

    # the slider at 1: only the byte copies are left
    set_slider(page, "#dupes-threshold", 1)
    identical = planted.pairs(tier="identical content")
    expect(groups).to_have_count(len(identical), timeout=WAIT_MS)
    assert shown_groups(page) == identical
    expect(page.locator("#dupes-status")).to_contain_text("threshold 1 ")
    expect(page.locator("#dupes-presets .preset.active")).to_have_count(0)

    # export what is shown: CSV and JSON, both downloaded from the page
    with page.expect_download() as download:
        page.click("#dupes-csv")
    rows = list(csv.DictReader(open(download.value.path(), newline="")))
    assert download.value.suggested_filename == "duplicates-1.csv"
    by_group: dict[str, set[str]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(row["path"])
    assert set(map(frozenset, by_group.values())) == identical
    assert {row["reason"] for row in rows} == {"keeper", "identical content"}
    with page.expect_download() as download:
        page.click("#dupes-json")
    data = json.loads(open(download.value.path()).read())
    assert (
        data["threshold"] == 1.0 and {frozenset(m["path"] for m in g["members"]) for g in data["groups"]} == identical
    )

    # a preset button brings the planted pairs back
    page.click('#dupes-presets .preset[data-preset="exact"]')
    expect(groups).to_have_count(len(planted.pairs()), timeout=WAIT_MS)
    expect(page.locator("#dupes-threshold-value")).to_have_text(f"{PRESETS['exact']:.2f}")
    assert console_errors == []
    assert [url for url in requests if not url.startswith((served_planted, "blob:", "data:"))] == []
    page.close()
