"""Interactive latency of the dashboard in a real Chromium (issue 13's goals), against the running app.

    python bench/interactive.py [--repeat 5] [--headed]

Starts ``streamlit run dashboard/server.py`` on a free port with a fresh ``HISTODASH_HOME`` (empty result
cache; the repository's models), drives Debian's Chromium with Playwright, warms the process up once
(TensorFlow import, model load: not counted), then times each action ``--repeat`` times (≥ 5) and reports
the median, min and max against the goal:

| action | from | until |
|---|---|---|
| 14 new tiles | click *Predict 14 tile(s)* (14 tiles never seen, cut from the demo slide at new places) | the result shows "From cache 0/14" |
| 14 tiles from the cache | click *Predict* again | "From cache 14/14" |
| widget change on Tile prediction | a key press moves the threshold slider | the server finished that (fragment) run |
| Grad-CAM of one tile | click *Compute* (a tile not explained before) | the map's heading shows that tile |
| colour map / opacity change | choose another colour map, or a key press on the opacity slider | the server finished that run and the overlay image has loaded |
| survival Analyse, demo cohort | click *Analyse* (0 permutations) | the server finished that run |

"The server finished that run" is read from the websocket: the ``script_finished`` message Streamlit sends
(decoded with Streamlit's own protobuf classes), after the action. Writes ``bench/results/interactive.json``
and ``bench/results/interactive.md``. The machine's load average before and after is recorded beside the
numbers: on a shared machine they are only provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEMO_SLIDE = ROOT / "engine" / "demo" / "slides" / "CMU-1-Small-Region.svs"
N_TILES = 14
TIMEOUT_MS = 900_000  # the warm-up imports TensorFlow, minutes on a loaded machine
ACTION_MS = 60_000  # a menu option that has not appeared after this will not appear
GOALS = {  # seconds (issue 13, "Latency goals")
    "predict_new_14": ("14 new tiles", 3.0),
    "predict_cached_14": ("14 tiles from the cache", 1.0),
    "predict_widget": ("a widget change on Tile prediction", 0.5),
    "gradcam_one": ("Grad-CAM of one tile", 1.5),
    "gradcam_display": ("colour map / opacity change on Grad-CAM", 0.3),
    "survival_analyse": ("survival Analyse, demo cohort, no permutations", 1.0),
}


# ----------------------------------------------------------------------------------------- tiles
def cut_tiles(folder: Path, rep: int, n: int = N_TILES, px: int = 144) -> list[Path]:
    """``n`` tiles from the demo slide at random tissue places (seeded by ``rep``: new pixels for every repetition)."""
    import openslide
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1000 + rep)
    out = []
    with openslide.OpenSlide(str(DEMO_SLIDE)) as slide:
        w, h = slide.dimensions
        while len(out) < n:
            x, y = int(rng.integers(0, w - px)), int(rng.integers(0, h - px))
            rgb = np.asarray(slide.read_region((x, y), 0, (px, px)).convert("RGB"))
            if rgb.mean() > 215:  # mostly glass
                continue
            path = folder / f"r{rep}_{len(out):02d}_{x}_{y}.png"
            Image.fromarray(rgb).save(path)
            out.append(path)
    return out


# ----------------------------------------------------------------------------------------- browser helpers
class Frames:
    """``script_finished`` messages received on the page's websockets, with their arrival time."""

    def __init__(self, page):
        self.finished: list[float] = []
        page.on("websocket", self._attach)

    def _attach(self, ws) -> None:
        ws.on("framereceived", self._frame)

    def _frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = ForwardMsg()
        try:
            msg.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - not a ForwardMsg
            return
        if msg.WhichOneof("type") == "script_finished" and msg.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
            self.finished.append(time.perf_counter())

    def wait_after(self, page, t0: float, timeout_s: float = 120.0) -> float:
        """The time of the first run finished after ``t0`` (events are delivered while Playwright is polled)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            done = [t for t in self.finished if t > t0]
            if done:
                return done[0]
            page.wait_for_timeout(5)
        raise TimeoutError("no script run finished")


def main_area(page):
    return page.get_by_test_id("stMain")


def nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=re.compile(rf"{re.escape(title)}$")).click()
    main_area(page).get_by_role("heading", level=1).first.wait_for()


def settle(page, frames: Frames, quiet_ms: int = 400) -> None:
    """Wait until no script run has finished for ``quiet_ms`` (the page is idle)."""
    while True:
        before = len(frames.finished)
        page.wait_for_timeout(quiet_ms)
        if len(frames.finished) == before:
            return


def metric_value(page, label: str) -> str:
    box = main_area(page).get_by_test_id("stMetric").filter(has_text=label).first
    return box.get_by_test_id("stMetricValue").inner_text().strip()


def wait_metric(page, label: str, value: str) -> None:
    page.wait_for_function(
        """([label, value]) => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stMetric]')]
            .some(m => m.innerText.includes(label) && m.querySelector('[data-testid=stMetricValue]')?.innerText.trim() === value)""",
        arg=[label, value], timeout=TIMEOUT_MS, polling=10)


def images_ready(page, n_min: int = 1) -> None:
    page.wait_for_function(
        """(n) => { const imgs = [...document.querySelectorAll('[data-testid=stMain] [data-testid=stImage] img')];
            return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }""", arg=n_min, timeout=TIMEOUT_MS, polling=10)


# ----------------------------------------------------------------------------------------- the actions
def upload_fresh(page, frames, files: list[Path]) -> None:
    nav(page, "Upload")
    count = main_area(page).get_by_text(re.compile(r"^\d+ tile\(s\) in this session$"))
    count.wait_for()
    if not count.inner_text().startswith("0 "):
        main_area(page).get_by_role("button", name=re.compile("Remove all tiles")).click()
        main_area(page).get_by_text("0 tile(s) in this session").wait_for(timeout=TIMEOUT_MS)
    main_area(page).locator("input[type=file]").first.set_input_files([str(f) for f in files])
    main_area(page).get_by_text(f"{len(files)} tile(s) in this session").wait_for(timeout=TIMEOUT_MS)
    settle(page, frames)


def predict(page, frames, expect_cached: str) -> float:
    button = main_area(page).get_by_role("button", name=f"Predict {N_TILES} tile(s)")
    button.wait_for()
    settle(page, frames)
    t0 = time.perf_counter()
    button.click()
    wait_metric(page, "From cache", expect_cached)
    return time.perf_counter() - t0


def predict_widget(page, frames) -> float:
    thumb = main_area(page).get_by_test_id("stSlider").filter(has_text="Threshold").get_by_role("slider")
    deadline = time.monotonic() + 60
    while thumb.count() != 1 and time.monotonic() < deadline:  # a fragment redraw briefly keeps the old slider too
        page.wait_for_timeout(100)
    thumb.focus()
    settle(page, frames)
    t0 = time.perf_counter()
    thumb.press("ArrowRight")
    return frames.wait_after(page, t0) - t0


def menu_option(page, box, name: str):
    """Open a select box and type ``name`` (a long list is virtualised: its later options are not in the DOM); the option, shown."""
    box.click()
    page.keyboard.type(name)
    option = page.get_by_role("option", name=name, exact=True)
    option.wait_for(timeout=ACTION_MS)
    return option


def gradcam_one(page, frames, tile_name: str) -> float:
    menu_option(page, main_area(page).get_by_test_id("stSelectbox").filter(has_text="Tile").first, tile_name).click()
    settle(page, frames)
    t0 = time.perf_counter()
    main_area(page).get_by_role("button", name="Compute", exact=True).click()
    main_area(page).get_by_role("heading", name=tile_name, exact=True).wait_for(timeout=TIMEOUT_MS)
    images_ready(page, 3)
    return time.perf_counter() - t0


def gradcam_display(page, frames, rep: int) -> float:
    settle(page, frames)
    if rep % 2 == 0:  # colour map: the next one in the list
        from engine.gradcam import COLORMAPS

        box = main_area(page).get_by_test_id("stSelectbox").filter(has_text="Colour map")
        current = box.inner_text()
        target = next(c for c in COLORMAPS[(rep // 2) % len(COLORMAPS) + 1 :] + COLORMAPS if c not in current)
        option = menu_option(page, box, target)
        t0 = time.perf_counter()
        option.click()
    else:  # opacity
        thumb = main_area(page).get_by_test_id("stSlider").filter(has_text="Opacity").get_by_role("slider")
        thumb.focus()
        t0 = time.perf_counter()
        thumb.press("ArrowRight" if rep % 4 == 1 else "ArrowLeft")
    done = frames.wait_after(page, t0)
    images_ready(page, 3)
    return max(done, time.perf_counter()) - t0


def survival_analyse(page, frames) -> float:
    button = main_area(page).get_by_role("button", name="Analyse", exact=True)
    button.wait_for()
    perm = main_area(page).get_by_role("spinbutton", name="Permutations (0 = none)")
    if perm.count() and perm.input_value() != "0":
        perm.fill("0")
    settle(page, frames)
    t0 = time.perf_counter()
    button.click()
    return frames.wait_after(page, t0) - t0


# ----------------------------------------------------------------------------------------- driver
def run(repeat: int, headed: bool) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    times: dict[str, list[float]] = {k: [] for k in GOALS}
    with tempfile.TemporaryDirectory(prefix="histodash-bench-") as tmp:
        tmp = Path(tmp)
        env = {"HISTODASH_HOME": str(tmp / "home"), "HISTODASH_CACHE_DIR": None, "HISTODASH_WORK_DIR": None, "HISTODASH_JOBS_DIR": None,
               "HISTODASH_PASSWORD_HASH": None, "HISTODASH_MODELS_DIR": None, "HISTODASH_SLIDES_DIR": None, "HISTODASH_EXAMPLES_DIR": None}
        with streamlit_server(env, tmp / "streamlit.log") as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=not headed, args=CHROMIUM_ARGS)
            try:
                page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                frames = Frames(page)
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_test_id("stSidebarNav").wait_for()
                for rep in range(-1, repeat):  # rep -1: warm-up, not counted
                    files = cut_tiles(tmp / "tiles", rep)
                    upload_fresh(page, frames, files)
                    nav(page, "Tile prediction")
                    new = predict(page, frames, f"0/{N_TILES}")
                    cached = predict(page, frames, f"{N_TILES}/{N_TILES}")
                    widget = predict_widget(page, frames)
                    nav(page, "Grad-CAM")
                    one = gradcam_one(page, frames, files[rep % N_TILES].name)
                    display = gradcam_display(page, frames, rep)
                    nav(page, "Cohort survival")
                    analyse = survival_analyse(page, frames)
                    if rep >= 0:
                        for key, value in zip(GOALS, (new, cached, widget, one, display, analyse)):
                            times[key].append(value)
                    print(f"rep {rep}: " + ", ".join(f"{k} {v:.2f}s" for k, v in zip(GOALS, (new, cached, widget, one, display, analyse))), flush=True)
            except Exception:
                page.screenshot(path=str(tmp.parent / "histodash-bench-failure.png"), full_page=True)
                print(f"failed: screenshot {tmp.parent / 'histodash-bench-failure.png'}; server log tail:\n{(tmp / 'streamlit.log').read_text()[-3000:]}")
                raise
            finally:
                browser.close()
    return times


def report(times: dict[str, list[float]], load_before, load_after, args) -> dict:
    rows = []
    for key, (label, goal) in GOALS.items():
        values = times[key]
        med = statistics.median(values)
        rows.append({"key": key, "action": label, "goal_s": goal, "median_s": round(med, 3), "min_s": round(min(values), 3),
                     "max_s": round(max(values), 3), "n": len(values), "meets_goal": med <= goal, "values_s": [round(v, 3) for v in values]})
    return {"benchmark": "interactive", "when": time.strftime("%Y-%m-%d %H:%M:%S"), "repeat": args.repeat, "tiles": N_TILES,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_avg_before": load_before, "load_avg_after": load_after},
            "rows": rows}


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "interactive.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    lines = [
        "# Interactive latency (bench/interactive.py)", "",
        f"Real Chromium via Playwright against `streamlit run dashboard/server.py`, warm process, median of {result['repeat']}; "
        f"{result['when']}; {m['cpus']} CPUs; load average before {m['load_avg_before']}, after {m['load_avg_after']}.", "",
        "| action | goal | median | min | max | n | meets goal |", "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['action']} | ≤ {r['goal_s']:g} s | {r['median_s']:.2f} s | {r['min_s']:.2f} s | {r['max_s']:.2f} s | {r['n']} | "
                     f"{'yes' if r['meets_goal'] else '**no**'} |")
    (RESULTS / "interactive.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Interactive latency of the dashboard in a real Chromium.")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of every action (≥ 5 for the report)")
    parser.add_argument("--headed", action="store_true", help="show the browser")
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    times = run(max(1, args.repeat), args.headed)
    result = report(times, load_before, [round(x, 2) for x in os.getloadavg()], args)
    write(result)
    print((RESULTS / "interactive.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
