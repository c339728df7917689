"""The Dagster UI in a real browser, over the state `make run` leaves (small).

A fresh AEP_ASSETS_HOME and DAGSTER_HOME (the project's dagster.yaml copied in, as `make` does) get
the whole graph materialized with `aep_assets.main.run_all`; then `dagster-webserver` and
`dagster-daemon` run over them, as `make ui` (`dagster dev`) does. Headless Chromium (Debian's
/usr/bin/chromium, driven over the Chrome DevTools Protocol with `websockets`, no browser download)
checks that the global asset graph shows all 13 assets and that an asset page shows its plots; a
materialization is launched with the same GraphQL mutation the UI's Materialize button sends, and
must succeed.

Why the daemon: the project's dagster.yaml sets `concurrency.runs`, so the instance uses the
QueuedRunCoordinator: a run launched from the UI waits in the queue until `dagster-daemon`
dequeues it. Starting the daemon keeps the instance exactly as `make ui` has it (queue, run limits,
pools) instead of a test-only DefaultRunCoordinator.

The graph screenshot goes to $AEP_ASSETS_UI_SCREENSHOT when set (refresh the README's with
`AEP_ASSETS_UI_SCREENSHOT=docs/ui-graph.png uv run --frozen pytest aep_assets_tests/test_ui.py`),
else to pytest's temp folder, so `make test` leaves the working tree clean.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
import requests
from websockets.sync.client import connect

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
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
# Wide enough that the fitted graph is drawn above Dagster's "minimal" zoom (full names, status rows).
GRAPH_VIEWPORT = (3200, 1400)
PAGE_VIEWPORT = (1600, 1000)

pytestmark = pytest.mark.slow


def chromium_binary() -> str | None:
    for name in (os.environ.get("AEP_ASSETS_CHROMIUM", ""), "chromium", "chromium-browser"):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


class Browser:
    """Headless Chromium over the Chrome DevTools Protocol: navigate, evaluate, click, screenshot."""

    def __init__(self, binary: str, profile: Path):
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not open its DevTools port (exit code {self.process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json", timeout=10).json() if t["type"] == "page"]
        self.socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails'].get('exception')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; page text: "
                                     f"{(self.evaluate('document.body.innerText') or '')[:1500]}")
            time.sleep(0.25)

    def open(self, url: str, viewport: tuple[int, int]) -> None:
        self.send("Emulation.setDeviceMetricsOverride", width=viewport[0], height=viewport[1],
                  deviceScaleFactor=1, mobile=False)
        self.evaluate("window.__previousPage = true")  # gone once the new document has loaded
        self.send("Page.navigate", url=url)
        self.wait_for("!window.__previousPage && document.readyState === 'complete'", f"the load of {url}")

    def press(self, key: str, code: str, key_code: int, alt: bool = False) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, modifiers=1 if alt else 0, key=key, code=code,
                      windowsVirtualKeyCode=key_code)

    def click(self, point: list[float]) -> None:
        """A real mouse click (pressed + released) at a viewport point."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=point[0], y=point[1], button="left", clickCount=1)

    def screenshot(self, clip: dict | None = None) -> bytes:
        params = {"format": "png", "captureBeyondViewport": False}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop_groups(self.process)


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
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no Chromium binary in CI: .ci/run must install it (scripts/install_chromium)")
        pytest.skip("no Chromium binary (chromium / chromium-browser) on PATH: run scripts/install_chromium "
                    "as root, or `apt-get install chromium chromium-driver`")
    return binary


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
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while True:
                    assert webserver.poll() is None, f"dagster-webserver exited:\n{tail(logs['webserver'])}"
                    try:
                        if requests.get(f"{url}/server_info", timeout=2).ok:
                            break
                    except requests.ConnectionError:
                        pass
                    assert time.monotonic() < deadline, f"no /server_info in 60 s:\n{tail(logs['webserver'])}"
                    time.sleep(0.5)
                ui = UI(url, instance, logs)
                # What the "Skip" button of the first-visit community dialog does, so it can't cover the page.
                assert ui.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True
                yield ui
        finally:
            stopping = time.monotonic()
            stop_groups(*processes)
            if platform is not None:
                platform.server.stop()
            shutil.rmtree(home, ignore_errors=True)
            print(f"teardown: {time.monotonic() - stopping:.1f} s")


@pytest.fixture
def browser(chromium, tmp_path):
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    browser = Browser(chromium, profile)
    yield browser
    browser.close()


# An asset node of the graph (not a group box): a foreignObject with the asset icon; its full name is in
# the title's data-tooltip (drawn truncated below Dagster's minimal zoom, hence the wide viewport).
ASSET_NODES_JS = """Array.from(document.querySelectorAll('svg foreignObject'))
    .filter(n => n.querySelector('[aria-label="asset"]') && n.querySelector('[data-tooltip]'))"""
GRAPH_NAMES_JS = f"{ASSET_NODES_JS}.map(n => n.querySelector('[data-tooltip]').getAttribute('data-tooltip'))"


def test_the_asset_graph_shows_all_13_assets(dagster_ui, browser, tmp_path_factory):
    ui = dagster_ui
    graph = f"{ui.url}/asset-groups"
    browser.open(graph, GRAPH_VIEWPORT)
    browser.wait_for("document.querySelectorAll('svg foreignObject').length > 0", "the asset graph", timeout=60)
    # Seven groups start collapsed; expand them the way a user does (graph settings, shortcut Alt+E),
    # then reload so the viewport fits the expanded layout (the choice is kept in the browser).
    browser.press("e", "KeyE", 69, alt=True)
    browser.wait_for(f"{GRAPH_NAMES_JS}.length > 0", "expanded groups")
    browser.open(graph, GRAPH_VIEWPORT)
    names = browser.wait_for(f"(() => {{ const n = {GRAPH_NAMES_JS}; return n.length >= {len(ASSET_KEYS)} && n; }})()",
                             "13 asset nodes with their full names", timeout=60)
    assert sorted(names) == sorted(ASSET_KEYS)
    # Each node fetches its latest event on its own: wait until none is still loading, then shoot.
    browser.wait_for("""(() => { const nodes = Array.from(document.querySelectorAll('svg foreignObject'));
        return !nodes.some(n => n.textContent.includes('Loading')); })()""", "every node's status", timeout=30)
    statuses = browser.evaluate(f"""Object.fromEntries({ASSET_NODES_JS}
        .map(n => [n.querySelector('[data-tooltip]').getAttribute('data-tooltip'), n.textContent]))""")
    not_shown = {name: text for name, text in statuses.items()
                 if "Never materialized" in text or "Failed" in text or not re.search("Materialized|partition", text)}
    assert not not_shown, f"nodes not shown as materialized: {not_shown}"

    box = browser.evaluate("""(() => {
        const rects = Array.from(document.querySelectorAll('svg foreignObject'))
            .map(e => e.getBoundingClientRect()).filter(r => r.width > 0);
        const pad = 24;
        const x = Math.max(0, Math.min(...rects.map(r => r.left)) - pad);
        const y = Math.max(0, Math.min(...rects.map(r => r.top)) - pad);
        return {x, y, width: Math.min(innerWidth, Math.max(...rects.map(r => r.right)) + pad) - x,
                height: Math.min(innerHeight, Math.max(...rects.map(r => r.bottom)) + pad) - y};
    })()""")
    png = browser.screenshot(box)
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.width >= 1200 and image.height >= 500, image.size
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, "a blank screenshot"
    target = Path(os.environ.get("AEP_ASSETS_UI_SCREENSHOT") or tmp_path_factory.mktemp("ui") / "ui-graph.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    print(f"asset graph screenshot: {target} ({image.width}x{image.height})")


PLOT_IN_PAGE_JS = """(() => {
    const img = Array.from(document.images).find(i => i.src.startsWith('data:image/png') && i.naturalWidth > 100);
    return img ? {alt: img.alt, width: img.naturalWidth, height: img.naturalHeight} : null; })()"""


def plots_on_asset_page(browser: Browser, url: str, wanted: int) -> list[dict]:
    """Open an asset page and collect up to `wanted` PNG plots from its latest materialization's metadata.

    Dagster shows markdown metadata of 1,000 characters or more behind a "[Show Markdown]" link that
    opens a dialog (an inline PNG is always longer), so click those links as a user would."""
    browser.open(url, PAGE_VIEWPORT)
    count = browser.wait_for("""(() => { const n = Array.from(document.querySelectorAll('tr'))
        .filter(r => r.cells.length > 1).length; return n > 0 && n; })()""", "the metadata table")
    assert count > 0
    found = []
    inline = browser.evaluate(PLOT_IN_PAGE_JS)
    if inline:
        found.append({**inline, "key": "(inline)"})
    links = browser.evaluate("""Array.from(document.querySelectorAll('tr a'))
        .filter(a => a.textContent.trim() === '[Show Markdown]').length""")
    for index in range(links):
        if len(found) >= wanted:
            break
        key, point = browser.evaluate(f"""(() => {{
            const a = Array.from(document.querySelectorAll('tr a'))
                .filter(a => a.textContent.trim() === '[Show Markdown]')[{index}];
            a.scrollIntoView({{block: 'center'}});
            const r = a.getBoundingClientRect();
            return [a.closest('tr').cells[0].textContent.trim(), [r.x + r.width / 2, r.y + r.height / 2]]; }})()""")
        browser.click(point)
        browser.wait_for("document.querySelector('[role=dialog]') !== null", f"the dialog of {key}")
        plot = browser.wait_for("""(() => { const d = document.querySelector('[role=dialog]');
            if (!d || !d.textContent.length && !d.querySelector('img')) return null;
            const img = Array.from(d.querySelectorAll('img')).find(i => i.src.startsWith('data:image/png'));
            if (!img) return {none: true};
            return img.complete && img.naturalWidth > 0 ? {alt: img.alt, width: img.naturalWidth,
                                                           height: img.naturalHeight} : null; })()""",
                                f"the content of {key}'s dialog")
        if not plot.get("none"):
            found.append({**plot, "key": key})
        browser.click(browser.evaluate("""(() => {
            const b = Array.from(document.querySelectorAll('[role=dialog] button'))
                .find(b => b.textContent.trim() === 'Close');
            const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"""))
        browser.wait_for("document.querySelector('[role=dialog]') === null", f"{key}'s dialog to close")
    return found


def test_an_asset_page_shows_its_plots(dagster_ui, browser):
    ui = dagster_ui
    plots = plots_on_asset_page(browser, f"{ui.url}/assets/propensity_model", wanted=2)
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


def test_a_materialization_launched_like_the_ui_succeeds_and_shows_its_plots(dagster_ui, browser):
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
    plots = plots_on_asset_page(browser, f"{ui.url}/assets/eda_summary", wanted=1)
    assert plots, "eda_summary's page shows no PNG plot after the run"
