"""How long does checking take? Parse+check time per spec, one CLI process, and the import.

Run from the repository root:

    .venv/bin/python bench/check_time.py            # a table
    .venv/bin/python bench/check_time.py --json     # the same numbers as JSON
    .venv/bin/python bench/check_time.py -n 50      # more runs per spec

Per spec: the median, min and max of N calls of `mmgraph.compiler.check_file` (after two
warm-up calls, so the parser tables and imports are paid for once). Then the wall time of one
`python -m mmgraph check specs/*.mmg` process (best of 3) and the import time of
`mmgraph.cli` in a fresh interpreter (best of 3), which together are what an editor pays per
keystroke. It prints numbers and asserts nothing; the exit status is 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARMUP = 2


def time_specs(specs: list[Path], runs: int) -> list[dict]:
    from mmgraph.compiler import check_file

    rows = []
    for spec in specs:
        for _ in range(WARMUP):
            result = check_file(spec)
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            result = check_file(spec)
            samples.append((time.perf_counter() - start) * 1000)
        rows.append({
            "spec": str(spec.relative_to(ROOT)),
            "ok": result.ok,
            "median_ms": statistics.median(samples),
            "min_ms": min(samples),
            "max_ms": max(samples),
            "runs": runs,
        })
    return rows


def time_process(argv: list[str], repeats: int = 3) -> dict:
    """Best (and all) wall times of a fresh process, in ms, with its exit status."""
    times, code = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        times.append((time.perf_counter() - start) * 1000)
        code = proc.returncode
    return {"best_ms": min(times), "all_ms": times, "exit": code}


def import_time(repeats: int = 3) -> dict:
    """`import mmgraph.cli` in a fresh interpreter: measured inside it, and the whole process."""
    code = ("import time; t = time.perf_counter(); import mmgraph.cli; "
            "print((time.perf_counter() - t) * 1000)")
    inside, process = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        process.append((time.perf_counter() - start) * 1000)
        inside.append(float(proc.stdout.strip()))
    bare = time_process([sys.executable, "-c", "pass"], repeats)
    return {"import_best_ms": min(inside), "import_all_ms": inside,
            "process_best_ms": min(process), "bare_python_best_ms": bare["best_ms"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="timed runs per spec")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("specs", nargs="*", type=Path,
                        help="specs to time (default: specs/*.mmg)")
    args = parser.parse_args(argv)

    specs = [p.resolve() for p in args.specs] or sorted((ROOT / "specs").glob("*.mmg"))
    rows = time_specs(specs, max(args.runs, 1))
    slowest = max(rows, key=lambda r: r["median_ms"]) if rows else None
    cli = time_process([sys.executable, "-m", "mmgraph", "check",
                        *(str(s.relative_to(ROOT)) for s in specs)])
    imp = import_time()

    if args.json:
        print(json.dumps({
            "python": platform.python_version(),
            "warmup": WARMUP,
            "specs": rows,
            "slowest": slowest["spec"] if slowest else None,
            "total_median_ms": sum(r["median_ms"] for r in rows),
            "cli_check_all": cli,
            "import_mmgraph_cli": imp,
        }, indent=2))
        return 0

    width = max([len(r["spec"]) for r in rows] + [4])
    print(f"check_file: median of {args.runs} runs after {WARMUP} warm-up runs "
          f"(Python {platform.python_version()})")
    print(f"{'spec':<{width}}  {'median ms':>10}  {'min ms':>8}  {'max ms':>8}  ok")
    print("-" * (width + 36))
    for r in rows:
        print(f"{r['spec']:<{width}}  {r['median_ms']:>10.2f}  {r['min_ms']:>8.2f}  "
              f"{r['max_ms']:>8.2f}  {'yes' if r['ok'] else 'NO'}")
    print("-" * (width + 36))
    print(f"{'total (sum of medians)':<{width}}  {sum(r['median_ms'] for r in rows):>10.2f}")
    if slowest:
        print(f"slowest: {slowest['spec']} ({slowest['median_ms']:.2f} ms median)")
    print()
    print(f"mmgraph check specs/*.mmg ({len(specs)} specs, one process): "
          f"best of 3 {cli['best_ms']:.0f} ms "
          f"(runs: {', '.join(f'{t:.0f}' for t in cli['all_ms'])} ms; exit {cli['exit']})")
    print(f"import mmgraph.cli (fresh interpreter): best of 3 {imp['import_best_ms']:.0f} ms "
          f"inside the process; whole process {imp['process_best_ms']:.0f} ms "
          f"vs {imp['bare_python_best_ms']:.0f} ms for a bare `python -c pass`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
