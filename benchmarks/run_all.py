"""Run every benchmarks/bench_*.py script in turn, each in its own process (`make bench`).

One process per script keeps each script's thread settings, memory peak and imports apart.
Arguments (e.g. --quick) are passed through to every script. Exits non-zero if any script failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if not scripts:
        print(f"no bench_*.py scripts in {HERE}", file=sys.stderr)
        return 1
    results = []
    for script in scripts:
        print(f"\n=== {script.name} {' '.join(argv)} ===", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *argv], cwd=HERE.parent)
        results.append((script.name, rc, time.perf_counter() - t))
    print("\n=== summary ===")
    for name, rc, seconds in results:
        print(f"{name:28s} {'ok' if rc == 0 else f'FAILED (exit {rc})':16s} {seconds:7.1f} s")
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
