"""Drives the status page in a real headless Chromium, as an operator would, for
tests/status_page.rs. Prints one JSON object of what it saw; the Rust test judges it.

usage: drive.py ADMIN_URL TOKEN OUT_DIR EXPECT_JSON

EXPECT_JSON: {"nodes": [...], "key": "...", "rule": "...", "override": {"rule","value","limit"},
              "ban": {"rule","value","shown"}, "hostile": "...", "reset": "<a blocked key>",
              "other": {"proxy": "http://...", "admin": "http://..."}}   (another node)
         or {"locked": true}: only what a node that wants a token for every read shows
("shown": the key as /metrics shows it, digested; the page must act on its clear value)

Each wait polls the page (WebDriverWait) until what it looks for shows, up to 20 s; a wait
that runs out is reported, not raised, so the test can say which one.
"""

import base64
import json
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from selenium import webdriver
from selenium.common.exceptions import (NoAlertPresentException, StaleElementReferenceException,
                                        TimeoutException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

admin, token, out_dir, expect = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--no-first-run", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--window-size=1440,1000", "--force-color-profile=srgb"):
    opts.add_argument(arg)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
driver.set_page_load_timeout(20)

seen = {"waits": {}, "console": [], "requests": [], "alerts": 0}


def wait(name, predicate, timeout=20):
    start = time.monotonic()
    try:
        # The page redraws its tables on every refresh, so an element found a moment ago
        # may be gone: that is a miss of this poll, not a failure.
        WebDriverWait(driver, timeout, poll_frequency=0.1,
                      ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate())
        seen["waits"][name] = round(time.monotonic() - start, 2)
    except TimeoutException:
        seen["waits"][name] = None


def text(section):
    return driver.execute_script(f"return document.querySelector('#{section} tbody').innerText")


def visible(css):
    elems = driver.find_elements(By.CSS_SELECTOR, css)
    return bool(elems) and elems[0].is_displayed()


def shot(path):
    """The whole page, not only the window (Chromium's DevTools capture), from its top."""
    driver.execute_script("window.scrollTo(0, 0)")
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    with open(path, "wb") as f:
        f.write(base64.b64decode(png["data"]))


def alert_open():
    try:
        driver.switch_to.alert
        return True
    except NoAlertPresentException:
        return False


def http(url, headers):
    """One GET from outside the browser: (status, body)."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]


class Done(Exception):
    """The drive ended early, as asked."""


def reads_of(path):
    """How many times the page has fetched `path` so far (the browser's resource timing)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === arguments[0]).length", path)


def locked():
    """A node that wants a token for reads and /metrics: the page asks for it, and sends
    nothing the node would refuse."""
    wait("read_banner", lambda: visible("#read-banner"))
    wait("no_rates_message", lambda: "own token" in text("keys"))
    wait("health_read", lambda: reads_of("/health") >= 2)
    seen["api_reads"] = sum(reads_of(p) for p in ("/api/limits", "/api/nodes", "/api/counters", "/metrics"))


try:
    start = time.monotonic()
    driver.get(admin + "/")
    seen["loaded_s"] = round(time.monotonic() - start, 2)
    # Every read of the page stays countable: the page never clears its resource timing
    # entries, and the browser keeps only 250 of them by default.
    driver.execute_script("performance.setResourceTimingBufferSize(100000)")
    # The page's reads in flight, counted from when each is sent (resource timing records a
    # read only once it has ended). Reads sent before this are not counted; they are long
    # over by the time the count is looked at.
    driver.execute_script("""
        const send = window.fetch;
        window.__pendingReads = 0;
        window.fetch = (...args) => {
            window.__pendingReads++;
            return send.apply(window, args).finally(() => { window.__pendingReads--; });
        };""")
    seen["title"] = driver.title
    if expect.get("locked"):
        locked()
        raise Done

    # Live data: the nodes, the key being refused (a rate needs two polls), its rule.
    wait("nodes", lambda: all(n in text("nodes") for n in expect["nodes"]))
    wait("health", lambda: "healthy" in driver.find_element(By.ID, "health").text)
    wait("hammering_key", lambda: expect["key"] in text("keys"))
    wait("rule_refusing", lambda: driver.execute_script(
        "return [...document.querySelectorAll('#rules tbody tr')].some((r) =>"
        " r.cells[0].innerText.startsWith(arguments[0]) && r.cells[4].classList.contains('bad'))",
        expect["rule"]))
    wait("blocked", lambda: expect["key"] in text("blocks"))
    wait("chart", lambda: driver.execute_script(
        "const p = document.querySelector('#chart path.refused'); return p != null && p.getAttribute('d').length > 20"))
    seen["tiles"] = {t: driver.find_element(By.ID, t).text
                     for t in ("t-requests", "t-refused", "t-share", "t-nodes", "t-counters", "t-bans")}
    seen["sections"] = {s: text(s) for s in ("nodes", "keys", "rules", "blocks", "counters")}
    shot(f"{out_dir}/status-page.png")

    # A change from the page: set a limit. The node has a token, so the page asks for it
    # before sending anything.
    o = expect["override"]
    driver.find_element(By.ID, "override-new").click()
    wait("override_dialog", lambda: visible("#change-dialog"))
    Select(driver.find_element(By.ID, "change-rule")).select_by_value(o["rule"])
    driver.find_element(By.ID, "change-value").send_keys(o["value"])
    amount = driver.find_element(By.ID, "change-amount")
    amount.clear()
    amount.send_keys(str(o["limit"]))
    driver.find_element(By.ID, "change-submit").click()
    wait("token_asked", lambda: visible("#token-dialog"))
    seen["token_why"] = driver.find_element(By.ID, "token-why").text
    driver.find_element(By.ID, "token-input").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
    wait("override_listed", lambda: o["value"] in text("overrides"))
    wait("override_audited", lambda: "override.put" in text("audit"))

    # Signed in, keys show in clear, as text: a hostile value stays text.
    wait("hostile_as_text", lambda: expect["hostile"] in text("counters") + text("keys"))

    # Ban the hammering key from its row; no second token prompt.
    b = expect["ban"]

    def click_ban():
        row = next((r for r in driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr")
                    if r.find_element(By.CSS_SELECTOR, "td.key").get_attribute("title") == b["shown"]), None)
        if row is None:
            return False
        row.find_element(By.XPATH, ".//button[text()='Ban…']").click()
        return visible("#change-dialog")
    wait("ban_dialog", click_ban)
    seen["ban_prefilled"] = {
        "rule": Select(driver.find_element(By.ID, "change-rule")).first_selected_option.get_attribute("value"),
        "value": driver.find_element(By.ID, "change-value").get_attribute("value"),
    }
    driver.find_element(By.ID, "change-submit").click()
    wait("ban_listed", lambda: b["value"] in text("bans"))
    seen["token_asked_again"] = visible("#token-dialog")
    seen["sections_after"] = {s: text(s) for s in ("overrides", "bans", "audit")}
    shot(f"{out_dir}/status-page-after-changes.png")

    # Both changes hold on the other node, asked there directly; it takes them up within
    # its sync interval (250 ms), so each is polled for, up to the wait's bound.
    other = expect["other"]
    on_other = {}

    def held(name, url, headers, check):
        on_other[name] = http(url, headers)
        return check(on_other[name])
    wait("banned_on_other", lambda: held(
        "banned", f"{other['proxy']}/v1/chat", {"X-Api-Key": b["value"]},
        lambda r: r[0] == 429 and '"banned":true' in r[1]))
    wait("override_on_other", lambda: held(
        "overrides", f"{other['admin']}/api/overrides", {"Authorization": f"Bearer {token}"},
        lambda r: o["value"] in r[1]))
    seen["on_other_node"] = on_other

    # The other changes the page offers: reset a blocked counter, lift the ban, remove the
    # limit. Each shows in the audit log and in its table.
    def click_in(section, row_text, button):
        for r in driver.find_elements(By.CSS_SELECTOR, f"#{section} tbody tr"):
            if row_text in r.text:
                r.find_element(By.XPATH, f".//button[text()='{button}']").click()
                return True
        return False
    wait("reset_clicked", lambda: click_in("blocks", expect["reset"], "Reset"))
    wait("reset_audited", lambda: "counter.reset" in text("audit"))
    wait("lift_clicked", lambda: click_in("bans", b["value"], "Lift"))
    wait("ban_lifted", lambda: "no ban in force" in text("bans"))
    wait("remove_clicked", lambda: click_in("overrides", o["value"], "Remove"))
    wait("override_removed", lambda: "no override set at runtime" in text("overrides"))
    wait("all_audited", lambda: "override.delete" in text("audit") and "ban.delete" in text("audit"))

    # The token lives in this tab's session storage only.
    seen["storage"] = driver.execute_script(
        "return {session: sessionStorage.length, local: localStorage.length,"
        " token: sessionStorage.getItem('ratelimiter.admin-token')}")

    # Paused from the menu: no read for three seconds (a window to observe an absence in);
    # every 2 s again: reads resume.
    # Choosing "paused" ends the timer, but a refresh may be under way (one already running,
    # or the one the change starts); it is the last one. The window starts once it is over:
    # no read is pending, the latest refresh has made its last read (/api/blocks) after its
    # first (/health), and the counts stay so for a second.
    Select(driver.find_element(By.ID, "interval")).select_by_value("0")
    settled = {"since": None, "counts": None}

    def refresh_over():
        pending, counts, first, last = driver.execute_script(
            "const at = (p) => performance.getEntriesByType('resource')"
            ".filter((e) => new URL(e.name).pathname === p).map((e) => e.startTime);"
            "const [health, blocks, nodes] = ['/health', '/api/blocks', '/api/nodes'].map(at);"
            "return [window.__pendingReads, [health.length, blocks.length, nodes.length],"
            " Math.max(-1, ...health), Math.max(-1, ...blocks)]")
        now = time.monotonic()
        if pending or first > last:
            settled.update(since=None, counts=None)
            return False
        if counts != settled["counts"]:
            settled.update(since=now, counts=counts)
            return False
        return now - settled["since"] >= 1
    wait("refresh_over", refresh_over, timeout=15)
    paused_at = reads_of("/api/nodes")
    time.sleep(3)
    seen["reads_while_paused"] = reads_of("/api/nodes") - paused_at
    Select(driver.find_element(By.ID, "interval")).select_by_value("2000")
    resumed_at = reads_of("/api/nodes")
    wait("resumed", lambda: reads_of("/api/nodes") >= resumed_at + 2)

    # The dark theme, as a system set to dark asks for it.
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    wait("dark_theme", lambda: driver.execute_script(
        "return getComputedStyle(document.body).backgroundColor") == "rgb(14, 18, 23)")
    shot(f"{out_dir}/status-page-dark.png")

    # A phone (390 x 844 CSS pixels, touch, overlay scroll bars): the page fits its width
    # (tables scroll inside their cards).
    phone = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", phone)
    wait("phone_size", lambda: driver.execute_script("return window.innerWidth") == 390)
    seen["phone"] = driver.execute_script(
        "return {inner: window.innerWidth, scroll: document.documentElement.scrollWidth}")
    # The whole page at the phone's width: a screen as tall as the page.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**phone, "height": height})
    driver.execute_script("window.scrollTo(0, 0)")
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    with open(f"{out_dir}/status-page-phone.png", "wb") as f:
        f.write(base64.b64decode(png["data"]))
    seen["alerts"] = int(alert_open())
except Done:
    pass
except Exception as e:  # reported to the test, which fails naming it
    seen["error"] = repr(e)
finally:
    for entry in driver.get_log("browser"):
        seen["console"].append({"level": entry["level"], "message": entry["message"]})
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            seen["requests"].append(msg["params"]["request"]["url"])
    driver.quit()

origin = urlparse(admin)
seen["other_hosts"] = sorted({u for u in seen["requests"]
                              if not u.startswith("data:") and urlparse(u).netloc != origin.netloc})
print(json.dumps(seen))
