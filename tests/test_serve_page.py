"""cas serve's web page, driven in a real headless browser (Debian's chromium through
Playwright). ``make test`` installs chromium first (``make browser``); without it these
tests fail, saying how to get it: they never skip."""

from __future__ import annotations

import os
import pathlib
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

import cas
from cas.serve.testing import Running, running

CHROMIUM = os.environ.get("CAS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TIMEOUT_MS = 15_000
EVIL = "zz/<img-src=x-onerror=alert(1)>"  # a valid name (no spaces in names) full of markup


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("serve-page")
    store = cas.open_store(str(base / "store"), fsync=False)
    raw = store.save(b"a,b\n1,2\n", "data/raw", metadata={"rows": 1, "source": "s3://in/raw.csv"})
    fraud = store.save(
        {"auc": 0.93}, "models/fraud", parent_ids=[raw], tags={"stage": "production"}
    )
    store.save({"auc": 0.5}, "models/baseline", tags={"stage": "dev"})
    report = store.save(b"report", "reports/weekly", parent_ids=[fraud])
    folder = base / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "cat.txt").write_text("meow")
    (folder / "sub" / "dog.bin").write_bytes(b"\x00woof\xff")
    images = store.save(folder, "data/images")
    store.save(b"x", EVIL, metadata={"note": "<script>alert(2)</script>"})
    with running(store) as srv:
        yield {"srv": srv, "ids": {"raw": raw, "fraud": fraud, "report": report, "images": images}}
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the page tests need Debian's chromium. Run 'make browser' "
            "(as root: apt-get install -y chromium) or set CAS_CHROMIUM to a chromium binary.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, site: dict[str, Any], tmp_path: pathlib.Path) -> Iterator[Any]:
    srv: Running = site["srv"]
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    problems: list[str] = []
    p.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    p.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    p.on(
        "request",
        lambda r: (
            None if r.url.startswith((srv.url, "data:")) else problems.append(f"off-site {r.url}")
        ),
    )
    yield p
    context.close()
    assert problems == []


def open_page(page: Any, site: dict[str, Any], fragment: str = "") -> None:
    page.goto(site["srv"].url + "/" + fragment)
    page.wait_for_selector("#tree-root > li")


def test_tree_lists_names_and_opens_an_artifact(page: Any, site: dict[str, Any]) -> None:
    open_page(page, site)
    folders = page.locator("#tree-root > li.tree-folder").evaluate_all(
        "els => els.map(e => e.dataset.prefix)"
    )
    assert folders == ["data/", "models/", "reports/", "zz/"]
    page.click("li[data-prefix='models/'] > .toggle")
    page.wait_for_selector("li[data-name='models/fraud'] a")
    names = page.locator("li[data-prefix='models/'] li.tree-name").evaluate_all(
        "els => els.map(e => e.dataset.name)"
    )
    assert names == ["models/baseline", "models/fraud"]

    page.click("li[data-name='models/fraud'] a")
    page.wait_for_selector("#history tbody tr")
    assert page.inner_text("#artifact-name") == "models/fraud"
    meta = page.inner_text("#meta")
    assert site["ids"]["fraud"] in meta and "json" in meta and "stage: production" in meta
    history = page.locator("#history tbody tr")
    assert history.count() == 1 and "save json" in history.first.inner_text()
    assert (
        page.locator("#download").get_attribute("href") == f"/api/v1/content/{site['ids']['fraud']}"
    )


def test_search_finds_a_tagged_artifact(page: Any, site: dict[str, Any]) -> None:
    open_page(page, site)
    page.fill("#search-input", "stage:production")
    page.press("#search-input", "Enter")
    page.wait_for_selector("#results a.result-name")
    assert page.locator("#results a.result-name").all_inner_texts() == ["models/fraud"]
    page.click("#results a.result-name")
    page.wait_for_selector("#artifact-name")
    assert page.inner_text("#artifact-name") == "models/fraud"
    page.fill("#search-input", "nothingmatchesthis")
    page.press("#search-input", "Enter")
    page.wait_for_selector("#no-results")


def test_lineage_graph_draws_parents_and_children_and_navigates(
    page: Any, site: dict[str, Any]
) -> None:
    ids = site["ids"]
    open_page(page, site, "#/a/models%2Ffraud")
    page.wait_for_selector("#lineage-svg g.node")
    nodes = page.locator("#lineage-svg g.node")
    sides = {
        nodes.nth(i).get_attribute("data-id"): nodes.nth(i).get_attribute("class")
        for i in range(nodes.count())
    }
    assert sides == {
        ids["raw"]: "node ancestor",
        ids["fraud"]: "node self",
        ids["report"]: "node descendant",
    }
    assert page.locator("#lineage-svg path.edge").count() == 2
    x = {i: page.locator(f"g.node[data-id='{i}']").bounding_box()["x"] for i in sides}
    assert x[ids["raw"]] < x[ids["fraud"]] < x[ids["report"]]  # parents left, children right

    page.click(f"#lineage-svg g.node[data-id='{ids['report']}']")
    expect(page.locator("#artifact-name")).to_have_text("reports/weekly")
    assert ids["report"] in page.url
    page.wait_for_selector(f"#lineage-svg g.node.self[data-id='{ids['report']}']")
    page.click(f"#lineage-svg g.node[data-id='{ids['raw']}']")  # depth 3 reaches the grandparent
    expect(page.locator("#artifact-name")).to_have_text("data/raw")


def test_folder_lists_files_and_downloads_one(page: Any, site: dict[str, Any]) -> None:
    open_page(page, site, "#/a/data%2Fimages")
    page.wait_for_selector("#files a.file")
    assert page.locator("#files a.file").all_inner_texts() == ["cat.txt"]
    assert page.locator("#files a.dir").all_inner_texts() == ["sub/"]
    assert page.locator("#download").count() == 0  # a folder downloads file by file
    page.click("#files a.dir")
    page.wait_for_selector("#files a.file[data-path='sub/dog.bin']")
    assert re.search(r"#/a/data%2Fimages/sub$", page.url)
    with page.expect_download() as info:
        page.click("#files a.file[data-path='sub/dog.bin']")
    download = info.value
    assert download.suggested_filename == "dog.bin"
    assert pathlib.Path(download.path()).read_bytes() == b"\x00woof\xff"


def test_names_and_metadata_are_text_not_markup(page: Any, site: dict[str, Any]) -> None:
    open_page(page, site, "#/a/" + urllib.parse.quote(EVIL, safe=""))
    page.wait_for_selector("#user-metadata")
    assert page.inner_text("#artifact-name") == EVIL
    assert "<script>alert(2)</script>" in page.inner_text("#user-metadata")
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    page.click("li[data-prefix='zz/'] > .toggle")
    page.wait_for_selector("li.tree-name a")
    assert page.locator("#tree img").count() == 0
