"""The first hour of a new user: the default training command, launched for real, and its figures.

    OMP_NUM_THREADS=1 python benchmarks/default_run.py                    # accelerate launch, warm-up + 1 run
    python benchmarks/default_run.py --launcher python --runs 3           # `python scripts/pretrain.py`

Each measured run is the README's command, ``accelerate launch scripts/pretrain.py`` (or, with ``--launcher
python``, ``python scripts/pretrain.py``, which is what ``recperc-pretrain`` runs) with nothing but ``--output_dir``
added, started in a fresh process from the clone's root. A first run warms the caches (page cache, bytecode, the
pixel store and pixel spectrum); the figures are the medians of the ``--runs`` warm runs:

* ``monitor share``: the job's own timer (its last log line, ``time: ... (monitor X% of the run)``): the
  evaluations, the pixel spectrum and the figures, over the run's wall time (acceptance <= 20%);
* ``command to card``: seconds from starting the command to the model card (``README.md``) in ``output_dir``
  (acceptance <= 25 s);
* ``first log line``: seconds from starting the command to the first line the job logs (acceptance <= 5 s);
  ``launcher`` is when the script itself starts (its first import), which is the launcher's own cost;
* ``second run refused``: the identical command again on the same ``output_dir``: seconds until it exits and the
  last line it printed (a one-line error naming ``--output_dir``).

Printed as ``name: value`` lines, the figures last.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) ")
MONITOR_SHARE = re.compile(r"\(monitor ([\d.]+)% of the run\)")


def command(launcher: str, output_dir: Path) -> list[str]:
    script = str(ROOT / "scripts" / "pretrain.py")
    if launcher == "accelerate":
        return [
            str(Path(sys.executable).with_name("accelerate")),
            "launch",
            script,
            "--output_dir",
            str(output_dir),
        ]
    return [sys.executable, script, "--output_dir", str(output_dir)]


def environment(marker: Path) -> dict:
    """The user's environment, with the package of this clone first and a marker of the script's start: the
    ``-X importtime``-free way to time the launcher is a ``sitecustomize`` that touches a file."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(marker.parent), str(ROOT), env.get("PYTHONPATH", "")])
    marker.parent.mkdir(parents=True, exist_ok=True)
    (marker.parent / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if sys.argv and sys.argv[0].endswith('pretrain.py'):\n"
        f"    open({str(marker)!r}, 'a').write(f'{{time.time()}}\\n')\n"
    )
    return env


def launch(argv: list[str], env: dict, card: Path | None) -> dict:
    """Run ``argv``; returns the wall time, the time of the first log line and of ``card``, the output lines."""
    start = time.time()
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    seen = {"card": None}

    def watch_card():
        while process.poll() is None and card is not None:
            if card.exists():
                seen["card"] = time.time() - start
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_card, daemon=True)
    watcher.start()
    lines, first_log = [], None
    for raw in process.stdout:
        for line in raw.replace("\r", "\n").splitlines():  # tqdm redraws with carriage returns
            if first_log is None and LOG_LINE.match(line):
                first_log = time.time() - start
            lines.append(line)
    process.wait()
    watcher.join()
    return {"seconds": time.time() - start, "rc": process.returncode, "first_log": first_log, "card": seen["card"],
            "lines": lines, "start": start}  # fmt: skip


def monitor_share(lines: list[str]) -> float:
    for line in reversed(lines):
        match = MONITOR_SHARE.search(line)
        if match:
            return float(match.group(1))
    raise RuntimeError("the job printed no timing line:\n" + "\n".join(lines[-20:]))


def script_start(marker: Path, start: float) -> float | None:
    if not marker.exists():
        return None
    return float(marker.read_text().split()[0]) - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--launcher", choices=("accelerate", "python"), default="accelerate")
    parser.add_argument("--runs", type=int, default=1, help="warm runs measured (after one warm-up run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recperc-default-run-"))
    marker = work / "site" / "script_start"
    env = environment(marker)
    print(f"command: {' '.join(command(args.launcher, Path('OUTPUT_DIR')))} (from {ROOT})", flush=True)
    try:
        figures = {"monitor": [], "card": [], "first_log": [], "launcher": []}
        for run in range(args.runs + 1):
            output_dir = work / f"run-{run}"
            marker.unlink(missing_ok=True)
            result = launch(command(args.launcher, output_dir), env, output_dir / "README.md")
            if result["rc"] != 0:
                raise RuntimeError(
                    f"run {run} failed (exit {result['rc']}):\n" + "\n".join(result["lines"][-20:])
                )
            kind = "warm-up" if run == 0 else f"run {run}"
            print(
                f"{kind}: {result['seconds']:.1f} s, first log line {result['first_log']:.1f} s, card "
                f"{result['card']:.1f} s, monitor {monitor_share(result['lines']):.1f}%", flush=True,
            )  # fmt: skip
            if run == 0:
                continue
            figures["monitor"].append(monitor_share(result["lines"]))
            figures["card"].append(result["card"])
            figures["first_log"].append(result["first_log"])
            figures["launcher"].append(script_start(marker, result["start"]))
        # The same command on the same output_dir: refused at once, in one line.
        marker.unlink(missing_ok=True)
        again = launch(command(args.launcher, work / f"run-{args.runs}"), env, None)
        last = again["lines"][-1] if again["lines"] else ""
        median = statistics.median
        print(f"launcher (command to script start): {median(figures['launcher']):.1f} s")
        print(f"second run refused: exit {again['rc']} after {again['seconds']:.1f} s; last line: {last}")
        print(f"monitor share: {median(figures['monitor']):.1f}% (acceptance <= 20%)")
        print(f"command to card: {median(figures['card']):.1f} s (acceptance <= 25 s)")
        print(f"first log line: {median(figures['first_log']):.1f} s (acceptance <= 5 s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
