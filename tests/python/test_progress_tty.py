"""test_progress_tty.py — the training progress line on a real terminal (tmux), as a person sees it.

`reftrain train` runs inside a detached tmux session of a given width; the screen is read back with
`tmux capture-pane` while it trains and after it ends. On a terminal the loop draws one progress line and
redraws it in place. Checked at 100 and at 60 columns:
- while training and at the end there is exactly one progress line on the screen (a redraw that wrapped
  or was not returned to the line's start would leave several, and so would a message printed over it
  without clearing it first), and no screen line is a wrapped tail of it;
- the progress line fits the width (other text may wrap, as text does); at the end it reads "step N/N"
  with the bar full;
- the eval lines and the invariant warnings printed mid-run sit on lines of their own, never glued to
  the progress line.
Exit 0 pass, 1 fail, 77 when tmux is missing (scripts/setup.sh installs it for the tests).
"""
import re
import shutil
import subprocess
import sys
import time

from tiny_cli import CONFIG, check, finish, fresh_workdir, parse_cli, sets

BAR = re.compile(r"(\[[#.]+\] )?step (\d+)/(\d+) loss")


def tmux(socket, *args):
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30)


def run_in_terminal(reftrain, work, columns, steps):
    socket = f"reftrain_test_{columns}"
    run_dir = work / f"run{columns}"
    extra = [f"run_dir={run_dir}", f"train.max_steps={steps}", "eval.every=100", "eval.samples=1", "data.val_examples=10",
             "eval.exact_match_examples=2", "train.loss_spike_z=0.5", "invariants={\"default\": \"warn\"}"]
    command = " ".join(f"'{a}'" for a in [reftrain, "train", "--config", CONFIG] + sets(extra))
    # OMP: one thread, as in the other CLI tests; the trailing sleep keeps the pane open for the last read.
    shell = f"OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE {command}; echo EXIT=$?; sleep 60"
    tmux(socket, "kill-server")
    p = tmux(socket, "new-session", "-d", "-s", "t", "-x", str(columns), "-y", "40", shell)
    if p.returncode != 0:
        return None, [f"tmux new-session failed: {p.stderr}"]
    screens = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        screen = tmux(socket, "capture-pane", "-p", "-t", "t").stdout
        screens.append(screen)
        if "EXIT=" in screen:
            break
        time.sleep(0.15)
    tmux(socket, "kill-server")
    return screens, []


def check_screen(screen, columns, name):
    lines = [l.rstrip() for l in screen.splitlines()]
    bars = [l for l in lines if BAR.search(l)]
    check(len(bars) <= 1, f"{name}: {len(bars)} progress lines on the screen (one is redrawn in place): {bars[:4]}")
    for l in bars:
        check(len(l) < columns, f"{name}: the progress line reaches the last column ({len(l)} of {columns}): {l!r}")
    for l in lines:
        # A wrapped progress line leaves its tail ("... tok/s ETA 0m01s") on a line of its own.
        check(not (re.search(r"tok/s ETA|gnorm \d|^\s*ETA \d", l) and not BAR.search(l)), f"{name}: a wrapped tail of the progress line: {l!r}")
        for glued in ("eval step", "warning:", "checkpoint:", "test:"):
            check(not (BAR.search(l) and glued in l), f"{name}: '{glued}' printed on the progress line: {l!r}")
    return bars


def main():
    args = parse_cli()
    if shutil.which("tmux") is None:
        print("SKIPPED: tmux is not installed (scripts/setup.sh installs it for the tests)")
        return 77
    work = fresh_workdir(args)
    steps = 300
    for columns in (100, 60):
        print(f"a {columns}-column terminal, {steps} steps")
        screens, errors = run_in_terminal(args.reftrain, work, columns, steps)
        for e in errors:
            check(False, e)
        if not screens:
            continue
        final = screens[-1]
        check("EXIT=0" in final, f"{columns} columns: the run did not end with status 0:\n{final}")
        mid = [s for s in screens if BAR.search(s) and "EXIT=" not in s]
        check(len(mid) >= 3, f"{columns} columns: the progress line was seen on only {len(mid)} screens while training")
        steps_seen = sorted({int(m.group(2)) for s in mid for m in [BAR.search(s)] if m})
        for i, s in enumerate(mid):
            check_screen(s, columns, f"{columns} columns, screen {i}")
        bars = check_screen(final, columns, f"{columns} columns, final screen")
        last = bars[-1] if bars else ""
        check(f"step {steps}/{steps}" in last, f"{columns} columns: the last progress line is {last!r}")
        check("." not in last.split("]")[0] if last.startswith("[") else True, f"{columns} columns: the bar is not full: {last!r}")
        evals = [l for l in final.splitlines() if l.startswith("eval step")]
        warnings = [l for l in final.splitlines() if l.startswith("warning:")]
        print(f"  [measured] {len(screens)} screens read, steps seen {steps_seen[:3]}...{steps_seen[-2:]}; last line "
              f"{len(last)} chars: {last!r}; {len(evals)} eval lines, {len(warnings)} warning lines on the final screen")
        (work / f"screen_{columns}.txt").write_text(final)
    return finish()


if __name__ == "__main__":
    sys.exit(main())
