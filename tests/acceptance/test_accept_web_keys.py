"""gradq's web page with ``GRADQ_AUTH=keys`` (``gradq api``, one for the module), in headless
Chromium: the page asks for a key, refuses a wrong one, then shows that tenant's jobs only;
another tenant's job is not found; the key is kept in the tab's sessionStorage and never in
a URL (neither the page's nor any request's); no MLflow link; "Forget key" asks again.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package: skipped
without them, failed in CI (``CI=true``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradq_service import GRADQ, Service, running, service_env
from web_browser import chromium, need_browser, screenshot_folder, sent_requests, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(folder: Path) -> dict[str, Any]:
    need_browser()
    env = service_env(folder, GRADQ_AUTH="keys")

    def create(tenant: str) -> str:
        done = subprocess.run(
            [GRADQ, "keys", "create", "--tenant", tenant], env=env, cwd=folder,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    return {"env": env, "a": create("a"), "b": create("b")}


@pytest.fixture(scope="module")
def api(folder: Path, keys: dict[str, Any]) -> Iterator[Service]:
    auth = {"Authorization": f"Bearer {keys['a']}"}
    with running(["api"], folder, keys["env"], headers=auth) as service:
        yield service


def test_the_page_asks_for_a_key_and_shows_that_tenants_jobs(
    api: Service, keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    shots = screenshot_folder(tmp_path_factory)
    made = {}
    for tenant in ("a", "b"):
        with api.client(keys[tenant]) as http:
            r = http.post("/v1/jobs", json={"name": f"job-of-{tenant}", "dataset": "iris"})
            assert r.status_code == 201, r.text
            made[tenant] = r.json()["id"]
    with chromium((1280, 900)) as browser:
        browser.get(api.url + "/")
        field = wait_for(lambda: browser.find_elements("id", "api-key"), about="the key form")[0]
        assert not browser.find_elements("id", "jobs")
        browser.save_screenshot(str(shots / "keys.png"))
        field.send_keys("gq_not-a-key")
        browser.find_element("css selector", "#key-form button").click()
        refused = wait_for(lambda: browser.find_elements("css selector", "#key-form .errors"),
                           about="the refusal")[0]  # fmt: skip
        assert refused.text == "unknown or revoked API key"

        browser.find_element("id", "api-key").send_keys(keys["a"])
        browser.find_element("css selector", "#key-form button").click()
        ids = wait_for(lambda: browser.execute_script(  # read at once: the queue is redrawn
            "return [...document.querySelectorAll('#jobs tbody tr[data-id]')]"
            ".map(r => r.dataset.id);"), about="tenant a's jobs")  # fmt: skip
        assert ids == [made["a"]]
        shown = browser.execute_script("return document.getElementById('jobs').innerText")
        assert "job-of-a" in shown and "job-of-b" not in shown
        browser.save_screenshot(str(shots / "queue-tenant.png"))
        stored = browser.execute_script("return sessionStorage.getItem('gradq.key')")
        assert stored == keys["a"]
        assert browser.execute_script("return localStorage.length") == 0

        browser.get(f"{api.url}/#/job/{made['a']}")
        wait_for(lambda: browser.find_elements("css selector", "#job-name .status"),
                 about="a's job")  # fmt: skip
        assert not browser.find_elements("id", "mlflow-link")  # tenants read gradq's API only

        browser.get(f"{api.url}/#/job/{made['b']}")
        alert = wait_for(lambda: browser.execute_script(
            "const e = document.querySelector('main .errors'); return e && e.innerText;"),
            about="b's job refused")  # fmt: skip
        with api.client(keys["b"]) as http:  # what the API tells tenant a of it, shown
            assert http.get(f"/v1/jobs/{made['b']}").status_code == 200
        with api.client(keys["a"]) as http:
            refusal = http.get(f"/v1/jobs/{made['b']}")
        assert refusal.status_code == 404 and alert == refusal.json()["error"]["message"]

        sent = sent_requests(browser, api.url + "/")
        streams = [r for r in sent if r["url"].endswith(f"/v1/jobs/{made['a']}/events")
                   and r["headers"].get("Accept") == "text/event-stream"]  # fmt: skip
        assert streams and all(
            r["headers"].get("Authorization") == f"Bearer {keys['a']}" for r in streams
        )  # the live stream of a's job carries the key as a header
        urls = [browser.current_url, *(r["url"] for r in sent)]
        assert len(urls) > 5
        assert urls and not [u for u in urls if keys["a"] in u or not u.startswith(api.url)]

        browser.get(api.url + "/")
        wait_for(lambda: browser.find_elements("id", "forget"), about="the page")
        wait_for(lambda: browser.find_element("id", "forget").is_displayed(), about="forget")
        browser.find_element("id", "forget").click()
        wait_for(lambda: browser.find_elements("id", "api-key"), about="the key form again")
        assert browser.execute_script("return sessionStorage.getItem('gradq.key')") is None
