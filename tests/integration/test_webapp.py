"""The web app at `/`, driven in a real browser (Playwright + Debian's Chromium) against the real local stack.

One stack and one browser for the module; each test gets a fresh browser context (its own sessionStorage).
Screenshots go to a temporary folder, or to MMRAG_SCREENSHOT_DIR (`make screenshots` refreshes docs/).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from tests.integration.conftest import Stack, gallery, png_bytes, sha256_id, wait_for_job
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration
expect.set_options(timeout=30_000)

CHROMIUM = os.environ.get("MMRAG_CHROMIUM", "/usr/lib/chromium/chromium")
COLLECTION = "webapp"
IMAGE_COUNT = 26  # more than one gallery page (24)
HTML_TITLE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@dataclass
class Indexed:
    images: dict[str, bytes]  # filename → bytes
    status: str
    failed: list[str]
    collection_text: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not at {CHROMIUM}: `make install` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MMRAG_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open_page(browser: Browser, stack: Stack, viewport: dict[str, int]) -> tuple[Page, list[str]]:
    context = browser.new_context(base_url=stack.gateway_url, viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    # A CSP violation only shows as a console error; failed API calls (expected in some tests) are not problems.
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error" and "Content Security Policy" in message.text
            else None
        ),
    )
    return page, problems


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    page, problems = _open_page(browser, stack, DESKTOP)
    yield page
    page.context.close()
    assert problems == [], problems


@pytest.fixture
def phone(browser: Browser, stack: Stack) -> Iterator[Page]:
    page, problems = _open_page(browser, stack, PHONE)
    yield page
    page.context.close()
    assert problems == [], problems


@pytest.fixture(scope="module")
def indexed(browser: Browser, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Indexed:
    """The collection `webapp`, indexed through the page: 26 images, a metadata file, and one text file."""
    folder = tmp_path_factory.mktemp("upload")
    images = dict(gallery(IMAGE_COUNT))
    for name, data in images.items():
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    metadata = [
        {"filename": name, "title": HTML_TITLE if i == 1 else f"item {i}", "category": f"cat{i % 2}"}
        for i, name in enumerate(images)
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in metadata))

    page, problems = _open_page(browser, stack, DESKTOP)
    page.goto("/?view=gallery")
    page.get_by_label("Add to collection").fill(COLLECTION)
    page.get_by_label("Image files").set_input_files([folder / name for name in images] + [folder / "notes.txt"])
    page.get_by_label("Metadata (JSON Lines, optional)").set_input_files(folder / "metadata.jsonl")
    page.get_by_role("button", name="Upload and index").click()
    status = page.locator("#upload-status")
    expect(status).to_contain_text("Done:", timeout=90_000)
    collection = page.get_by_role("list", name="Collections").get_by_role("listitem").filter(has_text=COLLECTION)
    expect(collection).to_contain_text(f"{IMAGE_COUNT} images")
    result = Indexed(
        images=images,
        status=status.inner_text(),
        failed=page.locator("#upload-failed-list li").all_inner_texts(),
        collection_text=collection.first.inner_text(),
    )
    assert page.locator("#upload-progress").evaluate("p => p.value") == 1
    page.context.close()
    assert problems == [], problems
    return result


def _results(page: Page) -> Any:
    return page.get_by_role("list", name="Results").get_by_role("listitem")


def _job_id(page: Page) -> str:
    match = re.search(r"[?&]job=([0-9a-f]{32})", page.url)
    assert match, page.url
    return match[1]


def _search(page: Page, image: Path | None, instruction: str = "", limit: int = 6) -> str:
    """Fill the search form (the query image already set when `image` is None), submit, wait for the results."""
    page.get_by_label("Collection", exact=True).select_option(COLLECTION)
    if image is not None:
        page.get_by_label("Query image").set_input_files(image)
    page.get_by_label("Instruction").fill(instruction)
    page.get_by_label("Number of results").fill(str(limit))
    earlier = re.search(r"[?&]job=([0-9a-f]{32})", page.url)
    page.get_by_role("button", name="Search", exact=True).click()
    if earlier:
        # The page still shows the earlier search ("Done:", its results) until the new job's id is in the URL.
        expect(page).not_to_have_url(re.compile(f"job={earlier[1]}"))
    expect(page.locator("#job-status")).to_contain_text("Done:")
    expect(_results(page)).to_have_count(limit)
    return _job_id(page)


def _api_job(stack: Stack, job_id: str) -> dict[str, Any]:
    with stack.http() as http:
        return dict(wait_for_job(http, job_id))


def _query_file(tmp_path: Path, name: str = "query.png", color: tuple[int, int, int] = (200, 40, 40)) -> Path:
    path = tmp_path / name
    path.write_bytes(png_bytes(color))
    return path


def _dispatch_file_event(page: Page, kind: str, target: str, data: bytes, name: str) -> None:
    """A paste or drop carrying an image file, as the browser builds it from the clipboard or a drag."""
    page.evaluate(
        """([kind, target, bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            const init = {bubbles: true, cancelable: true};
            const event = kind === "paste"
                ? new ClipboardEvent("paste", {...init, clipboardData: transfer})
                : new DragEvent("drop", {...init, dataTransfer: transfer});
            (target === "focused" ? document.activeElement : document.querySelector(target)).dispatchEvent(event);
        }""",
        [kind, target, list(data), name],
    )


def test_images_are_indexed_through_the_page_with_progress_and_failed_files(indexed: Indexed) -> None:
    assert indexed.status == f"Done: {IMAGE_COUNT} indexed, 0 already there, 1 failed."
    assert len(indexed.failed) == 1
    assert indexed.failed[0].startswith("notes.txt: ")
    assert "is not a JPEG, PNG" in indexed.failed[0]
    assert "tiny-random" in indexed.collection_text


def test_a_search_shows_ranks_movement_scores_metadata_and_the_explanation_and_survives_a_reload(
    page: Page, stack: Stack, indexed: Indexed, tmp_path: Path, screenshots: Path
) -> None:
    page.goto("/")
    job_id = _search(page, _query_file(tmp_path), "phone case with this image theme")
    job = _api_job(stack, job_id)
    candidates = job["result"]["candidates"]
    rerank = job["result"]["rerank"]
    assert rerank["status"] == "applied"

    def check_results() -> None:
        items = _results(page)
        expect(items).to_have_count(len(candidates))
        for item, candidate in zip(items.all(), candidates, strict=True):
            expect(item).to_contain_text(f"#{candidate['rank']}")
            expect(item).to_contain_text(f"Vector rank{candidate['vector_rank']} (")
            expect(item).to_contain_text(f"Score{candidate['score']:.3f}")
            expect(item).to_contain_text(candidate["id"])
            expect(item).to_contain_text(f"category{candidate['metadata']['category']}")
            expect(item.get_by_role("img")).to_have_attribute("alt", candidate["metadata"]["title"])
            expect(item.get_by_role("button", name="More like this", exact=True)).to_be_visible()
        moved = candidates[0]["vector_rank"] - candidates[0]["rank"]
        assert moved != 0  # the fake VLM reverses the vector order
        expect(items.first).to_contain_text(f"moved {'up' if moved > 0 else 'down'} {abs(moved)}")
        best = items.filter(has_text="Best pick")
        expect(best).to_have_count(1)
        expect(best).to_contain_text(rerank["best_id"])
        expect(page.locator("#rerank-info .explanation")).to_have_text(rerank["explanation"])
        expect(page.get_by_role("link", name="Open the panorama the vision model saw")).to_have_attribute(
            "href", rerank["panorama_url"]
        )
        for label in ("Queue", "Embed", "Search", "Rerank", "Total"):
            expect(page.locator("#timings")).to_contain_text(label)
        expect(page.locator("#job-warning")).to_contain_text("tiny-random")

    check_results()
    images_loaded = _results(page).get_by_role("img").evaluate_all("imgs => imgs.every(i => i.naturalWidth > 0)")
    assert images_loaded
    page.screenshot(path=screenshots / "search-desktop.png", full_page=True)

    page.reload()
    assert _job_id(page) == job_id
    expect(page.locator("#job-status")).to_contain_text("Done:")
    check_results()
    with stack.http() as http:
        assert http.get(rerank["panorama_url"]).headers["content-type"] == "image/jpeg"


def test_more_like_this_searches_with_that_result_as_the_query(
    page: Page, stack: Stack, indexed: Indexed, tmp_path: Path
) -> None:
    page.goto("/")
    first_job = _search(page, _query_file(tmp_path), limit=4)
    third = _results(page).nth(2)
    chosen = third.locator(".result-id").inner_text()
    third.get_by_role("button", name="More like this").click()
    expect(page).not_to_have_url(re.compile(first_job))
    expect(page.locator("#job-status")).to_contain_text("Done:")
    job = _api_job(stack, _job_id(page))
    assert job["status"] == "succeeded"
    nearest = next(c for c in job["result"]["candidates"] if c["vector_rank"] == 1)
    assert nearest["id"] == chosen  # an image is its own nearest neighbour
    assert nearest["score"] == pytest.approx(1.0, abs=1e-3)
    expect(page.locator("#query-caption")).to_contain_text(chosen[:12])


def test_a_pasted_image_becomes_the_query_but_not_while_a_text_field_has_focus(page: Page, indexed: Indexed) -> None:
    page.goto("/")
    pasted = png_bytes((20, 160, 90), pattern=2)
    page.get_by_label("Instruction").focus()
    _dispatch_file_event(page, "paste", "focused", pasted, "while-typing.png")
    assert page.get_by_label("Query image").evaluate("input => input.files.length") == 0
    expect(page.locator("#query-figure")).to_be_hidden()

    page.locator("#search-heading").click()  # focus leaves the text field
    _dispatch_file_event(page, "paste", "focused", pasted, "pasted.png")
    expect(page.locator("#query-caption")).to_have_text("Query image: pasted.png")
    assert page.get_by_label("Query image").evaluate("input => input.files[0].name") == "pasted.png"
    _search(page, None, "brighter", limit=3)


def test_a_dropped_image_becomes_the_query(page: Page, indexed: Indexed) -> None:
    page.goto("/")
    _dispatch_file_event(page, "drop", "#drop-zone", png_bytes((1, 2, 3)), "dropped.png")
    expect(page.locator("#query-caption")).to_have_text("Query image: dropped.png")
    assert page.get_by_label("Query image").evaluate("input => input.files[0].name") == "dropped.png"


def test_the_instruction_alone_searches_by_text_with_a_min_score(page: Page, stack: Stack, indexed: Indexed) -> None:
    page.goto("/")
    # An image chosen, then removed again: the search is by the text alone.
    _dispatch_file_event(page, "drop", "#drop-zone", png_bytes((1, 2, 3)), "dropped.png")
    page.get_by_role("button", name="Remove image").click()
    expect(page.locator("#query-figure")).to_be_hidden()
    assert page.get_by_label("Query image").evaluate("input => input.files.length") == 0
    page.get_by_label("Instruction").fill("anything")
    page.get_by_label("Minimum score").fill("1.5")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-form").get_by_role("alert")).to_contain_text("not between −1 and 1")

    page.get_by_label("Minimum score").fill("-1")
    instruction = "web app, text alone: a striped case"
    job = _api_job(stack, _search(page, None, instruction, limit=4))
    assert job["status"] == "succeeded" and job["result"]["rerank"]["status"] == "applied"
    with stack.vlm() as vlm:
        asked = [r for r in vlm.get("/control/requests").json() if any(instruction in t for t in r["texts"])]
    assert len(asked) == 1 and any("there is no query image" in t.lower() for t in asked[0]["texts"])


def test_a_running_search_can_be_canceled(page: Page, stack: Stack, indexed: Indexed, tmp_path: Path) -> None:
    with stack.vlm() as vlm:
        vlm.post("/control/reset")
        # The VLM holds the job in reranking until the stack's rerank budget (6 s) ends it: time enough to cancel.
        vlm.post("/control/scenario", json={"name": "sleep", "sleep_s": 5})
        try:
            page.goto("/")
            page.get_by_label("Collection", exact=True).select_option(COLLECTION)
            page.get_by_label("Query image").set_input_files(_query_file(tmp_path))
            page.get_by_role("button", name="Search", exact=True).click()
            wait_until(lambda: len(vlm.get("/control/requests").json()) > 0, 30, "the VLM to be asked")
            page.get_by_role("button", name="Cancel").click()
            expect(page.locator("#job-status")).to_have_text("Canceled.")
            expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
            expect(page.locator(".stage.stopped")).to_have_text("Reranking")  # where it was when canceled
            assert _api_job(stack, _job_id(page))["status"] == "canceled"
            expect(_results(page)).to_have_count(0)
        finally:
            vlm.post("/control/reset")


def test_metadata_filters_narrow_the_results_and_a_bad_one_is_explained(
    page: Page, indexed: Indexed, tmp_path: Path
) -> None:
    page.goto("/")
    page.get_by_label("Query image").set_input_files(_query_file(tmp_path))
    page.get_by_role("button", name="Add filter").click()
    page.get_by_label("Key", exact=True).fill("category")
    page.get_by_label("Value", exact=True).fill("cat1")
    page.get_by_label("Type", exact=True).select_option("number")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#search-form").get_by_role("alert")).to_contain_text(
        'The value of "category" must be a number.'
    )

    page.get_by_label("Type", exact=True).select_option("text")
    _search(page, None, limit=6)
    categories = _results(page).locator(".metadata").all_inner_texts()
    assert len(categories) == 6 and all("category\ncat1" in text for text in categories), categories


def test_a_skipped_or_failed_rerank_is_shown_with_its_reason(
    page: Page, stack: Stack, indexed: Indexed, tmp_path: Path
) -> None:
    page.goto("/")
    page.get_by_label("Rerank with the vision model").uncheck()
    skipped = _api_job(stack, _search(page, _query_file(tmp_path), limit=3))["result"]["rerank"]
    assert skipped["status"] == "skipped"
    expect(page.locator("#rerank-info")).to_contain_text(f"Reranking skipped: {skipped['reason']}")
    expect(page.locator("#rerank-info")).to_contain_text("in vector order")
    ranks = _results(page).evaluate_all("items => items.map(i => i.querySelector('.facts dd').textContent)")
    assert [rank.split(" ")[0] for rank in ranks] == ["1", "2", "3"]

    with stack.vlm() as vlm:
        vlm.post("/control/scenario", json={"name": "refusal"})
        try:
            page.get_by_label("Rerank with the vision model").check()
            failed = _api_job(stack, _search(page, None, "a refused instruction", limit=3))["result"]["rerank"]
        finally:
            vlm.post("/control/reset")
    assert failed["status"] == "failed"
    expect(page.locator("#rerank-info")).to_contain_text(f"Reranking failed (fake-vlm-1): {failed['reason']}")
    expect(_results(page).filter(has_text="Best pick")).to_have_count(0)


def test_a_file_that_is_not_an_image_gets_an_alert_with_the_problem_detail(
    page: Page, indexed: Indexed, tmp_path: Path
) -> None:
    page.goto("/")
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    page.get_by_label("Collection", exact=True).select_option(COLLECTION)
    page.get_by_label("Query image").set_input_files(not_image)
    page.get_by_role("button", name="Search", exact=True).click()
    alert = page.locator("#search-form").get_by_role("alert")
    expect(alert).to_contain_text("The image cannot be used")
    expect(alert).to_contain_text("is not a JPEG, PNG, WebP, GIF or BMP image")
    assert "job=" not in page.url


def test_an_expired_job_in_the_url_says_so(page: Page) -> None:
    page.goto(f"/?job={'0' * 32}")
    alert = page.locator("#job-panel").get_by_role("alert")
    expect(alert).to_contain_text("This search is no longer available.")
    expect(alert).to_contain_text("MMRAG_JOB_TTL_S")


def test_metadata_holding_html_is_shown_as_text(page: Page, indexed: Indexed) -> None:
    page.goto("/?view=gallery")
    page.get_by_label("Collection to browse").select_option(COLLECTION)
    item = page.get_by_role("list", name="Images in the collection").get_by_role("listitem").filter(has_text="bold")
    expect(item.locator(".result-title")).to_have_text(HTML_TITLE)
    expect(item.get_by_role("img")).to_have_attribute("alt", HTML_TITLE)
    assert page.locator("main b, main script, main img[src='x']").count() == 0
    assert page.evaluate("window.__xss") is None


def test_the_gallery_pages_through_a_collection_and_deletes_an_image(
    page: Page, stack: Stack, indexed: Indexed, screenshots: Path
) -> None:
    page.goto("/?view=gallery")
    page.get_by_label("Collection to browse").select_option(COLLECTION)
    items = page.get_by_role("list", name="Images in the collection").get_by_role("listitem")
    expect(items).to_have_count(24)
    seen = items.locator(".result-id").all_inner_texts()
    page.get_by_role("button", name="Next page").click()
    expect(items).to_have_count(IMAGE_COUNT - 24)
    seen += items.locator(".result-id").all_inner_texts()
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    assert seen == sorted(sha256_id(data) for data in indexed.images.values())
    page.get_by_role("button", name="Previous page").click()
    expect(items).to_have_count(24)
    expect(page.get_by_role("button", name="Previous page")).to_be_disabled()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=screenshots / "gallery-desktop.png")

    # Deleting happens in a collection of its own, so the other tests keep all of `webapp`.
    doomed, kept = png_bytes((9, 9, 9)), png_bytes((250, 250, 9))
    with stack.http() as http:
        response = http.post(
            "/v1/collections/webapp_delete/images",
            files=[("files", ("doomed.png", doomed, "image/png")), ("files", ("kept.png", kept, "image/png"))],
            data={"metadata": '{"filename": "doomed.png", "title": "doomed"}'},
        )
        assert wait_for_job(http, response.json()["id"])["status"] == "succeeded"
    page.reload()
    page.get_by_label("Collection to browse").select_option("webapp_delete")
    expect(items).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete doomed").click()
    expect(items).to_have_count(1)
    expect(items.locator(".result-id")).to_have_text(sha256_id(kept))
    collection = page.get_by_role("list", name="Collections").get_by_role("listitem").filter(has_text="webapp_delete")
    expect(collection).to_contain_text("1 image ·")
    with stack.http() as http:
        assert http.get(f"/v1/collections/webapp_delete/images/{sha256_id(doomed)}").status_code == 404


def _overflowing(page: Page) -> list[str]:
    """Elements wider than their box: the page scrolls sideways, or a card clips what it holds."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll("main *")]
                .filter(e => !["INPUT", "SELECT", "TEXTAREA"].includes(e.tagName) && e.clientWidth > 0)
                .filter(e => e.scrollWidth > e.clientWidth + 1)
                .map(e => `${e.tagName}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""
        )
    )


def test_at_390_px_nothing_scrolls_sideways(phone: Page, indexed: Indexed, tmp_path: Path, screenshots: Path) -> None:
    phone.goto("/")
    _search(phone, _query_file(tmp_path), "phone case with this image theme", limit=6)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert _overflowing(phone) == []
    phone.locator("#job-panel").scroll_into_view_if_needed()
    phone.screenshot(path=screenshots / "search-390.png")
    phone.get_by_role("link", name="Gallery").click()
    phone.get_by_label("Collection to browse").select_option(COLLECTION)
    expect(phone.get_by_role("list", name="Images in the collection").get_by_role("listitem")).to_have_count(24)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert _overflowing(phone) == []


def test_the_keyboard_reaches_every_control_with_a_visible_focus(page: Page, indexed: Indexed) -> None:
    page.goto("/")
    expect(page.get_by_label("Collection", exact=True)).to_have_value(re.compile(".+"))
    reached: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        name = page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        reached.append(name)
        if name == "search-button":
            break
    assert reached[0] == "Skip to content"
    for control in ("query-image", "instruction", "collection", "limit", "rerank", "add-filter", "search-button"):
        assert control in reached, reached
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.keyboard.press("Enter")
    expect(page.locator("#search-form").get_by_role("alert")).to_contain_text("Choose a query image, or write an")


def test_dark_mode_follows_the_system(page: Page) -> None:
    background = "getComputedStyle(document.body).backgroundColor"
    page.emulate_media(color_scheme="light")
    page.goto("/")
    light = page.evaluate(background)
    page.emulate_media(color_scheme="dark")
    dark = page.evaluate(background)
    assert light == "rgb(247, 248, 250)"
    assert dark == "rgb(15, 18, 22)"


def test_on_a_401_the_app_asks_for_an_api_key_and_sends_it_as_a_bearer_token(
    page: Page, indexed: Indexed, tmp_path: Path
) -> None:
    # The gateway has no keys yet (the auth issue): the browser's own network layer answers 401 to any API call
    # without the key, and passes the rest through to the real gateway.
    key = "mmrag-test-key"
    sent: list[str | None] = []

    def require_key(route: Route) -> None:
        authorization = route.request.headers.get("authorization")
        sent.append(authorization)
        if authorization == f"Bearer {key}":
            route.continue_()
        else:
            body = {"type": "unauthorized", "title": "Not authorised", "status": 401, "detail": "send an API key"}
            route.fulfill(status=401, content_type="application/problem+json", body=json.dumps(body))

    page.route(re.compile(r"/v1/"), require_key)
    page.goto("/")
    dialog = page.get_by_role("dialog", name="API key needed")
    expect(dialog).to_contain_text("send an API key")
    dialog.get_by_label("API key").fill(key)
    dialog.get_by_role("button", name="Use this key").click()
    expect(page.get_by_label("Collection", exact=True)).to_contain_text(COLLECTION)
    assert page.evaluate("sessionStorage.getItem('mmrag.apiKey')") == key
    expect(page.get_by_role("button", name="Forget API key")).to_be_visible()

    _search(page, _query_file(tmp_path), limit=3)
    # Images need the key too: they are fetched with it and shown from blob: URLs.
    expect(_results(page).get_by_role("img").first).to_have_attribute("src", re.compile("^blob:"))
    assert sent[0] is None and all(header == f"Bearer {key}" for header in sent[1:])


def test_the_app_is_served_with_a_strict_content_security_policy(stack: Stack) -> None:
    with stack.http() as http:
        page = http.get("/")
        module = http.get("/static/js/app.js")
        missing = http.get("/static/js/nothing.js")
        escape = http.get("/static/..%2F..%2Fapp.py")
    for response in (page, module):
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in policy and "http" not in policy and "*" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    assert page.headers["content-type"].startswith("text/html")
    assert module.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404 and escape.status_code == 404
    # Inline script would be blocked; the page must not need any, nor anything from another origin.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert not re.search(r"\son[a-z]+=", page.text)
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
