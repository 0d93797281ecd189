"""The playground page at the Serve ingress's `/` (serve/playground.html), in a real browser.

The page check runs without Serve. The browser test starts one Serve app (two canned candidates,
one that always fails, URG from the trained checkpoint or the tiny preset, auth on), loads the page
in headless Chromium through selenium, asks a question and compares what the page shows with what
the API answers. It skips, with the reason, only where no Chromium or chromedriver is installed
(`apt-get install chromium chromium-driver`; .ci/run does it). Set PLAYGROUND_SCREENSHOT=path to
keep a screenshot of the answered page (docs/playground.png is one).
"""

import os
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PAGE = ROOT / "serve" / "playground.html"
KEY = "playground-key"
MODEL = "urg-ensemble"
QUESTION = "What is the capital of France?"
ANSWERED = {"canned-a": "The capital of France is Paris, on the Seine.",
            "canned-b": "Paris is the capital and the largest city of France."}
BROKEN, BROKEN_ERROR = "broken", "engine crashed"


class _Resources(HTMLParser):
    """Every URL the page would fetch (src, href) and every script that is not inline."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def test_the_page_fetches_nothing_from_elsewhere():
    html = PAGE.read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(html)
    assert all(url.startswith("data:") for url in parser.urls), parser.urls
    assert "@import" not in html and "url(" not in html  # no stylesheet or font loaded from CSS


# ---- in a browser, against one Serve app -------------------------------------------------------
def _browser() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or skip saying what is missing."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} on PATH: apt-get install chromium chromium-driver")
    return chromium, driver


@pytest.fixture(scope="module")
def base_url(serve_app):
    args = {"candidates": [{"name": "canned-a", "kind": "canned", "answers": [ANSWERED["canned-a"]]},
                           {"name": "canned-b", "kind": "canned", "answers": [ANSWERED["canned-b"]], "delay_s": 0.3},
                           {"name": BROKEN, "kind": "canned", "error": BROKEN_ERROR}],
            "urg": {"model": str(ROOT / "outputs/train/model"), "fallback_preset": "tiny", "max_new_tokens": 12,
                    "deployment": {"ray_actor_options": {"num_cpus": 0.2}}},
            "warmup_retry_s": 1,
            "ingress": {"ray_actor_options": {"num_cpus": 0.1,
                                              "runtime_env": {"env_vars": {"URG_SERVE_API_KEY": KEY}}}}}
    # The broken candidate never warms up: ready means the ranker and the others answered.
    return serve_app(args, "playground", ready=lambda reply: reply.json().get("waiting_for") == [BROKEN])


@pytest.fixture(scope="module")
def browser():
    chromium, driver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="urg-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _ask_and_wait(browser, timeout_s: float = 300) -> None:
    """Click Ask, then wait until the page says done or shows an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "ask").click()
    WebDriverWait(browser, timeout_s).until(
        lambda b: b.find_element(By.ID, "error").text or b.find_element(By.ID, "status").text.startswith("done"))


@pytest.mark.slow
def test_the_page_loads_without_the_key_and_shows_the_ensembles_answer(base_url, browser):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = httpx.get(f"{base_url}/", timeout=30)  # no key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{base_url}/v1/models", timeout=30).status_code == 401  # the API itself stays behind the key

    browser.get(f"{base_url}/")
    WebDriverWait(browser, 60).until(lambda b: "candidates" in b.find_element(By.ID, "health").text)
    pending = [tr.get_attribute("data-model") for tr in browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")]
    assert pending == ["canned-a", "canned-b", BROKEN]  # every candidate of the app, from /healthz

    question = browser.find_element(By.ID, "question")
    question.clear()
    question.send_keys(QUESTION)
    _ask_and_wait(browser)  # without the key: the API's 401, shown
    assert "401" in browser.find_element(By.ID, "error").text
    assert "required" in browser.find_element(By.ID, "key-row").get_attribute("class")

    browser.find_element(By.ID, "key").send_keys(KEY)
    _ask_and_wait(browser)
    assert browser.find_element(By.ID, "error").text == ""

    # The same question through the API, not streamed: the page must show this answer and this table.
    reply = httpx.post(f"{base_url}/v1/chat/completions", timeout=300, headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]}).json()
    fused = browser.find_element(By.ID, "fused").get_attribute("textContent")
    assert fused == reply["choices"][0]["message"]["content"] and fused.strip()

    rows = {tr.get_attribute("data-model"): tr for tr in browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")}
    assert sorted(rows) == sorted([*ANSWERED, BROKEN])
    expected_rank = {c["model"]: c["rank"] for c in reply["urg"]["candidates"]}
    assert sorted(expected_rank.values()) == list(range(1, len(ANSWERED) + 1))
    for model, text in ANSWERED.items():
        cells = {td.get_attribute("class").split()[-1]: td.get_attribute("textContent")
                 for td in rows[model].find_elements(By.TAG_NAME, "td")}
        assert int(cells["rank"]) == expected_rank[model], (model, cells)
        assert cells["answer"] == text and cells["latency"].endswith(" s") and cells["score"]
    assert "dropped" in rows[BROKEN].get_attribute("class")
    dropped = browser.find_element(By.ID, "dropped").text
    assert BROKEN in dropped and BROKEN_ERROR in dropped

    if os.environ.get("PLAYGROUND_SCREENSHOT"):
        browser.save_screenshot(os.environ["PLAYGROUND_SCREENSHOT"])
