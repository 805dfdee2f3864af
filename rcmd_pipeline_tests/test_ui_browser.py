"""The Dagster UI end to end, in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

On a small synthetic data set and a throw-away ``DAGSTER_HOME`` (a copy of the project's ``dagster.yaml``):

1. ``dagster asset materialize`` from the command line builds everything upstream of the evaluation;
2. ``dagster dev`` starts on a free port of 127.0.0.1, in its own process group (ended whole at the end);
3. in the browser: the global lineage graph shows every asset of the project, every group and one edge per
   dependency; the page of ``eval_transitions`` lists its upstream and downstream assets; the CLI's run is in
   the runs list; the ``evaluation`` group is launched with "Materialize all" through the launchpad, with the
   small data's settings typed into its config editor; the runs list shows that run succeed, the asset
   page shows the typed ``eval_size`` took effect, and the leaderboard's chart shows as a decoded image;
4. the webserver's GraphQL endpoint cross-checks what the browser saw.

Screenshots are saved to ``test-artifacts/ui-*.png`` (git-ignored). Skips with a reason where /usr/bin/chromium,
/usr/bin/chromedriver or selenium is missing.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from rcmd_pipeline import settings
from rcmd_pipeline.definitions import defs
from rcmd_pipeline_tests.helpers import synthetic_ratings, write_dataset
from rcmd_pipeline_tests.ui_driver import RUN_ID, Browser, DagsterDev, clean_env, missing_browser_reason

MISSING = missing_browser_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None,
                       reason=f"browser test needs Chromium, ChromeDriver and Selenium: {MISSING}"),
]

ROOT = settings.PROJECT_ROOT
ARTIFACTS = ROOT / "test-artifacts"
MODULE = "rcmd_pipeline.definitions"
# What the evaluation reads. `eval_transitions` is in it too: the asset check on movie_overview_embeddings
# (`evaluated_movies_have_vectors`) reads it, and `dagster asset materialize` always runs a selected
# asset's checks, so without it the CLI run fails on a fresh instance.
CLI_SELECTION = ["movielens_ratings", "movielens_links", "movielens_movies", "tmdb_movie_info_kr", "movie_table",
                 "series_table", "movie_overview_embeddings", "movie_vectors", "eval_transitions"]
# In-process steps: the same code, without one Python start-up per step (a ~45 s run becomes ~7 s here).
CLI_CONFIG = {"execution": {"config": {"in_process": {}}},
              "ops": {"eval_transitions": {"config": {"min_movie_ratings": 5, "eval_size": 50}}}}
# Typed into the launchpad. eval_size differs from the CLI's on purpose: the asset page then proves the
# UI's config was used. The study's defaults (1000 ratings per movie) would leave the small data empty.
UI_EVAL_SIZE = 40
UI_CONFIG = ("execution: {config: {in_process: {}}}\n"
             f"ops: {{eval_transitions: {{config: {{min_movie_ratings: 5, eval_size: {UI_EVAL_SIZE}}}}}}}")


def _project_graph():
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    return {
        "assets": {key.to_user_string() for key in keys},
        "groups": {graph.get(key).group_name for key in keys},
        "edges": sum(len(graph.get(key).parent_keys) for key in keys),
        "evaluation": {key.to_user_string() for key in keys if graph.get(key).group_name == "evaluation"},
        "upstream": {key.to_user_string() for key in graph.get(AssetKey("eval_transitions")).parent_keys},
        "downstream": {key.to_user_string() for key in graph.get(AssetKey("eval_transitions")).child_keys},
    }


def _between(lines: list[str], start: str, names: set[str]) -> set[str]:
    """The asset names listed right after the heading ``start`` (up to the first line that is not one)."""
    found, seen = set(), False
    for line in lines:
        if line == start:
            seen = True
            continue
        if seen:
            if line not in names:
                break
            found.add(line)
    return found


def _run_cli(env: dict, home: Path) -> str:
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "asset", "materialize", "-m", MODULE, "--select", ",".join(CLI_SELECTION),
         "--config-json", json.dumps(CLI_CONFIG)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS]
    return runs[0].run_id


def test_ui_shows_lineage_and_cli_runs_and_launches_the_evaluation_group(tmp_path):
    expected = _project_graph()
    timings: dict[str, float] = {}
    started = mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        timings[name] = round(now - mark, 1)
        mark = now

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ui-failure.png").unlink(missing_ok=True)  # only a failing run leaves one
    dataset = write_dataset(tmp_path / "movielens", synthetic_ratings())
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(DAGSTER_HOME=str(home), RCMD_DATASET_PATH=str(dataset), RCMD_DATA_DIR=str(tmp_path / "state"))

    cli_run_id = _run_cli(env, home)
    lap("cli_materialize")

    dev = DagsterDev(MODULE, cwd=ROOT, env=env, log_path=tmp_path / "dagster-dev.log")
    browser = None
    try:
        location = dev.wait_ready(timeout=120)
        lap("dagster_dev_ready")
        browser = Browser(dev.url, ARTIFACTS, tmp_path)
        lap("chromium_start")

        # -- the global lineage graph: every asset, every group, one edge per dependency ---------------------
        browser.open("/asset-groups")
        browser.wait_for(lambda: browser.find_all("svg[class*='svgContainer']"), 60, "the asset graph")
        browser.dismiss_community_dialog()
        items = browser.graph_menu_items()
        if "Expand all groups" in items:
            browser.graph_menu("Expand all groups")
        if any("vertical orientation" in item for item in items):
            browser.graph_menu("vertical orientation")
        browser.driver.refresh()  # the graph is fitted to the window on load; the choices above are kept
        browser.wait_for(lambda: len(browser.graph_node_labels()) == len(expected["assets"]), 60,
                         f"{len(expected['assets'])} asset nodes in the graph")
        assert browser.wait_stable(browser.graph_edge_count, 60, "the graph's edges") == expected["edges"]
        graph_text = browser.find_all("svg[class*='svgContainer']")[0].text.splitlines()
        assert expected["groups"] <= set(graph_text), graph_text
        browser.screenshot("asset-graph")
        assert browser.graph_asset_names() == expected["assets"]
        nodes = dev.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
        assert {"/".join(n["assetKey"]["path"]) for n in nodes} == expected["assets"]
        assert sum(len(n["dependencyKeys"]) for n in nodes) == expected["edges"]

        # -- the asset page lists lineage -----------------------------------------------------------------
        browser.open("/assets/eval_transitions")
        browser.wait_xpath("//*[normalize-space()='Upstream assets']", 60, "the lineage of eval_transitions")
        lines = [line.strip() for line in browser.body_text().splitlines()]
        assert _between(lines, "Upstream assets", expected["assets"]) == expected["upstream"]
        assert _between(lines, "Downstream assets", expected["assets"]) == expected["downstream"]
        for name in expected["upstream"] | expected["downstream"]:  # each one a link to its own page
            assert browser.find_all(f"a[href='/assets/{name}']"), name
        lap("graph_and_lineage_checks")

        # -- the CLI's run is in the UI's run list ----------------------------------------------------------
        browser.open("/runs")
        assert browser.wait_for(lambda: browser.run_rows().get(cli_run_id), 60,
                                f"the CLI run {cli_run_id} in the runs list") == "Success"

        # -- launch the evaluation group from the UI, with config typed into the launchpad ----------------
        browser.open(f"/locations/{location}/asset-groups/evaluation")
        materialize_all = "//button[contains(normalize-space(), 'Materialize all')]"
        browser.wait_xpath(materialize_all, 60, "Materialize all")
        browser.wait_for(lambda: browser.graph_node_labels(), 60, "the evaluation group's graph")
        # shift-click: open the launchpad instead of launching with the defaults
        browser.click_fresh(lambda: next((b for b in browser.xpath_all(materialize_all) if b.is_displayed()), None),
                            30, "Materialize all", action=browser.shift_click)
        dialog = browser.wait_xpath("//*[@role='dialog'][contains(., 'Launchpad')]", 60, "the launchpad")
        browser.type_in_launchpad(UI_CONFIG)
        # The launch button is disabled while the typed config is being validated by the webserver.
        def launch_button():
            return next((button for button in browser.xpath_all("//*[@role='dialog']//button[normalize-space()"
                                                                "='Materialize']")
                         if button.is_displayed() and button.is_enabled()), None)
        browser.wait_for(launch_button, 60, "the launchpad's Materialize button to be enabled")
        browser.wait_xpath("//*[@role='dialog']//*[normalize-space()='No errors']", 30, "'No errors' in the launchpad")
        dialog_lines = {line.strip() for line in dialog.text.splitlines()}
        assert expected["evaluation"] <= dialog_lines, dialog_lines
        browser.screenshot("launchpad")
        browser.click_fresh(launch_button, 30, "the launchpad's Materialize button")
        ui_run_id = browser.wait_for(lambda: RUN_ID.search(browser.driver.current_url), 60,
                                     "the new run's page").group(1)
        lap("launch_from_ui")

        status = browser.wait_run_in_list(ui_run_id, timeout=240)
        lap("ui_run")
        rows = browser.run_rows()
        assert status == "Success", f"run {ui_run_id}: {status}\n{dev.log_tail()}"
        assert rows.get(cli_run_id) == "Success", rows
        browser.screenshot("runs")

        # -- the asset page shows the typed config took effect ------------------------------------------------
        browser.open("/assets/eval_transitions")
        browser.wait_xpath("//*[normalize-space()='Row count']", 60, "the row count of eval_transitions")

        def row_count():
            page = [line.strip() for line in browser.body_text().splitlines()]
            at = page.index("Row count")
            return page[at + 1] == str(UI_EVAL_SIZE)
        browser.wait_for(row_count, 30, f"row count {UI_EVAL_SIZE} on the page of eval_transitions")
        browser.screenshot("eval-transitions")

        # -- the leaderboard's chart is a picture the browser decodes ----------------------------------------
        browser.open("/assets/strategy_leaderboard")
        browser.click_xpath("//tr[.//*[text()='leaderboard_chart']]//*[contains(text(),'Show Markdown')]", 60,
                            "the leaderboard chart's Show Markdown")
        chart = browser.wait_for(lambda: browser.find_all("img[src^='data:image/png']"), 30, "the chart image")[0]
        assert browser.driver.execute_script("return arguments[0].naturalWidth", chart) > 300
        browser.screenshot("leaderboard-chart")

        # -- GraphQL agrees with what the browser showed -------------------------------------------------------
        run = dev.graphql("""query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
            status runConfigYaml assetSelection { path } } } }""", {"id": ui_run_id})["runOrError"]
        assert run["status"] == "SUCCESS"
        assert {"/".join(key["path"]) for key in run["assetSelection"]} == expected["evaluation"]
        config = yaml.safe_load(run["runConfigYaml"])["ops"]["eval_transitions"]["config"]
        assert config == {"min_movie_ratings": 5, "eval_size": UI_EVAL_SIZE}
        runs = dev.graphql("{ runsOrError { ... on Runs { results { runId status } } } }")["runsOrError"]["results"]
        assert {r["runId"]: r["status"] for r in runs} == {cli_run_id: "SUCCESS", ui_run_id: "SUCCESS"}
        lap("final_checks")
    except BaseException:
        if browser is not None:
            try:
                browser.screenshot("failure")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        print(f"--- dagster dev log (tail) ---\n{dev.log_tail()}")
        raise
    finally:
        if browser is not None:
            browser.close()
        dev.stop()
        timings["total"] = round(time.monotonic() - started, 1)
        print(f"UI browser test timings (s): {timings}")
