"""A job's MLflow run page as a new user opens it, in headless Chromium: ``gradq serve`` with
its embedded MLflow UI, one job, the link gradq gives for it.

The "Model metrics" tab opens on the learning curves: its first sections are ``accuracy``
and ``loss``, both in the first screen at 1440×900 (the accuracy curves whole, the loss
curves from their titles down), and all four curves whole at 1920×1080. The same metrics
under the former flat names (a run tracked before the keys changed) put ``epoch_seconds``
and the ``final_*`` bars there instead, and no curve. The "Overview" tab shows the run's
description and its data set. Screenshots are kept as PNG files in the test's folder (and
copied to ``$GRADQ_SCREENSHOT_DIR`` when set); their paths are printed.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package: skipped
without them, failed in CI (``CI=true``), whose ``.ci/run`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradq_service import Service, free_port, running, service_env
from mlflow import MlflowClient
from mlflow.entities import Metric
from web_browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS, need_browser

from workers.tracking.names import legacy_key

pytestmark = pytest.mark.slow

JOB = {
    "name": "digits-page", "experiment": "page-tests", "dataset": "digits",
    "model": {"hidden": [64, 32], "activation": "relu"},
    "optimizer": {"lr": 0.1, "epochs": 20, "batch_size": 64},
    "regularization": {"early_stopping": {"enabled": False}},
}  # fmt: skip
CURVES = {  # (section, title) of each learning curve's chart: MLflow titles a chart by the
    "loss/train": ("loss", "train"),  # part of its key after the section
    "loss/val": ("loss", "val"),
    "accuracy/train": ("accuracy", "train"),
    "accuracy/val": ("accuracy", "val"),
}
FORMER = {k: ("Model metrics", legacy_key(k)) for k in CURVES}  # train_loss, … unprefixed
PAGE_TIMEOUT_S = 90.0
# What the page's layout is, read from its DOM: each section heading and each chart card
# (its section, its title, its box), and how far down the first screen shows the charts
# (the bottom of their scrolling panel, or of the window).
LAYOUT_JS = """
const HEADER = '[data-testid="experiment-view-compare-runs-section-header"]';
const name = (el) => el ? (el.innerText || '').split('\\n')[0].trim() : null;
const sectionOf = (card) => {
  for (let a = card.parentElement; a; a = a.parentElement) {
    const header = a.querySelector(HEADER);
    if (header) return header;
  }
  return null;
};
const box = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom}; };
let bottom = window.innerHeight;
const grid = document.querySelector('[data-testid="draggable-chart-cards-grid"]');
for (let a = grid && grid.parentElement; a; a = a.parentElement) {
  if (/(auto|scroll)/.test(getComputedStyle(a).overflowY) && a.scrollHeight > a.clientHeight) {
    bottom = Math.min(bottom, a.getBoundingClientRect().bottom);
    break;
  }
}
return {
  height: window.innerHeight, bottom: bottom,
  sections: [...document.querySelectorAll(HEADER)].map(h => ({name: name(h), ...box(h)})),
  cards: [...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"]')]
    .map(c => ({section: name(sectionOf(c)), title: name(c),
                plotted: !!c.querySelector('.js-plotly-plot'), ...box(c)})),
};
"""


@dataclass
class Layout:
    height: float
    bottom: float  # of the first screen's charts
    sections: list[dict[str, Any]]
    cards: list[dict[str, Any]]

    def card(self, section: str, title: str) -> dict[str, Any] | None:
        return next((c for c in self.cards if (c["section"], c["title"]) == (section, title)), None)

    def in_view(self, box: dict[str, Any] | None, *, whole: bool = True) -> bool:
        """The box lies in the first screen (``whole``), or at least its top 50 px do."""
        if box is None:
            return False
        end = box["bottom"] if whole else box["top"] + 50
        return bool(box["top"] >= 0 and end <= self.bottom <= self.height)

    def summary(self) -> str:
        return "; ".join(f"{c['section']}/{c['title']} {c['top']:.0f}-{c['bottom']:.0f}"
                         for c in self.cards[:12])  # fmt: skip


@pytest.fixture(scope="module")
def service(folder: Path) -> Iterator[Service]:
    """``gradq serve`` with its MLflow UI, on a free port of its own."""
    need_browser()
    env = service_env(folder, GRADQ_MLFLOW_UI_URL=f"http://127.0.0.1:{free_port()}")
    with running(["serve"], folder, env) as s:
        ui = s.env["GRADQ_MLFLOW_UI_URL"]
        deadline = time.monotonic() + 120
        while not _answers(f"{ui}/health"):
            assert time.monotonic() < deadline, f"the MLflow UI did not start: {s.log_tail()}"
            time.sleep(0.5)
        yield s


@pytest.fixture(scope="module")
def job(service: Service) -> dict[str, Any]:
    with service.client() as http:
        r = http.post("/v1/jobs", json=JOB)
        assert r.status_code == 201, r.text
    done = service.wait_job(r.json()["id"], ("succeeded", "failed", "cancelled"), timeout=300)
    assert done["status"] == "succeeded", done
    return dict(done)


@pytest.fixture(scope="module")
def former_run_link(service: Service, job: dict[str, Any]) -> str:
    """The job's metrics copied into a run of its experiment under their former flat names,
    as a job tracked before the keys changed has them; the link to that run's page."""
    client = MlflowClient(tracking_uri=service.env["GRADQ_MLFLOW_TRACKING_URI"])
    run = client.get_run(job["mlflow_run_id"])
    copy = client.create_run(run.info.experiment_id, run_name=f"{JOB['name']} (former names)")
    points = [
        Metric(legacy_key(key), m.value, m.timestamp, m.step)
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    ]
    for i in range(0, len(points), 1000):
        client.log_batch(copy.info.run_id, metrics=points[i : i + 1000])
    client.set_terminated(copy.info.run_id)
    return str(job["links"]["mlflow_run"]).replace(run.info.run_id, copy.info.run_id)


def test_the_run_page_opens_on_the_learning_curves(
    job: dict[str, Any], former_run_link: str, tmp_path: Path
) -> None:
    page = job["links"]["mlflow_run"]  # the link opens on the curves' tab
    assert page.endswith("/model-metrics"), page
    layout = open_page(page, (1440, 900), shot=tmp_path / "mlflow-run-page.png")
    assert [s["name"] for s in layout.sections[:2]] == ["accuracy", "loss"], layout.sections
    assert all(layout.in_view(s) for s in layout.sections[:2]), layout.sections
    for key in ("accuracy/train", "accuracy/val"):
        assert layout.in_view(layout.card(*CURVES[key])), (key, layout.summary())
    for key in ("loss/train", "loss/val"):  # the second row: title and the plot's top
        assert layout.in_view(layout.card(*CURVES[key]), whole=False), (key, layout.summary())

    wide = open_page(page, (1920, 1080), shot=tmp_path / "mlflow-run-page-1920.png")
    for key, place in CURVES.items():
        assert wide.in_view(wide.card(*place)), (key, wide.summary())

    former = open_page(former_run_link, (1440, 900),
                       shot=tmp_path / "mlflow-run-page-former-names.png")  # fmt: skip
    assert [s["name"] for s in former.sections] == ["Model metrics"], former.sections
    first = [c["title"] for c in former.cards if former.in_view(c)]
    assert first[0] == "epoch_seconds" and "final_epochs" in first, former.summary()
    for key, place in FORMER.items():  # the same check as above fails for these names
        assert not former.in_view(former.card(*place), whole=False), (key, former.summary())


def test_the_overview_has_the_description_and_the_data_set(
    service: Service, job: dict[str, Any], tmp_path: Path
) -> None:
    description = (
        f"gradq job {job['id']} on digits: MLP [64, 32] relu, cross_entropy, SGD lr 0.1 "
        "momentum 0.9, batch 64, 20 epochs"
    )
    client = MlflowClient(tracking_uri=service.env["GRADQ_MLFLOW_TRACKING_URI"])
    (trained_on,) = client.get_run(job["mlflow_run_id"]).inputs.dataset_inputs
    digest = trained_on.dataset.digest
    found = overview(job["links"]["mlflow_run"].removesuffix("/model-metrics"), description, "digits",
                     tmp_path / "mlflow-run-overview.png")  # fmt: skip
    assert found["description"] == {"text": description, "inView": True}, found
    assert found["datasets"]["inView"], found
    assert found["datasets"]["text"].split() == ["Datasets", "digits", "(" + digest + ")",
                                                 "Training"], found  # fmt: skip


# --- the browser --------------------------------------------------------------------------


def open_page(url: str, size: tuple[int, int], *, shot: Path) -> Layout:
    """The run page's layout in a new user's Chromium (a new profile) of viewport ``size``,
    once its charts are drawn and stay put; a screenshot of the first screen to ``shot``."""
    with chromium(size) as driver:
        driver.get(url)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        last: dict[str, Any] | None = None
        while True:
            now = driver.execute_script(LAYOUT_JS)
            drawn = now["cards"] and all(c["plotted"] for c in now["cards"][:4])
            if drawn and now == last:  # the same layout twice, a second apart
                break
            assert time.monotonic() < deadline, f"{url}: charts not drawn: {now}"
            last = now
            time.sleep(1.0)
        driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    return Layout(**now)


def overview(url: str, description: str, dataset: str, shot: Path) -> dict[str, Any]:
    """The overview tab, once it shows ``description`` and the "Datasets" box with
    ``dataset``: the text of each (the innermost element holding it) and whether it is in
    the first screen; a screenshot to ``shot``."""
    find = """
    const [description, dataset] = arguments;
    const innermost = (test) => [...document.querySelectorAll('body *')]
        .filter(el => test((el.innerText || '').trim())).pop();
    const seen = (el) => { if (!el) return null; const r = el.getBoundingClientRect();
        return {text: el.innerText.trim(), inView: r.top >= 0 && r.bottom <= innerHeight}; };
    return {description: seen(innermost(t => t === description)),
            datasets: seen(innermost(t => t.startsWith('Datasets') && t.includes(dataset + ' (')))};
    """
    with chromium((1440, 900)) as driver:
        driver.get(url)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while not all((found := driver.execute_script(find, description, dataset)).values()):
            assert time.monotonic() < deadline, f"{url}: {found}"
            time.sleep(1.0)
        time.sleep(1.0)  # let the page settle before the picture
        found = driver.execute_script(find, description, dataset)
        driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    return dict(found)


@contextlib.contextmanager
def chromium(size: tuple[int, int]) -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver, a fresh profile, its viewport (not its
    window) ``size``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="gradq-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    try:
        width, height = size
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1,
                                "mobile": False})  # fmt: skip
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(autouse=True)
def copy_out(tmp_path: Path) -> Iterator[None]:
    """After each test, its screenshots also to ``$GRADQ_SCREENSHOT_DIR`` (when set)."""
    yield
    target = os.environ.get("GRADQ_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            shutil.copy2(png, Path(target) / png.name)
            print(f"screenshot: {Path(target) / png.name}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
