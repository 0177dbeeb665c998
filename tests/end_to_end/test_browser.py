"""The chat page in a real headless Chromium: two users on two gateways chat through the hub.

Debian's Chromium (``/usr/bin/chromium``) is driven by Playwright for Python; Playwright's
own browser download is never used. Outside CI the test is skipped when Chromium is
missing; in CI (``CI=true``) that is a failure. The screenshot of both pages is kept as
``artifacts/browser-chat.png``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from devtools.demo import ALICE, BOB, Cluster, DemoUser
from tests.helpers import IN_CI
from tests.test_readme import the_block

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SCREENSHOT = ARTIFACTS / "browser-chat.png"
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
TIMEOUT_MS = 15_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Embedded Redis, one hub and two gateways as real processes on free ports."""
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium; skipped when missing, except in CI, where that fails."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium); the browser test needs it"
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


def open_chat(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 820, "height": 640})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    wait_connected(page)
    assert not errors, f"JavaScript errors on the chat page: {errors}"
    return page


def wait_connected(page: Page) -> None:
    expect(page.get_by_test_id("status")).to_have_attribute(
        "data-state", "connected", timeout=TIMEOUT_MS
    )
    expect(page.locator("body")).to_have_attribute("data-history", "loaded")


def message(page: Page, text: str) -> Locator:
    return page.locator("[data-testid=message]", has_text=text)


def send(page: Page, kind: str, to: int, text: str) -> None:
    page.get_by_test_id("kind").select_option(kind)
    page.get_by_test_id("to").fill(str(to))
    page.get_by_test_id("text").fill(text)
    page.get_by_test_id("send").click()


def join(page: Page, group: int) -> None:
    page.get_by_test_id("group-id").fill(str(group))
    page.get_by_test_id("join-group").click()
    expect(page.locator(f"[data-testid=group][data-group='{group}']")).to_have_attribute(
        "data-state", "joined"
    )


def save_side_by_side(browser: Browser, left: Page, right: Page) -> None:
    """One screenshot with both pages next to each other."""
    shots = [base64.b64encode(p.screenshot()).decode() for p in (left, right)]
    board = browser.new_page(viewport={"width": 1660, "height": 660})
    try:
        images = "".join(
            f'<img src="data:image/png;base64,{s}" style="margin:10px 5px;'
            'box-shadow:0 2px 8px #0003">'
            for s in shots
        )
        board.set_content(f'<body style="margin:0;background:#d1d5db;display:flex">{images}</body>')
        ARTIFACTS.mkdir(exist_ok=True)
        board.screenshot(path=str(SCREENSHOT))
    finally:
        board.close()


def test_two_users_on_two_gateways_chat_in_the_browser(browser: Browser, cluster: Cluster) -> None:
    """Alice (gw-1) and Bob (gw-2) chat privately and in a group; Bob's reload shows history."""
    # Also: delivery state, leaving a group, a type 99 error shown, acknowledgements.
    gw1, gw2 = cluster.gateways
    alice = open_chat(browser, cluster.page_url(gw1, ALICE))
    bob = open_chat(browser, cluster.page_url(gw2, BOB))
    expect(alice.get_by_test_id("me")).to_have_text("alice (user 1)")
    expect(alice.get_by_test_id("gateway")).to_have_text("gw-1")
    expect(bob.get_by_test_id("gateway")).to_have_text("gw-2")

    send(alice, "1", BOB.user_id, "Hi Bob, Alice here on gw-1")
    on_bob = message(bob, "Hi Bob, Alice here on gw-1")
    expect(on_bob).to_have_count(1)
    expect(on_bob).to_have_attribute("data-own", "false")
    expect(on_bob).to_have_attribute("data-from", "1")
    expect(on_bob.get_by_test_id("time")).to_have_text(re.compile(r"\d"))
    mine = message(alice, "Hi Bob, Alice here on gw-1")
    expect(mine).to_have_attribute("data-state", "acked")
    expect(mine).to_have_attribute("data-own", "true")
    expect(mine.get_by_test_id("delivery")).to_contain_text("delivered")

    send(bob, "1", ALICE.user_id, "Hello Alice, Bob on gw-2")
    expect(message(alice, "Hello Alice, Bob on gw-2")).to_have_count(1)
    expect(message(alice, "Hello Alice, Bob on gw-2")).to_have_attribute("data-own", "false")

    join(alice, 7)
    join(bob, 7)
    send(alice, "2", 7, "Hello group 7!")
    for page in (alice, bob):
        expect(message(page, "Hello group 7!")).to_have_count(1)
    expect(message(bob, "Hello group 7!")).to_have_attribute("data-type", "2")

    bob.get_by_test_id("group-id").fill("7")
    bob.get_by_test_id("leave-group").click()
    expect(bob.locator("[data-testid=group][data-group='7']")).to_have_count(0)
    send(alice, "2", 7, "after bob left")
    expect(message(alice, "after bob left")).to_have_attribute("data-state", "acked")
    send(alice, "1", BOB.user_id, "sent after the group message")  # same path, in order
    expect(message(bob, "sent after the group message")).to_have_count(1)
    expect(message(bob, "after bob left")).to_have_count(0)

    send(bob, "2", 8, "to a group I am not in")
    expect(bob.locator("[data-testid=error][data-code=not_member]")).to_have_count(1)
    expect(message(bob, "to a group I am not in")).to_have_attribute("data-state", "failed")

    # What bob displayed is acknowledged (type 11) ...
    expect(bob.locator("body")).to_have_attribute("data-acked-seq", re.compile(r"^\d+$"))
    # ... and still, a reload shows his history from the inbox, once each.
    bob.reload()
    wait_connected(bob)
    for text in ("Hi Bob, Alice here on gw-1", "Hello Alice, Bob on gw-2", "Hello group 7!"):
        expect(message(bob, text)).to_have_count(1)
    expect(message(bob, "Hello Alice, Bob on gw-2")).to_have_attribute("data-own", "true")
    expect(message(bob, "to a group I am not in")).to_have_count(0)

    save_side_by_side(browser, alice, bob)
    assert SCREENSHOT.stat().st_size > 10_000
    alice.close()
    bob.close()


def shown_ids(page: Page) -> list[str]:
    ids: list[str] = page.locator("[data-testid=message]").evaluate_all(
        "nodes => nodes.map(n => n.dataset.msgId)"
    )
    return ids


def test_page_reconnects_after_a_gateway_outage_without_duplicates(
    browser: Browser, cluster: Cluster
) -> None:
    """After a gateway outage the page reconnects, catches up once and sends what was typed."""
    # Bob's gateway goes down and comes back; what alice sent meanwhile shows once on his
    # page even though bob's other device, on gw-1, acknowledged it already.
    gw1, gw2 = cluster.gateways
    alice = open_chat(browser, cluster.page_url(gw1, ALICE))
    bob = open_chat(browser, cluster.page_url(gw2, BOB))
    bob_phone = open_chat(browser, cluster.page_url(gw1, BOB))
    send(alice, "1", BOB.user_id, "before the outage")
    expect(message(bob, "before the outage")).to_have_count(1)

    cluster.stop_gateway(gw2)
    try:
        expect(bob.get_by_test_id("status")).to_have_attribute("data-state", "reconnecting")
        send(alice, "1", BOB.user_id, "sent while gw-2 was down")
        expect(message(alice, "sent while gw-2 was down")).to_have_attribute("data-state", "acked")
        expect(message(bob_phone, "sent while gw-2 was down")).to_have_count(1)
        acked = bob_phone.locator("[data-testid=message]", has_text="sent while gw-2 was down")
        expect(bob_phone.locator("body")).to_have_attribute(
            "data-acked-seq", acked.get_attribute("data-seq") or "missing"
        )
        send(bob, "1", ALICE.user_id, "typed while offline")
        expect(message(bob, "typed while offline")).to_have_attribute("data-state", "pending")
    finally:
        cluster.start_gateway(gw2)

    expect(bob.get_by_test_id("status")).to_have_attribute(
        "data-state", "connected", timeout=30_000
    )
    expect(message(bob, "sent while gw-2 was down")).to_have_count(1)
    expect(message(bob, "typed while offline")).to_have_attribute("data-state", "acked")
    expect(message(alice, "typed while offline")).to_have_count(1)
    expect(message(bob, "before the outage")).to_have_count(1)
    expect(message(bob_phone, "typed while offline")).to_have_count(1)
    ids = shown_ids(bob)
    assert len(ids) == len(set(ids)), f"a message is shown twice: {ids}"
    for page in (alice, bob, bob_phone):
        page.close()


def test_page_explains_a_missing_or_expired_token(browser: Browser, cluster: Cluster) -> None:
    """Without a token, or with an expired one, the page says so instead of chatting."""
    gw1 = cluster.gateways[0]
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(gw1.http_url)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "error")
    expect(page.locator("[data-testid=error][data-code=no_token]")).to_have_count(1)
    expect(page.get_by_test_id("gateway")).to_have_text("gw-1")

    expired = cluster.token(ALICE, ttl=-60)
    page.goto(f"{gw1.http_url}?token={expired}")
    expect(page.locator("[data-testid=error][data-code=token_expired]")).to_have_count(1)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "error")
    page.close()


def test_readme_browser_example_runs_as_written(browser: Browser, cluster: Cluster) -> None:
    """The README's "Clients / Browser" block, as written, on a gateway's origin in Chromium."""
    # Alice runs it on gw-1; Bob's chat page on gw-2 shows her message once.
    gw1, gw2 = cluster.gateways
    bob = open_chat(browser, cluster.page_url(gw2, BOB))
    example = the_block("browser-example")
    assert example.lang == "html"
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Any page of the gateway's origin (no CSP on JSON) with ?token=: the block imports
    # /client.js from there and reads its token from the URL.
    page.goto(f"{gw1.http_url}/info?token={cluster.token(ALICE)}")
    page.set_content(f"<!doctype html><body>{example.body}</body>")
    expect(page.locator("body")).to_contain_text(re.compile(r"stored as \S+"))
    expect(page.locator("body")).to_contain_text("refused: not_member")
    expect(message(bob, "hi from the browser")).to_have_count(1)
    expect(message(bob, "hi from the browser")).to_have_attribute("data-from", "1")
    assert not errors, f"JavaScript errors in the README example: {errors}"
    page.close()
    bob.close()


@pytest.fixture(scope="module")
def large_cluster() -> Iterator[Cluster]:
    """As ``cluster``, with gateways that store a group of more than 2 members once."""
    with Cluster(gateway_args=("--large-group", "2")) as running:
        yield running


def test_a_reload_shows_a_large_groups_history_from_the_join(
    browser: Browser, large_cluster: Cluster
) -> None:
    """Bob's page in a large group (seqs ``g9:n``): what he was shown is acknowledged per
    stream, and a reload shows the group's history again (the page asks for each group it
    joined), each post once, in order, and nothing posted before bob joined."""
    gw1, gw2 = large_cluster.gateways
    carol, dave = DemoUser(3, "carol"), DemoUser(4, "dave")
    alice = open_chat(browser, large_cluster.page_url(gw1, ALICE))
    others = [open_chat(browser, large_cluster.page_url(gw2, u)) for u in (carol, dave)]
    for page in (alice, *others):
        join(page, 9)
    send(alice, "2", 9, "before bob joined")
    expect(message(alice, "before bob joined")).to_have_attribute("data-state", "acked")
    bob = open_chat(browser, large_cluster.page_url(gw2, BOB))
    join(bob, 9)
    texts = ["after bob joined 1", "after bob joined 2"]
    for text in texts:
        send(alice, "2", 9, text)
    for text, seq in zip(texts, ("g9:2", "g9:3"), strict=True):
        expect(message(bob, text)).to_have_count(1)
        expect(message(bob, text)).to_have_attribute("data-seq", seq)
    expect(message(bob, "before bob joined")).to_have_count(0)
    expect(bob.locator("body")).to_have_attribute("data-acked-group-seq", "g9:3")

    bob.reload()
    wait_connected(bob)
    for text in texts:
        expect(message(bob, text)).to_have_count(1)
    expect(message(bob, "before bob joined")).to_have_count(0)
    assert [m for m in shown_texts(bob) if m in texts] == texts
    send(alice, "2", 9, "after the reload")
    expect(message(bob, "after the reload")).to_have_attribute("data-seq", "g9:4")
    for page in (alice, bob, *others):
        page.close()


def shown_texts(page: Page) -> list[str]:
    texts: list[str] = page.locator("[data-testid=message] [data-testid=content]").evaluate_all(
        "nodes => nodes.map(n => n.textContent)"
    )
    return texts
