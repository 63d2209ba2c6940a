"""gradq's web page in headless Chromium against ``gradq serve`` (one for the module): submit
the example job from the page and open it once it ended (learning curves, gradient-check
table, status history, spec); watch another job's curve grow while it trains; cancel a job
from the queue; a bad spec's field errors and a YAML syntax error shown where they are; job
names made of markup shown as text; a sweep's page; the queue at a phone's width.

After every test, every request the page sent (Chromium's network log) went to the service's
own origin, none to MLflow or Ray, and the console holds no Content-Security-Policy refusal.
Screenshots (PNG) go to ``$GRADQ_SCREENSHOT_DIR`` or a temporary folder, printed.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package: skipped
without them, failed in CI (``CI=true``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from gradq_service import ROOT, Service, running, service_env
from web_browser import (
    chromium,
    need_browser,
    requests_made,
    screenshot_folder,
    viewport,
    wait_for,
)

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "digits.yaml"
# A job whose epochs take a while (batches of 4): its curve grows over several heartbeats.
SLOW_EPOCHS = 150  # ~6 s of training alone on one of these cores: the page redraws meanwhile
SLOW = f"""\
name: slow-digits
dataset: digits
model: {{hidden: [128, 128]}}
optimizer: {{lr: 0.01, epochs: {SLOW_EPOCHS}, batch_size: 1}}
regularization: {{early_stopping: {{enabled: false}}}}
"""
SWEEP = {
    "name": "iris-sweep", "base": {"dataset": "iris", "optimizer": {"epochs": 4}},
    "space": {"optimizer.lr": {"loguniform": [0.001, 0.5]},
              "model.hidden": {"choice": [[8], [16, 16]]}},
    "search": {"method": "random", "trials": 6, "parallel": 3, "seed": 0},
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "early_stopping": {"kind": "asha", "min_epochs": 1, "reduction_factor": 2},
}  # fmt: skip
POINTS_JS = """
const c = document.getElementById(arguments[0]);
const chart = c && window.Chart && Chart.getChart(c);
return chart ? chart.data.datasets.map(d => d.data.length) : null;
"""


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[Service]:
    need_browser()
    env = service_env(folder, GRADQ_UNSATISFIABLE="wait")  # a job too large waits, queued
    with running(["serve", "--no-mlflow-ui"], folder, env) as s:
        yield s


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def browser(service: Service) -> Iterator[Any]:
    with chromium((1280, 900)) as driver:
        yield driver


@pytest.fixture(autouse=True)
def only_gradq(service: Service, browser: Any) -> Iterator[None]:
    """After each test: the page asked gradq's origin only, and broke no CSP rule."""
    yield
    origin = service.url + "/"
    made = requests_made(browser, origin)
    elsewhere = [u for u in made if not u.startswith((origin, "data:", "blob:"))]
    assert not elsewhere, elsewhere
    refused = [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not refused, refused


def open_page(browser: Any, service: Service, hash_: str) -> None:
    browser.get(f"{service.url}/#{hash_}")
    wait_for(lambda: browser.execute_script("return !!window.Chart && !!window.jsyaml"),
             about="the page's scripts")  # fmt: skip


def texts(browser: Any, css: str) -> list[str]:
    """The text of each element ``css`` selects, read at once (the page redraws parts)."""
    return list(browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);", css))  # fmt: skip


def text_of(browser: Any, css: str) -> str:
    found = texts(browser, css)
    return found[0] if found else ""


def job_status(browser: Any) -> str:
    return text_of(browser, "#job-name .status")


def job_id_of(browser: Any) -> str | None:
    found = re.fullmatch(r".*#/job/([0-9a-f-]+)", browser.current_url)
    return found.group(1) if found else None


def test_the_page_has_a_strict_policy_and_relative_urls(service: Service) -> None:
    page = httpx.get(service.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                 "frame-ancestors 'none'"):  # fmt: skip
        assert rule in policy, policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    for name in re.findall(r'(?:src|href)="([^"#]+)"', page.text):
        assert not name.startswith(("/", "http")), name  # relative: a path prefix works
        if not name.startswith("data:"):
            assert httpx.get(f"{service.url}/{name}").status_code == 200, name
    app = httpx.get(service.url + "/web/app.js").text
    assert "innerHTML" not in app and "fetch('/" not in app and "`/v1" not in app


def test_submit_the_example_job_and_open_it_once_ended(
    service: Service, browser: Any, shots: Path
) -> None:
    open_page(browser, service, "/submit")
    browser.find_element("id", "spec-file").send_keys(str(EXAMPLE))
    wait_for(lambda: "digits-mlp" in browser.find_element("id", "spec-text").get_attribute("value"),
             about="the uploaded file in the text box")  # fmt: skip
    browser.save_screenshot(str(shots / "submit.png"))
    browser.find_element("id", "spec-submit").click()
    job_id = wait_for(lambda: job_id_of(browser), about="the job's page")
    wait_for(lambda: job_status(browser) == "succeeded", timeout=240, about="the job's end")
    with service.client() as http:
        job = http.get(f"/v1/jobs/{job_id}").json()
        listing = http.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]
    assert job["name"] == "digits-mlp" and job["spec"]["optimizer"]["epochs"] == 50
    epochs = job["result"]["epochs"]
    wait_for(lambda: browser.execute_script(POINTS_JS, "chart-loss") == [epochs, epochs],
             about=f"{epochs} epochs of train and val loss")  # fmt: skip
    assert browser.execute_script(POINTS_JS, "chart-accuracy") == [epochs, epochs]
    layers = len(job["spec"]["model"]["hidden"]) + 1  # and the output layer
    assert browser.execute_script(POINTS_JS, "chart-dead_fraction") == [epochs] * layers

    reports = [a for a in listing if a["path"].startswith("gradcheck/")]
    tensors = 2 * layers  # W and b of every layer
    cells = wait_for(lambda: browser.execute_script(
        "return [...document.querySelectorAll('#gradcheck-table tbody tr')]"
        ".map(r => [...r.cells].map(c => c.innerText));"), about="the gradient-check table")  # fmt: skip
    assert reports and len(cells) == len(reports) * tensors
    assert [c[1] for c in cells[:tensors]] == [
        f"{w}{i}" for i in range(1, layers + 1) for w in "Wb"
    ]
    assert all(c[-1] == "passed" for c in cells)

    history = texts(browser, "#history tbody tr")
    assert [h.split()[-1] for h in history][:1] == ["submitted"], history
    assert "claimed by" in history[1] and "succeeded" in history[-1], history
    spec_text = browser.find_element("id", "spec-yaml").text
    assert yaml.safe_load(spec_text) == job["spec"]
    link = browser.find_elements("id", "mlflow-link")  # no keys: everyone may see MLflow
    assert link and link[0].get_attribute("href") == job["links"]["mlflow_run"]
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shots / "job.png"))
    shown = wait_for(lambda: texts(browser, "#artifact-table tbody td.name"), about="its files")
    assert shown == [a["path"] for a in listing]  # through gradq's API
    browser.execute_script("document.getElementById('gradchecks').scrollIntoView()")
    browser.save_screenshot(str(shots / "job-gradient-checks.png"))


def test_the_learning_curve_grows_while_the_job_trains(service: Service, browser: Any) -> None:
    open_page(browser, service, "/submit")
    browser.find_element("id", "spec-text").send_keys(SLOW)
    browser.find_element("id", "spec-submit").click()
    wait_for(lambda: job_id_of(browser), about="the job's page")
    seen: list[int] = []  # the loss curve's points each time the page said "running"

    def ended() -> bool:
        status = job_status(browser)
        points = browser.execute_script(POINTS_JS, "chart-loss")
        if status == "running" and points:
            seen.append(points[0])
        return status in ("succeeded", "failed", "cancelled")

    wait_for(ended, timeout=240, step=0.1, about="the job's end")
    assert job_status(browser) == "succeeded"
    partial = sorted({n for n in seen if n < SLOW_EPOCHS})
    assert len(partial) >= 2, seen  # drawn in steps while it trained
    assert seen == sorted(seen), seen  # never shrinking
    wait_for(lambda: browser.execute_script(POINTS_JS, "chart-loss") == [SLOW_EPOCHS] * 2,
             about=f"all {SLOW_EPOCHS} epochs once it ended")  # fmt: skip


def test_cancel_a_job_from_the_queue(service: Service, browser: Any, shots: Path) -> None:
    with service.client() as http:
        waits = http.post("/v1/jobs", json={"name": "to-cancel", "dataset": "iris",
                                            "resources": {"cpus": 64}})  # fmt: skip
        assert waits.status_code == 201, waits.text
        job_id = waits.json()["id"]
        reason = wait_for(lambda: (r := http.get(f"/v1/jobs/{job_id}").json()["pending_reason"])
                          and r.startswith("no node") and r, about="the dispatcher's reason")  # fmt: skip
    open_page(browser, service, "/")
    row = f'#jobs tr[data-id="{job_id}"]'
    where = wait_for(lambda: reason in text_of(browser, f"{row} td.where") and text_of(
        browser, f"{row} td.where"), about="its position and why it waits")  # fmt: skip
    assert where.startswith("position 1 in the queue"), where
    label = wait_for(lambda: browser.execute_script(  # the queue is redrawn every 3 s
        "const b = document.querySelector(arguments[0]); return b && b.getAttribute('aria-label');",
        f"{row} button.danger"), about="its cancel button")  # fmt: skip
    assert label == "Cancel job to-cancel"
    browser.save_screenshot(str(shots / "queue.png"))
    browser.execute_script("document.querySelector(arguments[0]).click()", f"{row} button.danger")
    wait_for(lambda: browser.find_elements("css selector", f'{row}[data-status="cancelled"]'),
             timeout=60, about="the row cancelled")  # fmt: skip
    assert service.wait_job(job_id, ("cancelled",), timeout=30)["status"] == "cancelled"


def test_field_errors_and_yaml_errors_are_shown_where_they_are(
    service: Service, browser: Any, shots: Path
) -> None:
    open_page(browser, service, "/submit")
    box = browser.find_element("id", "spec-text")
    box.send_keys("name: bad\ndataset: iris\nmodel:\n  hidden: [8, 0]\noptimizer:\n  lr: -1\n")
    browser.find_element("id", "spec-submit").click()
    items = wait_for(lambda: browser.find_elements("css selector", "#spec-errors li"),
                     about="the refusal's problems")  # fmt: skip
    fields = {i.get_attribute("data-field"): i.text for i in items}
    assert set(fields) == {"model.hidden[1]", "optimizer.lr"}, fields
    assert fields["optimizer.lr"].endswith("line 6") and fields["model.hidden[1]"].endswith(
        "line 4"
    )
    assert box.get_attribute("aria-invalid") == "true"
    browser.find_element(
        "css selector", '#spec-errors li[data-field="optimizer.lr"] button'
    ).click()
    selected = browser.execute_script(
        "const t = document.getElementById('spec-text');"
        "return t.value.slice(t.selectionStart, t.selectionEnd);"
    )
    assert selected == "  lr: -1"
    browser.save_screenshot(str(shots / "submit-errors.png"))

    box.clear()
    box.send_keys("dataset: {name: iris\noptimizer: {lr: 0.1}\n")
    browser.find_element("id", "spec-submit").click()
    alert = wait_for(lambda: text_of(browser, "#spec-errors .errors"), about="the YAML error")
    assert alert.startswith("The text is not valid YAML") and "line 2" in alert, alert
    assert job_id_of(browser) is None


def test_names_made_of_markup_are_shown_as_text(service: Service, browser: Any) -> None:
    names = ["<script>alert(1)</script>", '<img src=x onerror="document.title=1">']
    with service.client() as http:
        ids = [
            http.post("/v1/jobs", json={"name": n, "dataset": "iris",
                                        "optimizer": {"epochs": 2}}).json()["id"]
            for n in names
        ]  # fmt: skip
    open_page(browser, service, "/")
    for job_id, name in zip(ids, names, strict=True):
        link = wait_for(lambda i=job_id: texts(browser, f'#jobs tr[data-id="{i}"] td.name a'),
                        about=name)  # fmt: skip
        assert link == [name]
    assert browser.execute_script("return document.querySelectorAll('script').length") == 3
    assert not browser.find_elements("css selector", "#jobs img")
    assert browser.title == "gradq"
    open_page(browser, service, f"/job/{ids[0]}")
    wait_for(lambda: job_status(browser), about="the job's page")
    assert text_of(browser, "#job-name").startswith(names[0])
    assert browser.execute_script("return document.querySelectorAll('script').length") == 3


def test_a_sweep_page(service: Service, browser: Any, shots: Path) -> None:
    open_page(browser, service, "/submit")  # a sweep's YAML, told from a job's by its keys
    browser.find_element("id", "spec-text").send_keys(yaml.safe_dump(SWEEP, sort_keys=False))
    browser.find_element("id", "spec-submit").click()
    sweep_id = wait_for(lambda: (m := re.fullmatch(r".*#/sweep/([0-9a-f-]+)", browser.current_url))
                        and m.group(1), about="the sweep's page")  # fmt: skip
    with service.client() as http:
        assert http.get(f"/v1/sweeps/{sweep_id}").json()["spec"]["space"] == SWEEP["space"]
        wait_for(lambda: text_of(browser, "#sweep-name .status") == "succeeded", timeout=300,
                 step=1.0, about="the sweep's end")  # fmt: skip
        sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
        trials = http.get(f"/v1/sweeps/{sweep_id}/trials").json()["items"]
    ended = [t for t in trials if t["objective"] is not None]
    pruned = [t for t in ended if t["status"] == "pruned"]
    wait_for(lambda: len(browser.find_elements("css selector", "#trials tbody tr")) == len(trials),
             about="every trial in the table")  # fmt: skip
    marked = browser.find_elements("css selector", '#trials tr[data-status="pruned"] .status')
    assert [m.text for m in marked] == ["pruned"] * len(pruned)
    assert f"trial {sweep['best']['trial']}" in text_of(browser, "#sweep-facts")
    for i, _ in enumerate(SWEEP["space"]):  # a scatter per parameter: a series per status
        points = browser.execute_script(
            "const c = Chart.getChart(document.getElementById(arguments[0]));"
            "return Object.fromEntries(c.data.datasets.map(d => [d.label, d.data.length]));",
            f"scatter-{i}",
        )
        by_status = {s: sum(t["status"] == s for t in ended) for s in {t["status"] for t in ended}}
        assert points == by_status, (points, by_status)
    lines = browser.execute_script(
        "const c = Chart.getChart(document.getElementById('parallel'));"
        "return c.data.datasets.map(d => [d.data.length, d.borderDash.length > 0]);"
    )
    axes = len(SWEEP["space"]) + 1
    assert sorted(lines) == sorted([axes, t["status"] == "pruned"] for t in ended)
    browser.save_screenshot(str(shots / "sweep.png"))
    browser.execute_script("document.getElementById('parallel').scrollIntoView()")
    browser.save_screenshot(str(shots / "sweep-parallel.png"))


def test_the_queue_at_a_phones_width(service: Service, browser: Any, shots: Path) -> None:
    viewport(browser, (390, 844))
    try:
        for where in ("/", "/submit"):
            open_page(browser, service, where)
            wait_for(lambda: browser.find_elements("css selector", "#jobs tbody tr, #spec-text"),
                     about=where)  # fmt: skip
            width = browser.execute_script("return document.documentElement.scrollWidth")
            assert width <= 390, (where, width)  # no sideways scrolling of the page
        open_page(browser, service, "/")
        wait_for(lambda: browser.find_elements("css selector", "#jobs tbody tr td.name"),
                 about="the queue")  # fmt: skip
        browser.save_screenshot(str(shots / "queue-phone.png"))
    finally:
        viewport(browser, (1280, 900))


class PrefixProxy(ThreadingHTTPServer):
    """A reverse proxy on a free port of 127.0.0.1 that serves ``target`` under ``/gradq/``
    (the prefix stripped, the client's Host passed on), streaming each answer as it comes."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        self.target = target
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: PrefixProxy

    def log_message(self, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        if not self.path.startswith("/gradq/"):
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        skip = {"connection", "keep-alive", "transfer-encoding", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        url = self.server.target + self.path.removeprefix("/gradq")
        with httpx.stream(self.command, url, headers=headers, content=body, timeout=60) as r:
            self.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in skip:
                    self.send_header(k, v)
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in r.iter_raw():
                self.wfile.write(chunk)
                self.wfile.flush()

    do_GET = do_POST = _forward


def test_the_page_works_behind_a_path_prefix(service: Service, browser: Any) -> None:
    proxy = PrefixProxy(service.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{proxy.server_address[1]}/gradq/"
    try:
        browser.get(base + "#/submit")
        wait_for(lambda: browser.find_elements("id", "spec-text"), about="the submit form")
        browser.find_element("id", "spec-text").send_keys("name: via-proxy\ndataset: iris\n")
        browser.find_element("id", "spec-submit").click()
        job_id = wait_for(lambda: job_id_of(browser), about="the job's page")
        wait_for(lambda: texts(browser, "#history tbody tr"), about="its status history")
        browser.get(base)
        names = wait_for(lambda: texts(browser, f'#jobs tr[data-id="{job_id}"] td.name a'),
                         about="the queue")  # fmt: skip
        assert names == ["via-proxy"]
        made = requests_made(browser, base)
        assert made and all(u.startswith(base) for u in made), made
    finally:
        proxy.shutdown()
        proxy.server_close()
