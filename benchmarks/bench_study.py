"""`lookalike study` on the demo's generated collection: the whole study's wall time, a second run's, and the published
example report (issue 25).

Goals: from a clean start, `lookalike study --data <the demo's generated collection> --out DIR` finishes in ≤ 5 min
on 2 cores, all three models included; a second run of the same command finishes in ≤ 10 s with every step skipped.

Both runs are the real command in a fresh interpreter (`python -m lookalike.cli study …`), timed as a user sees them
(imports included), into a temporary folder; the demo's collection (`lookalike.study.demo.demo_collection`, 2,000
generated 64×64 images in 20 classes) is generated first, outside the timing. Weights are RANDOM (this machine has no
pretrained weights; speed does not depend on them) and the data GENERATED: the example report says so on every page.
The example report (report.html, report.md and the figures report.md links) is copied into docs/example-study/. The
plan's time estimate is printed beside the measured time, with this machine's calibration (the GFLOP/s that
lookalike.study.estimate.REFERENCE_GFLOPS is compared with).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROOT,
    environment_markdown,
    goal_mark,
    load_watch,
    markdown_table,
    parser,
    should_write,
    write_section,
)
from lookalike.study.demo import demo_collection  # noqa: E402
from lookalike.study.estimate import calibrate  # noqa: E402

SECTION = "The whole study in one command (issue 25)"
EXAMPLE = ROOT / "docs" / "example-study"
GOAL_FIRST_S, GOAL_SECOND_S = 300.0, 10.0
MODELS = "resnet18,mobilenet,clip"


def run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def planned_seconds(stdout: str) -> str:
    m = re.search(r"steps to run, about ([^\n]+)", stdout)
    return m.group(1) if m else "n/a"


def publish(out: Path) -> None:
    """report.html (self-contained), report.md, and the files they link (figures, per-model tables), into
    docs/example-study/."""
    shutil.rmtree(EXAMPLE, ignore_errors=True)
    EXAMPLE.mkdir(parents=True)
    page, text = (out / "report.html").read_text(), (out / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text) + re.findall(r'href="([^"#:]+)"', page)
    for link in dict.fromkeys(links):
        (EXAMPLE / link).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / link, EXAMPLE / link)
    (EXAMPLE / "report.html").write_text(page)
    (EXAMPLE / "report.md").write_text(text)


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--keep", default=None, help="run the study into this folder and keep it (default: a temp folder)")
    args = p.parse_args()
    models = "resnet18" if args.quick else MODELS
    images = 200 if args.quick else 2000
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lookalike-bench-study-"))
    try:
        data = demo_collection(work / "data", images)
        out = work / "study"
        command = [sys.executable, "-m", "lookalike.cli", "study", "--data", str(data), "--out", str(out)]
        command += ["--models", models, "--weights", "random"]
        if args.threads:
            command += ["--threads", str(args.threads)]
        calibration = calibrate()
        with load_watch() as load:
            first, first_out = run(command)
            second, second_out = run(command)
        print(first_out)
        print(second_out)
        skipped = "everything is done" in second_out and re.search(r"\b0 step\(s\) run", second_out) is not None
        rows = [
            ["first run (every step)", f"{first:.0f} s", planned_seconds(first_out), f"≤ {GOAL_FIRST_S:.0f} s",
             goal_mark(first <= GOAL_FIRST_S, load)],
            ["second run (every step skipped)", f"{second:.1f} s", "–", f"≤ {GOAL_SECOND_S:.0f} s",
             goal_mark(second <= GOAL_SECOND_S and skipped, load)],
        ]  # fmt: skip
        table = markdown_table(["run", "wall time", "the plan's estimate", "goal", "met"], rows)
        print(table)
        print(f"calibration: {calibration.describe()}")
        if args.quick or not should_write(args):
            return 0
        publish(out)
        write_section(
            SECTION,
            "\n\n".join(
                [
                    f"`lookalike study --data <demo collection> --out DIR --models {models} --weights random` on the"
                    f" demo's GENERATED collection ({images} images of 64×64 px in 20 classes) with RANDOM weights,"
                    " each run the real command in a fresh interpreter, imports included. The example report it"
                    " wrote is published in [docs/example-study/](example-study/report.html) (open report.html).",
                    table,
                    f"- Calibration: {calibration.describe()}.",
                    environment_markdown(load),
                ]
            ),
        )
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
