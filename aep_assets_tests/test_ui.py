"""The Dagster UI in a real browser, over the state `make run` leaves (small).

A fresh AEP_ASSETS_HOME and DAGSTER_HOME (the project's dagster.yaml copied in, as `make` does) get
the whole graph materialized with `aep_assets.main.run_all`; then `dagster-webserver` and
`dagster-daemon` run over them, as `make ui` (`dagster dev`) does. Playwright drives the system's
headless Chromium (Debian's /usr/bin/chromium, which `make test` installs with scripts/install_chromium;
Playwright never downloads a browser of its own here) and checks that the global asset graph shows
all 13 assets and that an asset page shows its plots; a materialization is launched with the same
GraphQL mutation the UI's Materialize button sends, and must succeed.

Why the daemon: the project's dagster.yaml sets `concurrency.runs`, so the instance uses the
QueuedRunCoordinator: a run launched from the UI waits in the queue until `dagster-daemon`
dequeues it. Starting the daemon keeps the instance exactly as `make ui` has it (queue, run limits,
pools) instead of a test-only DefaultRunCoordinator.

The graph screenshot goes to $AEP_ASSETS_UI_SCREENSHOT when set (refresh the README's with
`AEP_ASSETS_UI_SCREENSHOT=docs/ui-graph.png uv run --frozen pytest aep_assets_tests/test_ui.py`),
else to pytest's temp folder, so `make test` leaves the working tree clean.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from aep_assets_tests.factories import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ASSET_KEYS = (
    "synthetic_profiles", "synthetic_experience_events", "aep_profiles", "aep_experience_events", "eda_summary",
    "training_features", "training_export", "propensity_model", "scoring_features", "propensity_scores",
    "aep_propensity_scores", "propensity_audiences", "audience_activations",
)
RUN_CONFIG = {
    "load_synthetic_data_job": {"ops": {"synthetic_data": {"config": {"profiles": 2000, "batches": 2}}}},
}
# Playwright's launch already runs it headless without sandbox, first-run, component updates or background
# networking; no machine here has a GPU, so none is probed for.
CHROMIUM_FLAGS = ["--disable-gpu"]
# Wide enough that the fitted graph is drawn above Dagster's "minimal" zoom (full names, status rows).
GRAPH_VIEWPORT = {"width": 3200, "height": 1400}
PAGE_VIEWPORT = {"width": 1600, "height": 1000}
WAIT_MS = 30_000

pytestmark = pytest.mark.slow


def chromium_binary() -> str | None:
    for name in (os.environ.get("AEP_ASSETS_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def stop_groups(*processes: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM to the process groups we started (start_new_session), together; SIGKILL what lingers."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_for_server(url: str, webserver: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until the webserver answers /server_info; fails with its log if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        assert webserver.poll() is None, f"dagster-webserver exited:\n{tail(log)}"
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"no /server_info in {timeout:.0f} s:\n{tail(log)}"
        time.sleep(0.5)


@contextmanager
def page_text_on_timeout(page: Page) -> Iterator[None]:
    """A Playwright wait that times out fails with what the page showed, to tell a slow page from a wrong one."""
    try:
        yield
    except PlaywrightTimeout as error:
        raise AssertionError(f"{error.message}\npage text: {page.inner_text('body')[:1500]}") from error


class UI:
    """The webserver's address and GraphQL endpoint, its instance, and the logs for failure messages."""

    def __init__(self, url: str, instance: dg.DagsterInstance, logs: dict[str, Path]):
        self.url = url
        self.instance = instance
        self.logs = logs

    def graphql(self, query: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def diagnostics(self) -> str:
        return "\n".join(f"--- {name} log (tail) ---\n{tail(path)}" for name, path in self.logs.items())


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system Chromium; a skip only where scripts/install_chromium cannot install it, a failure in CI."""
    binary = chromium_binary()
    if binary is not None:
        return binary
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("no Chromium binary in CI: .ci/run must install it (scripts/install_chromium)")
    cannot = [why for why, applies in (("not root", os.geteuid() != 0), ("no apt-get", not shutil.which("apt-get")))
              if applies]
    if not cannot:
        pytest.fail("no Chromium binary, though this machine can install it: run scripts/install_chromium "
                    "(`make test` does)")
    pytest.skip(f"no Chromium on PATH (chromium / chromium-browser / $AEP_ASSETS_CHROMIUM), and scripts/"
                f"install_chromium cannot install it here ({', '.join(cannot)}): install Chromium yourself "
                "(Debian/Ubuntu: `sudo apt-get install -y chromium`) or set AEP_ASSETS_CHROMIUM to its binary")


@pytest.fixture(scope="module")
def dagster_ui(chromium):
    """`make run`'s state (2,000 profiles) in a fresh home, with dagster-webserver and dagster-daemon on it."""
    home = Path(tempfile.mkdtemp(prefix="aep-ui-", dir="/tmp"))
    home.chmod(0o755)  # the unprivileged PostgreSQL user must traverse it
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "AEP_ASSETS_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "TMPDIR": "/tmp"}
    logs = {"webserver": home / "webserver.log", "daemon": home / "daemon.log"}
    port = free_port()
    processes: list[subprocess.Popen] = []
    platform = None

    def start(command: list[str], log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        processes.append(process)
        return process

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AEP_ASSETS_HOME", str(home))
        patch.setenv("DAGSTER_HOME", str(dagster_home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by earlier tests' mlflow calls
        from aep_assets.definitions import build_definitions
        from aep_assets.main import run_all

        try:
            defs = build_definitions()
            platform = defs.resources["platform"]
            with dg.DagsterInstance.get() as instance:  # creates the instance's storage before others open it
                # The webserver only reads the instance: it may start while the graph is materialized.
                webserver = start([str(BIN / "dagster-webserver"), "-m", "aep_assets.definitions",
                                   "-h", "127.0.0.1", "-p", str(port)], logs["webserver"])
                started = time.monotonic()
                run_all(defs, instance, RUN_CONFIG)
                print(f"run_all: {time.monotonic() - started:.1f} s")
                # After run_all, so the new-batch sensor finds every profile batch already a partition.
                start([str(BIN / "dagster-daemon"), "run", "-m", "aep_assets.definitions"], logs["daemon"])
                ui = UI(f"http://127.0.0.1:{port}", instance, logs)
                wait_for_server(ui.url, webserver, logs["webserver"])
                # What the "Skip" button of the first-visit community dialog does, so it can't cover the page.
                assert ui.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True
                yield ui
        finally:
            stopping = time.monotonic()
            stop_groups(*processes)
            if platform is not None:
                platform.server.remove()
            shutil.rmtree(home, ignore_errors=True)
            print(f"teardown: {time.monotonic() - stopping:.1f} s")


@pytest.fixture(scope="module")
def browser(chromium) -> Iterator[Browser]:
    """Headless system Chromium under Playwright (executable_path: Playwright's own browsers are never used)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[Page]:
    """A fresh browser context (its own storage) per test."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def open_page(page: Page, url: str, viewport: dict) -> None:
    page.set_viewport_size(viewport)
    page.goto(url)  # returns once the page's load event has fired


def asset_nodes(page: Page) -> Locator:
    """The graph's asset nodes (not group boxes): a foreignObject with the asset icon; its full name is in
    the title's data-tooltip (drawn truncated below Dagster's minimal zoom, hence the wide viewport)."""
    return (page.locator("svg foreignObject")
            .filter(has=page.locator('[aria-label="asset"]')).filter(has=page.locator("[data-tooltip]")))


def graph_clip(page: Page, pad: int = 24) -> dict:
    """The part of the viewport that the graph's nodes cover, with a margin."""
    boxes = [b for b in (n.bounding_box() for n in page.locator("svg foreignObject").all()) if b and b["width"] > 0]
    x = max(0, min(b["x"] for b in boxes) - pad)
    y = max(0, min(b["y"] for b in boxes) - pad)
    right = min(page.viewport_size["width"], max(b["x"] + b["width"] for b in boxes) + pad)
    bottom = min(page.viewport_size["height"], max(b["y"] + b["height"] for b in boxes) + pad)
    return {"x": x, "y": y, "width": right - x, "height": bottom - y}


def test_the_asset_graph_shows_all_13_assets(dagster_ui, page, tmp_path_factory):
    graph = f"{dagster_ui.url}/asset-groups"
    nodes = asset_nodes(page)
    with page_text_on_timeout(page):
        open_page(page, graph, GRAPH_VIEWPORT)
        page.locator("svg foreignObject").first.wait_for(state="attached", timeout=60_000)
        # Seven groups start collapsed; expand them the way a user does (graph settings, shortcut Alt+E),
        # then reload so the viewport fits the expanded layout (the choice is kept in the browser).
        page.keyboard.press("Alt+KeyE")
        nodes.first.wait_for(state="attached")
        open_page(page, graph, GRAPH_VIEWPORT)
        nodes.nth(len(ASSET_KEYS) - 1).wait_for(state="attached", timeout=60_000)
        names = nodes.evaluate_all("ns => ns.map(n => n.querySelector('[data-tooltip]').getAttribute('data-tooltip'))")
        assert sorted(names) == sorted(ASSET_KEYS)
        # Each node fetches its latest event on its own: wait until none is still loading, then shoot.
        page.locator("svg foreignObject", has_text=re.compile("Loading")).first.wait_for(state="detached")
    statuses = dict(nodes.evaluate_all(
        "ns => ns.map(n => [n.querySelector('[data-tooltip]').getAttribute('data-tooltip'), n.textContent])"))
    not_shown = {name: text for name, text in statuses.items()
                 if "Never materialized" in text or "Failed" in text or not re.search("Materialized|partition", text)}
    assert not not_shown, f"nodes not shown as materialized: {not_shown}"

    png = page.screenshot(clip=graph_clip(page))
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.width >= 1200 and image.height >= 500, image.size
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, "a blank screenshot"
    target = Path(os.environ.get("AEP_ASSETS_UI_SCREENSHOT") or tmp_path_factory.mktemp("ui") / "ui-graph.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    print(f"asset graph screenshot: {target} ({image.width}x{image.height})")


IMAGE_SIZE_JS = "i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight})"
# The dialog has loaded its markdown: some text, or an image.
DIALOG_FILLED_JS = """() => { const d = document.querySelector('[role=dialog]');
    return d !== null && (d.textContent.length > 0 || d.querySelector('img') !== null); }"""


def plot_in_dialog(page: Page, link: Locator, key: str) -> dict | None:
    """Open one "[Show Markdown]" dialog, read its PNG plot (None when it shows none), close it."""
    link.click()
    page.wait_for_function(DIALOG_FILLED_JS)
    dialog = page.locator("[role=dialog]")
    png = dialog.locator('img[src^="data:image/png"]').first
    plot = None
    if png.count():
        image = png.element_handle()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image)  # decoded
        plot = {**image.evaluate(IMAGE_SIZE_JS), "key": key}
    dialog.locator("button").filter(has_text=re.compile(r"^\s*Close\s*$")).first.click()
    dialog.first.wait_for(state="detached")
    return plot


def plots_on_asset_page(page: Page, url: str, wanted: int) -> list[dict]:
    """Open an asset page and collect up to `wanted` PNG plots from its latest materialization's metadata.

    Dagster shows markdown metadata of 1,000 characters or more behind a "[Show Markdown]" link that
    opens a dialog (an inline PNG is always longer), so click those links as a user would."""
    with page_text_on_timeout(page):
        open_page(page, url, PAGE_VIEWPORT)
        page.locator("tr > :nth-child(2)").first.wait_for(state="attached")  # a metadata row: name and value
        inline = page.locator('img[src^="data:image/png"]').evaluate_all(
            f"imgs => imgs.filter(i => i.naturalWidth > 100).map({IMAGE_SIZE_JS})")
        found = [{**inline[0], "key": "(inline)"}] if inline else []
        links = page.locator("tr a").filter(has_text=re.compile(r"^\s*\[Show Markdown\]\s*$"))
        for link in links.all():
            if len(found) >= wanted:
                break
            key = link.evaluate("a => a.closest('tr').cells[0].textContent.trim()")
            plot = plot_in_dialog(page, link, key)
            if plot is not None:
                found.append(plot)
    return found


def test_an_asset_page_shows_its_plots(dagster_ui, page):
    plots = plots_on_asset_page(page, f"{dagster_ui.url}/assets/propensity_model", wanted=2)
    assert len(plots) == 2, f"propensity_model's page shows no PNG plots: {plots}"
    assert all(p["width"] > 100 and p["height"] > 100 for p in plots), plots


LAUNCH = """mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { id pipelineName } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}"""
ASSET_NODE = """query ($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { jobNames repository { name location { name } } } } }"""
RUN_STATUS = """query ($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""
LATEST_MATERIALIZATION = """query ($key: AssetKeyInput!) { assetOrError(assetKey: $key) { __typename
  ... on Asset { assetMaterializations(limit: 1) { runId } } } }"""


def test_a_materialization_launched_like_the_ui_succeeds_and_shows_its_plots(dagster_ui, page):
    """The Materialize button's request (LaunchAssetExecutionButton: the implicit asset job, the
    asset selected, empty run config) through the queue and the daemon to a successful run."""
    ui = dagster_ui
    key = {"path": ["eda_summary"]}
    node = ui.graphql(ASSET_NODE, key=key)["assetNodeOrError"]
    assert node["__typename"] == "AssetNode" and "__ASSET_JOB" in node["jobNames"], node
    params = {
        "mode": "default",
        "executionMetadata": {"tags": []},
        "runConfigData": "{}",
        "selector": {"repositoryLocationName": node["repository"]["location"]["name"],
                     "repositoryName": node["repository"]["name"], "pipelineName": "__ASSET_JOB",
                     "assetSelection": [key], "assetCheckSelection": []},
    }
    launched = ui.graphql(LAUNCH, executionParams=params)["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["id"]
    started = time.monotonic()
    deadline = started + 150
    status, seen = None, {}
    while time.monotonic() < deadline:
        status = ui.graphql(RUN_STATUS, id=run_id)["runOrError"]["status"]
        seen.setdefault(status, round(time.monotonic() - started, 1))
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(0.5)
    print(f"run {run_id}: first seen in each status after (s) {seen}")
    if status != "SUCCESS":
        errors = [e.user_message for e in ui.instance.all_logs(run_id)
                  if e.is_dagster_event and e.dagster_event.is_failure]
        pytest.fail(f"run {run_id} ended {status}: {errors}\n{ui.diagnostics()}")
    latest = ui.graphql(LATEST_MATERIALIZATION, key=key)["assetOrError"]["assetMaterializations"]
    assert latest and latest[0]["runId"] == run_id
    plots = plots_on_asset_page(page, f"{ui.url}/assets/eda_summary", wanted=1)
    assert plots, "eda_summary's page shows no PNG plot after the run"
