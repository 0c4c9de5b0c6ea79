"""The Dagster UI end to end in headless Chromium (Debian's chromium and chromium-driver, never a downloaded
browser), against the real `dagster dev`: what a user sees after a run, and runs that start with no click.

Screenshots are kept under $RM_PIPELINE_TEST_ARTIFACTS (default: .test-artifacts/ in the repository),
one folder per test.
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from rm_pipeline.cli.ui import lineage_url
from rm_pipeline.definitions import defs
from rm_pipeline_tests.conftest import BUNDLED, PERMISSIVE_READINESS, SLICE_LINES
from rm_pipeline_tests.support.dagster_dev import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network on the test machines: nothing a browser would fetch on its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
]
SHOWN_IN_LINEAGE = [  # names short enough not to be cut in the zoomed-out graph
    "annotation_folder",
    "raw_annotations",
    "preference_pairs",
    "rejected_pairs",
    "preference_split",
    "review_queue",
    "reward_model",
    "reward_scores",
    "response_scores",
    "evaluation_report",
    "reward_readiness",
]
REPORT_PLOTS = ["reliability_diagram", "reward_histograms", "reward_vs_length"]
UI_WAIT_SECONDS = 60


@pytest.fixture
def artifacts(request) -> Path:
    base = Path(os.environ.get("RM_PIPELINE_TEST_ARTIFACTS", REPO_ROOT / ".test-artifacts"))
    folder = base / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()  # stops Chromium and chromedriver
        assert service.process.poll() is not None


@pytest.mark.servers
@pytest.mark.trains
def test_the_ui_shows_the_lineage_a_passed_check_and_the_report_plots(small_dagster_dev, browser, artifacts):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    status = small_dagster_dev.launch_and_wait("reward_pipeline_job", {"ops": PERMISSIVE_READINESS})
    assert status == "SUCCESS", f"see {small_dagster_dev.log}"
    wait = WebDriverWait(browser, UI_WAIT_SECONDS)

    def page_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    def wait_for_text(*texts: str) -> None:
        try:
            wait.until(lambda _: all(text in page_text() for text in texts))
        except Exception as error:
            browser.save_screenshot(artifacts / "failed.png")
            missing = [text for text in texts if text not in page_text()]
            raise AssertionError(f"not shown: {missing}; see {artifacts / 'failed.png'}") from error

    # A first visit, on the link `rm-pipeline ui` prints: every asset of the graph in view, and no community
    # dialog over it (the instance turns nux off).
    browser.get(lineage_url(small_dagster_dev.port))
    wait_for_text("Global asset lineage", *SHOWN_IN_LINEAGE)
    time.sleep(3)  # the dialog, where it is on, opens a moment after the page
    browser.save_screenshot(artifacts / "1-first-visit.png")
    assert "Join the Dagster community" not in page_text()
    assert not browser.find_elements(By.CSS_SELECTOR, "[role=dialog]")

    # A blocking check that passed, on its asset's checks tab.
    browser.get(f"{small_dagster_dev.url}/assets/preference_split?view=checks")
    wait_for_text("preference_split_grouped", "Succeeded", "This is a blocking asset check.", "Passed")
    browser.save_screenshot(artifacts / "3-preference-split-checks.png")

    # The evaluation report's plots: inline PNGs in Markdown metadata, each opened as a user would.
    browser.get(f"{small_dagster_dev.url}/assets/evaluation_report")
    # The verdict first: the report decides it (thresholds met here, see PERMISSIVE_READINESS).
    wait_for_text("evaluation_report", "verdict", ": ready", "recommendation", "held_out_accuracy", *REPORT_PLOTS)
    browser.save_screenshot(artifacts / "3b-evaluation-report-verdict.png")
    for number, plot in enumerate(REPORT_PLOTS, start=4):
        row = browser.find_element(By.XPATH, f"//tr[td[normalize-space()='{plot}']]")
        link = row.find_element(By.XPATH, ".//a[normalize-space()='[Show Markdown]']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
        link.click()
        dialog = wait.until(shown.visibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))
        assert plot in dialog.text
        image = wait.until(lambda _, d=dialog: d.find_element(By.CSS_SELECTOR, "img[src^='data:image/png']"))
        wait.until(lambda _, i=image: browser.execute_script("return arguments[0].complete", i))
        width, height = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
        assert width > 100 and height > 100 and image.is_displayed()  # decoded and drawn, not a broken image
        browser.save_screenshot(artifacts / f"{number}-{plot}.png")
        dialog.find_element(By.XPATH, ".//button[normalize-space()='Close']").click()
        wait.until(shown.invisibility_of_element_located((By.CSS_SELECTOR, "[role=dialog]")))


# --- Runs that start with no click: the daemon's sensors react to a new batch in the watched folder ---

AUTOMATION_SENSORS = [s for s in defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
DATA_STAGES = ["raw_annotations", "aggregated_preferences", "preference_pairs", "preference_split"]
ACTIVE = {
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
}
AUTOMATION_WAIT_SECONDS = 600
SENSOR_TAG = "dagster/sensor_name"  # on every run a sensor (the automation sensor included) requested
VOTE = {"item_id": "x1", "prompt": "p", "response_a": "r1", "response_b": "r2", "annotator_id": "v", "vote": "a"}
GATE_BREAKING_BATCH = [json.dumps(VOTE)] * 2 + ["{not json"] * 8  # 80% unreadable: over the 20% the gate allows


def latest_materialization(instance: dg.DagsterInstance, asset: str) -> float:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return event.timestamp if event else 0.0


def runs_since(instance: dg.DagsterInstance, moment: float) -> list[dg.DagsterRun]:
    records = instance.get_run_records()
    return [record.dagster_run for record in records if record.create_timestamp.timestamp() >= moment]


def wait_until(condition, seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds} s; see {log}")
        time.sleep(2)


def wait_until_quiet(instance: dg.DagsterInstance, quiet_seconds: float, log: Path) -> None:
    """No run active and none requested for `quiet_seconds`: the sensors have nothing more to ask for."""
    quiet_since = [time.time()]

    def quiet() -> bool:
        runs = runs_since(instance, quiet_since[0])
        if any(run.status in ACTIVE for run in instance.get_runs()) or runs:
            quiet_since[0] = time.time()
        return time.time() - quiet_since[0] >= quiet_seconds

    wait_until(quiet, AUTOMATION_WAIT_SECONDS, "runs settling", log)


def targets(run: dg.DagsterRun, asset: str) -> bool:
    return dg.AssetKey(asset) in (run.asset_selection or set())


@pytest.mark.servers
def test_a_new_batch_runs_the_data_stages_with_no_click_and_a_bad_one_stops_at_its_gate(small_dagster_dev):
    dev = small_dagster_dev
    # Two ticks of the slowest sensor with no run requested: automation has nothing more to do.
    quiet_seconds = 2 * max(sensor.minimum_interval_seconds or 30 for sensor in AUTOMATION_SENSORS) + 10
    with dg.DagsterInstance.from_config(str(dev.dagster_home)) as instance:
        # The folder sensor reports the starting batches; the data stages follow. This test launches nothing.
        wait_until(
            lambda: latest_materialization(instance, "preference_split") > 0,
            AUTOMATION_WAIT_SECONDS,
            "the data stages on the starting batches",
            dev.log,
        )
        wait_until_quiet(instance, quiet_seconds, dev.log)

        # A new batch: the next lines of a bundled file, under a new name.
        dropped = time.time()
        name = next(iter(SLICE_LINES))
        with open(BUNDLED / name, encoding="utf-8") as source:
            lines = source.readlines()[SLICE_LINES[name] : SLICE_LINES[name] + 200]
        (dev.annotations / "vendor_batch_8.jsonl").write_text("".join(lines), encoding="utf-8")
        for stage in DATA_STAGES:
            wait_until(
                lambda stage=stage: latest_materialization(instance, stage) > dropped,
                AUTOMATION_WAIT_SECONDS,
                f"{stage} after a new batch",
                dev.log,
            )
        assert latest_materialization(instance, "annotation_folder") > dropped  # the folder sensor saw it
        batches = instance.get_latest_materialization_event(dg.AssetKey("raw_annotations")).asset_materialization
        files = [Path(record.data["file"]).name for record in batches.metadata["batches"].value.records]
        assert "vendor_batch_8.jsonl" in files
        requested = runs_since(instance, dropped)
        assert requested and all(run.tags.get(SENSOR_TAG) for run in requested), "runs a sensor requested, no click"
        wait_until_quiet(instance, quiet_seconds, dev.log)

        # A batch that breaks the raw_annotations gate: stopped there, and no model trained on it.
        dropped = time.time()
        (dev.annotations / "vendor_batch_9.jsonl").write_text("\n".join(GATE_BREAKING_BATCH) + "\n")
        gate = dg.AssetCheckKey(dg.AssetKey("raw_annotations"), "raw_annotations_valid")

        def gate_failed() -> bool:
            latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([gate]).get(gate)
            return latest is not None and latest.create_timestamp > dropped and latest.status.value == "FAILED"

        wait_until(gate_failed, AUTOMATION_WAIT_SECONDS, "raw_annotations_valid failing", dev.log)
        wait_until_quiet(instance, quiet_seconds, dev.log)
        for stage in DATA_STAGES[1:]:
            assert latest_materialization(instance, stage) < dropped, f"{stage} ran past a failed gate"
        requested = runs_since(instance, dropped)
        assert requested and all(run.tags.get(SENSOR_TAG) for run in requested)
        assert not any(targets(run, "reward_model") for run in requested), "reward_model requested past a failed gate"
