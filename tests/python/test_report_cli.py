"""test_report_cli.py — `reftrain report` on real runs, rendered by a real browser.

A tiny model trains with evals (samples shown), a tracer line every 5 steps and a forced invariant
warning; a failure scenario runs both halves. `reftrain report` turns each directory into one HTML page,
which must be self-contained (no script, nothing fetched) and under 1 MB. Then headless Chromium (Debian's
`chromium`) renders each page: its DOM must hold the charts and heat maps as SVG, with drawn series, and
its screenshot must not be blank (enough non-white pixels and colours). The screenshots are left in the
work directory for a person to look at (report_*.png).
Exit 0 pass, 1 fail; Chromium missing: the browser checks are reported as SKIPPED and the rest still runs.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tiny_cli import CONFIG, check, env, finish, fresh_workdir, parse_cli, sets


def png_pixels(path):
    """(width, height, rows of RGB tuples) of a screenshot, read with Pillow (a dependency of tensorboard,
    which scripts/setup.sh installs into the venv)."""
    from PIL import Image
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        data = list(rgb.getdata())
    return width, height, [data[y * width:(y + 1) * width] for y in range(height)]


def browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def render(chrome, page, png):
    """The page's DOM after Chromium parsed it, and a screenshot of it."""
    common = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
              "--disable-dev-shm-usage"]
    dom = subprocess.run(common + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = subprocess.run(common + ["--window-size=1400,2200", f"--screenshot={png}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    return dom, shot


def check_page(name, page, chrome, work, want_charts, want_heatmaps=0):
    html = page.read_text()
    size = page.stat().st_size
    n_charts, n_maps = html.count('<svg class="chart"'), html.count('<svg class="heatmap"')
    print(f"  [measured] {name}: {size / 1024:.0f} KiB, {n_charts} charts, {n_maps} heat maps")
    check(size < 1024 * 1024, f"{name}: the page is {size} bytes, over 1 MB")
    check("<script" not in html.lower(), f"{name}: the page holds a script")
    check(not re.search(r"(src|href)=\"https?:", html), f"{name}: the page fetches something from the network")
    if chrome is None:
        return
    png = work / f"report_{name}.png"
    dom, shot = render(chrome, page, png)
    check(dom.returncode == 0 and shot.returncode == 0 and png.exists(),
          f"{name}: chromium failed: {dom.stderr[-400:]} {shot.stderr[-400:]}")
    if not png.exists():
        return
    charts = dom.stdout.count('<svg class="chart"')
    heatmaps = dom.stdout.count('<svg class="heatmap"')
    series = dom.stdout.count("<polyline") + dom.stdout.count("<circle")
    check(charts >= want_charts, f"{name}: the rendered DOM has {charts} charts, expected at least {want_charts}")
    check(heatmaps >= want_heatmaps, f"{name}: the rendered DOM has {heatmaps} heat maps, expected {want_heatmaps}")
    check(series >= want_charts, f"{name}: only {series} drawn series (polylines and points) in {charts} charts")
    width, height, rows = png_pixels(png)
    pixels = [p for row in rows[::4] for p in row[::4]]
    ink = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    colours = len(set(pixels))
    print(f"  [measured] {name}: screenshot {width}x{height}, {ink:.1%} non-white, {colours} colours "
          f"(sampled every 4th pixel); DOM: {charts} charts, {heatmaps} heat maps, {series} series")
    check(ink > 0.03 and colours > 20, f"{name}: the screenshot looks blank ({ink:.1%} ink, {colours} colours)")


def main():
    args = parse_cli()
    work = fresh_workdir(args)
    reftrain = args.reftrain
    chrome = browser()
    if chrome is None:
        print("SKIPPED: the browser checks (no chromium on PATH; scripts/setup.sh installs Debian's chromium for the tests)")

    print("a tiny training run: evals with samples, tracer lines, an invariant warning")
    run = work / "train"
    # loss.no_spike with a z-threshold of 0.5 warns on ordinary noise: a warning on the timeline, on purpose.
    extra = [f"run_dir={run}", "train.max_steps=60", "eval.every=20", "eval.samples=2", "data.val_examples=20",
             "eval.exact_match_examples=6", "tracer.summary_every=5", "log_every=20", "train.loss_spike_z=0.5",
             "invariants={\"default\": \"warn\"}"]
    p = subprocess.run([reftrain, "train", "--config", CONFIG] + sets(extra), capture_output=True, text=True, env=env(),
                       timeout=300)
    check(p.returncode == 0, f"the training run failed: {p.stderr[-800:]}")
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = {}
    for l in lines:
        kinds[l.get("kind")] = kinds.get(l.get("kind"), 0) + 1
    print(f"  [measured] metrics.jsonl: {kinds}")
    check(kinds.get("tracer", 0) == 12, f"expected 12 tracer lines (every 5 of 60 steps), got {kinds.get('tracer')}")
    check(kinds.get("invariant", 0) >= 1, "no invariant line although loss.no_spike warns at z 0.5")
    evals = [l for l in lines if l.get("kind") == "eval"]
    check(evals and all(len(e.get("samples", [])) == 2 for e in evals), f"evals without their 2 samples: {evals[:1]}")
    p = subprocess.run([reftrain, "report", str(run)], capture_output=True, text=True, env=env(), timeout=120)
    check(p.returncode == 0 and (run / "report.html").exists(), f"reftrain report failed: {p.stderr[-800:]}")
    if (run / "report.html").exists():
        check_page("train", run / "report.html", chrome, work, want_charts=5, want_heatmaps=2)

    print("an fp16 run that overflows: the tracer's run-up at full resolution, the first near-overflow outlined")
    run = work / "fp16"
    # lr 0.3 without clipping: an MLP output passes 65504 within a few dozen steps; every step after is skipped
    # until the loss scale underflows and the run stops with an error (exit 1), as it should.
    extra = [f"run_dir={run}", "train.precision=fp16", "schedule.lr=0.3", "train.grad_clip=0", "train.max_steps=300",
             "tracer.summary_every=10"]
    p = subprocess.run([reftrain, "train", "--config", CONFIG] + sets(extra), capture_output=True, text=True, env=env(),
                       timeout=300)
    check(p.returncode == 1 and "the run has diverged" in p.stderr, f"the fp16 run was expected to diverge: {p.stderr[-400:]}")
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train = [l for l in lines if l.get("kind") == "train"]
    first_skip = next((l["step"] for l in train if l.get("skipped")), None)
    tracer_steps = sorted(l["step"] for l in lines if l.get("kind") == "tracer")
    near = [l["step"] for l in lines if l.get("kind") == "tracer" and l.get("near_overflow")]
    print(f"  [measured] first skipped step {first_skip}; tracer lines at steps {tracer_steps[:14]}...; "
          f"first near-overflow line at step {min(near) if near else None}")
    if first_skip is not None:
        # The ring holds 21 frames: every step of the 20 before the first trip has its line, not only every 10th.
        want = list(range(max(1, first_skip - 20), first_skip + 1))
        check(all(s in tracer_steps for s in want), f"the run-up before step {first_skip} is not at full resolution: "
                                                    f"{[s for s in want if s not in tracer_steps]} missing")
    check(near and min(near) <= (first_skip or 0), f"no near-overflow line at or before the first skipped step {first_skip}")
    p = subprocess.run([reftrain, "report", str(run)], capture_output=True, text=True, env=env(), timeout=120)
    html = (run / "report.html").read_text() if p.returncode == 0 else ""
    check("within 10x of its dtype&#39;s 65504" in html, "the page does not name the first near-overflow tensor")
    if html:
        check_page("fp16", run / "report.html", chrome, work, want_charts=5, want_heatmaps=2)

    print("a failure scenario: both halves side by side")
    fdir = work / "failures"
    p = subprocess.run([reftrain, "failure", "run", "scheduler-per-microbatch", "--run-dir", str(fdir)],
                       capture_output=True, text=True, env=env(), timeout=300)
    check(p.returncode == 0, f"the failure run failed: {p.stderr[-600:]}")
    scenario = next(iter(sorted(fdir.rglob("failure.json"))), None)
    check(scenario is not None, f"no failure.json under {fdir}")
    if scenario is not None:
        p = subprocess.run([reftrain, "report", str(scenario.parent), "--out", str(work / "failure.html")],
                           capture_output=True, text=True, env=env(), timeout=120)
        check(p.returncode == 0, f"reftrain report of the failure failed: {p.stderr[-600:]}")
        html = (work / "failure.html").read_text() if (work / "failure.html").exists() else ""
        check("detector fired at step" in html, "the failure page does not mark where the detector fired")
        if html:
            check_page("failure", work / "failure.html", chrome, work, want_charts=2)

    print("a bad run directory is a clear error")
    p = subprocess.run([reftrain, "report", str(work / "nowhere")], capture_output=True, text=True, env=env(), timeout=60)
    check(p.returncode == 1 and "no such run directory" in p.stderr, f"report of a missing directory: {p.returncode} {p.stderr[-300:]}")

    return finish()


if __name__ == "__main__":
    sys.exit(main())
