"""Drive `dagster dev` and its UI in a real headless Chromium (Debian's chromium + chromedriver, Selenium).

Used by ``test_ui_browser.py``. Everything here talks only to 127.0.0.1. Selenium is imported lazily
so that the test module can be collected (and skipped with a reason) where it is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The flags this machine needs: no sandbox as root, and no background traffic to a closed network.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1920,1080"]
SECRET_PREFIXES = ("RCMD_", "DAGSTER_", "TMDB_", "OPENAI_", "QDRANT_")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
RUN_STATUSES = ("Success", "Failure", "Canceled", "Canceling", "Started", "Starting", "Queued", "Not started")
TERMINAL_STATUSES = {"Success", "Failure", "Canceled"}
RUN_ID = re.compile(r"/runs/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def missing_browser_reason() -> str | None:
    """Why a browser test cannot run here, or None when Chromium, ChromeDriver and Selenium are all present."""
    for exe, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(exe, os.X_OK):
            return f"{exe} not found (Debian: apt-get install -y {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def clean_env(**extra: str) -> dict:
    """The current environment without the project's settings and without anything that looks like a secret."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(SECRET_PREFIXES) and not any(word in k.upper() for word in SECRET_WORDS)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition`` until it returns something truthy; its last exception is reported on time-out."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - polled until the deadline, reported below
            last_error = error
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                               + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


class DagsterDev:
    """``dagster dev`` as a subprocess in its own process group; ``stop()`` ends the whole group."""

    def __init__(self, module: str, cwd: Path, env: dict, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        dagster = Path(sys.executable).with_name("dagster")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-m", module, "-p", str(self.port), "-h", "127.0.0.1"],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        answer = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                               timeout=30)
        answer.raise_for_status()
        body = answer.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_ready(self, timeout: float = 90) -> str:
        """Waits for /server_info, then for the code location to be loaded; returns the location's name."""
        def server_info():
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}:\n{self.log_tail()}")
            return requests.get(f"{self.url}/server_info", timeout=2).ok

        wait_until(server_info, timeout, f"{self.url}/server_info")

        def loaded_location():
            data = self.graphql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
            for entry in data["workspaceOrError"]["locationEntries"]:
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    raise RuntimeError(f"code location {entry['name']} failed to load: {error['message']}")
                if entry["loadStatus"] == "LOADED" and error and error["__typename"] == "RepositoryLocation":
                    return entry["name"]
            return None

        return wait_until(loaded_location, timeout, "the code location to load")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM to the whole process group (webserver, daemon, code servers, run workers), then SIGKILL."""
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # the leader is gone: make sure nothing of its group lingers
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        self._log.close()


class Browser:
    """Headless Chromium through chromedriver, with the few UI gestures the test needs."""

    def __init__(self, base_url: str, artifacts: Path, log_dir: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base_url = base_url
        self.artifacts = artifacts
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=log_dir)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        service = Service(str(CHROMEDRIVER), log_output=str(log_dir / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(60)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- small helpers -------------------------------------------------------------------------------

    def by(self):
        from selenium.webdriver.common.by import By

        return By

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def find_all(self, css: str):
        return self.driver.find_elements(self.by().CSS_SELECTOR, css)

    def xpath_all(self, xpath: str):
        return self.driver.find_elements(self.by().XPATH, xpath)

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str):
        return wait_until(condition, timeout, what, interval=0.25)

    def wait_stable(self, measure: Callable[[], object], timeout: float, what: str, interval: float = 1.0):
        """Polls ``measure`` until it gives the same non-empty answer twice in a row (a page done rendering)."""
        previous = []

        def settled():
            value = measure()
            same = bool(value) and previous and previous[-1] == value
            previous.append(value)
            return value if same else None
        return wait_until(settled, timeout, what, interval=interval)

    def wait_xpath(self, xpath: str, timeout: float = 20, what: str | None = None):
        def visible():
            shown = [e for e in self.xpath_all(xpath) if e.is_displayed()]
            return shown[0] if shown else None
        return self.wait_for(visible, timeout, what or xpath)

    def click_fresh(self, find: Callable[[], object], timeout: float, what: str,
                    action: Callable[[object], None] | None = None) -> None:
        """Clicks the element ``find()`` returns, looking it up afresh on every try.

        React re-renders menus and buttons between a lookup and a click (the graph's menu does, right
        after "Expand all groups"): the element found a moment ago is then stale, or covered by the
        re-rendered one. Such a click did not happen, so it is retried on a new lookup until it goes
        through or ``timeout`` runs out. Any other error is raised at once. ``action`` replaces the
        plain click (e.g. :meth:`shift_click`).
        """
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
            StaleElementReferenceException,
        )

        def clicked():
            element = find()
            if not element:
                return False
            try:
                (action or (lambda e: e.click()))(element)
            except (StaleElementReferenceException, ElementClickInterceptedException,
                    ElementNotInteractableException):
                return False
            return True

        retried = (StaleElementReferenceException, ElementClickInterceptedException, ElementNotInteractableException)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if clicked():
                    return
            except retried:  # find() itself read a stale element (is_displayed, text, attributes)
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s trying to click {what}")
            time.sleep(0.25)

    def click_xpath(self, xpath: str, timeout: float = 20, what: str | None = None) -> None:
        """Clicks the first displayed element matching ``xpath``, re-found on every try (see click_fresh)."""
        def first_shown():
            return next((e for e in self.xpath_all(xpath) if e.is_displayed()), None)
        self.click_fresh(first_shown, timeout, what or xpath)

    def body_text(self) -> str:
        return self.driver.find_element(self.by().TAG_NAME, "body").text

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"ui-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def hover(self, element) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(self.driver).move_to_element(element).perform()

    def shift_click(self, element) -> None:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        ActionChains(self.driver).key_down(Keys.SHIFT).click(element).key_up(Keys.SHIFT).perform()

    # --- Dagster UI gestures -------------------------------------------------------------------------

    def dismiss_community_dialog(self, timeout: float = 8) -> bool:
        """A fresh instance greets a local UI with "Join the Dagster community"; click its Skip."""
        skip = "//*[@role='dialog']//button[normalize-space()='Skip']"
        try:
            self.wait_xpath(skip, timeout)
        except TimeoutError:
            return False
        self.click_xpath(skip, 10, "the community dialog's Skip button")
        self.wait_for(lambda: not self.xpath_all("//*[@role='dialog']//button[normalize-space()='Skip']"),
                      10, "the community dialog to close")
        return True

    def _graph_gear(self):
        """The graph's settings button (the gear beside the zoom slider), or None while it is not shown."""
        buttons = [b for b in self.find_all("button")
                   if b.is_displayed() and not b.text.strip() and "/settings." in (b.get_attribute("innerHTML") or "")]
        return buttons[-1] if buttons else None

    def _open_graph_menu(self, timeout: float) -> None:
        """Clicks the gear until the menu's items are shown: a click that lands while the graph re-renders
        can be swallowed, so a menu that did not open is opened again (a fresh lookup each time)."""
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout

        def menu_shown():
            try:
                return any(b.is_displayed() for b in self.xpath_all("//ul//li//button"))
            except StaleElementReferenceException:
                return False

        while not menu_shown():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:.0f}s opening the graph settings menu")
            self.click_fresh(self._graph_gear, remaining, "the graph settings button")
            try:
                self.wait_for(menu_shown, min(5.0, max(deadline - time.monotonic(), 0.5)), "the graph menu")
            except TimeoutError:
                continue

    def graph_menu(self, item_text: str, timeout: float = 30) -> None:
        """Opens the graph's settings menu and clicks an item, then waits for the menu to close.

        Each step looks its element up afresh and retries a click that met a re-rendered (stale)
        element, within ``timeout``: never a fixed sleep. The item's click happens once at most, since a
        click that raised did not reach the page (items such as the orientation toggle flip on each click).
        """
        item = f"//ul//button[contains(normalize-space(), '{item_text}')]"
        deadline = time.monotonic() + timeout
        self._open_graph_menu(timeout)
        self.wait_xpath(item, max(deadline - time.monotonic(), 1.0), item_text)
        self.click_xpath(item, max(deadline - time.monotonic(), 1.0), f"the graph menu item {item_text!r}")
        self.wait_for(lambda: not self.xpath_all(item), 10, "the graph menu to close")

    def graph_menu_items(self, timeout: float = 30) -> list[str]:
        """The texts of the graph settings menu, which is then closed again with Escape."""
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.common.keys import Keys

        self._open_graph_menu(timeout)

        def texts():  # the menu may re-render while it is read: read it again, whole
            try:
                return [b.text.splitlines()[0] for b in self.xpath_all("//ul//li//button") if b.text.strip()]
            except StaleElementReferenceException:
                return None
        items = self.wait_stable(texts, 20, "the graph menu's items", interval=0.25)
        self.driver.find_element(self.by().TAG_NAME, "body").send_keys(Keys.ESCAPE)
        self.wait_for(lambda: not self.xpath_all("//ul//li//button"), 10, "the graph menu to close")
        return items

    def graph_node_labels(self) -> list:
        return self.find_all("svg[class*='svgContainer'] [class*='AssetNode_assetName']")

    def graph_edge_count(self) -> int:
        """Edges drawn between nodes (the edges of a hovered node are drawn again, highlighted: counted once)."""
        return len({path.get_attribute("d") for path in self.find_all("svg[class*='svgContainer'] path[marker-end]")})

    def graph_asset_names(self, timeout: float = 60) -> set[str]:
        """Every asset node's full name. Zoomed out, long names are shortened ("movie_…_embeddings"):
        those are read from the tooltip that hovering the node shows. A graph that re-renders while it
        is read (stale nodes) is read again, whole, within ``timeout``."""
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._read_graph_asset_names()
            except StaleElementReferenceException:
                if time.monotonic() > deadline:
                    raise

    def _read_graph_asset_names(self) -> set[str]:
        names = set()
        for label in self.graph_node_labels():
            text = label.text.strip()
            if "…" not in text:
                names.add(text)
                continue
            head, tail = text.split("…", 1)
            shown = len(text) - 1
            self.hover(label)

            def tooltip(head=head, tail=tail, shown=shown):
                for popup in self.find_all("[data-radix-popper-content-wrapper], [role='tooltip']"):
                    for line in popup.text.splitlines():
                        if line.startswith(head) and line.endswith(tail) and len(line) > shown:
                            return line
                return None

            names.add(self.wait_for(tooltip, 10, f"the tooltip of graph node {text!r}"))
        return names

    def run_rows(self) -> dict[str, str]:
        """The runs list on screen: full run id -> status text."""
        rows = {}
        for row in self.find_all("[class*='RunsFeedRow_rowGrid']"):
            run_id = None
            for link in row.find_elements(self.by().CSS_SELECTOR, "a[href*='/runs/']"):
                match = RUN_ID.search(link.get_attribute("href") or "")
                if match:
                    run_id = match.group(1)
                    break
            if run_id:
                lines = [line.strip() for line in row.text.splitlines()]
                rows[run_id] = next((line for line in lines if line in RUN_STATUSES), "?")
        return rows

    def wait_run_in_list(self, run_id: str, timeout: float, poll: float = 3) -> str:
        """Reloads the runs page until ``run_id`` shows a final status; returns that status."""
        deadline = time.monotonic() + timeout
        status = None
        while True:
            self.open("/runs")
            try:
                status = self.wait_for(lambda: self.run_rows().get(run_id), 15, f"run {run_id} in the runs list")
            except TimeoutError:
                status = None
            if status in TERMINAL_STATUSES:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {status!r} in the runs list after {timeout:.0f}s")
            time.sleep(poll)

    def type_in_launchpad(self, text: str) -> str:
        """Replaces the launchpad's config editor content by typing ``text``; returns the editor's lines."""
        from selenium.webdriver.common.keys import Keys

        def find_editor():
            shown = [e for e in self.find_all("[role='dialog'] .CodeMirror") if e.is_displayed()]
            return shown[0] if shown else None

        self.wait_for(find_editor, 30, "the launchpad's config editor")
        self.click_fresh(find_editor, 30, "the launchpad's config editor")
        editor = find_editor()
        area = editor.find_element(self.by().CSS_SELECTOR, "textarea")
        area.send_keys(Keys.CONTROL, "a")
        area.send_keys(Keys.DELETE)
        area.send_keys(text)

        def shown():
            lines = "\n".join(line.text for line in editor.find_elements(self.by().CSS_SELECTOR, ".CodeMirror-line"))
            return lines.replace("\u200b", "").strip() == text.strip() and lines
        return self.wait_for(shown, 10, "the typed config to show in the editor")
