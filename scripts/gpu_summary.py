"""Summary of a scripts/gpu_check.sh run: OUT/summary.md and OUT/summary.json.

Standard library only, so that it still writes a summary when the build, torch
or trmcore itself is broken. gpu_check.sh calls it after every step, so a run
stopped half-way still leaves the summary of what it did.

Usage::

    python scripts/gpu_summary.py write WORK OUT   # read WORK, write OUT/summary.md and OUT/summary.json
    python scripts/gpu_summary.py junit FILE       # print "passed failed errors skipped" of a JUnit XML file

WORK holds what the check wrote as it went:
    steps.tsv        one line per step: name, status, seconds, note (tab-separated)
    meta.tsv         key, value: GPU, compute capability, versions, mode
    junit-STEP.xml   pytest results of each test step
    bench.json       benchmarks/bench_ops.py --json
    runs/NAME/       run folders (run.json, metrics.csv) of train-source and finetune-METHOD
"""

from __future__ import annotations

import csv
import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

STEPS_FILE = "steps.tsv"
META_FILE = "meta.tsv"
BENCH_FILE = "bench.json"
OK = "ok"
FAILED_PREFIXES = ("FAILED", "TIMEOUT")
# Iterations/s are taken between these logged iterations: after the first window
# (CUDA context, cuDNN autotuning) and before the last one (it holds the final validation).
RATE_FROM, RATE_TO = 50, 150


def read_tsv(path: Path) -> List[List[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line]


def read_steps(work: Path) -> List[Dict[str, object]]:
    steps = []
    for fields in read_tsv(work / STEPS_FILE):
        fields = (fields + ["", "", "", ""])[:4]
        try:
            seconds: Optional[float] = float(fields[2])
        except ValueError:
            seconds = None
        steps.append({"name": fields[0], "status": fields[1], "seconds": seconds, "note": fields[3]})
    return steps


def step_failed(status: str) -> bool:
    return status.startswith(FAILED_PREFIXES)


def junit_counts(path: Path) -> Optional[Dict[str, int]]:
    """Test counts of a pytest JUnit XML file, None when it is missing or unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def read_metrics(path: Path) -> List[Dict[str, float]]:
    rows = []
    if not path.is_file():
        return rows
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = float(value) if value not in (None, "") else float("nan")
                except ValueError:
                    row[key] = float("nan")
            rows.append(row)
    return rows


def steady_rate(rows: List[Dict[str, float]]) -> Optional[float]:
    """Iterations per second between logged iterations RATE_FROM and RATE_TO, else over the whole run."""
    by_iteration = {int(r["iteration"]): r["elapsed_s"] for r in rows if r.get("iteration") == r.get("iteration")}
    if RATE_FROM in by_iteration and RATE_TO in by_iteration and by_iteration[RATE_TO] > by_iteration[RATE_FROM]:
        return (RATE_TO - RATE_FROM) / (by_iteration[RATE_TO] - by_iteration[RATE_FROM])
    if rows and rows[-1].get("elapsed_s", 0) > 0:
        return rows[-1]["iteration"] / rows[-1]["elapsed_s"]
    return None


def run_figures(run_dir: Path) -> Optional[Dict[str, object]]:
    """Final loss, validation Dice, iterations and iterations/s of one run folder."""
    info_path = run_dir / "run.json"
    rows = read_metrics(run_dir / "metrics.csv")
    if not info_path.is_file() and not rows:
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return {
        "iterations": info.get("iterations_done", int(rows[-1]["iteration"]) if rows else None),
        "final_loss": rows[-1]["loss"] if rows else None,
        "val_dice": info.get("val_dice"),
        "it_per_s": steady_rate(rows),
        "method": info.get("method"),
    }


def read_meta(work: Path) -> Dict[str, str]:
    return {fields[0]: (fields[1] if len(fields) > 1 else "") for fields in read_tsv(work / META_FILE)}


def collect(work: Path) -> Dict[str, object]:
    steps = read_steps(work)
    tests = {}
    for step in steps:
        counts = junit_counts(work / f"junit-{step['name']}.xml")
        if counts is not None:
            tests[step["name"]] = counts
    try:
        bench = json.loads((work / BENCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        bench = None
    runs = {}
    for step in steps:
        name = str(step["name"])
        if name == "train-source" or name.startswith("finetune-"):
            figures = run_figures(work / "runs" / name.split("-", 1)[1])
            if figures is not None:
                runs[name] = {**figures, "wall_s": step["seconds"]}
    failed = [str(s["name"]) for s in steps if step_failed(str(s["status"]))]
    return {"meta": read_meta(work), "steps": steps, "failed": failed, "tests": tests, "bench": bench, "runs": runs}


def fmt(value: object, spec: str = ".3f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return missing
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def cell(text: object) -> str:
    """A markdown table cell: pipes escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(summary: Dict[str, object]) -> str:
    meta: Dict[str, str] = summary["meta"]  # type: ignore[assignment]
    lines = ["# trmcore GPU check", ""]
    for key in ("mode", "started", "finished", "gpu", "compute_capability", "driver", "nvcc", "python", "torch",
                "torch_cuda", "cpus", "commit", "wheels"):
        if meta.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {meta[key]}")
    if meta.get("verdict"):
        lines += ["", f"**{meta['verdict']}**"]
    builds = [s for s in summary["steps"] if str(s["name"]).startswith(("build-", "nvcc-compile"))
              and s["status"] == OK]
    if builds:
        lines.append("- build time: " + "; ".join(f"{s['name']} {fmt(s['seconds'], '.0f')} s"
                                                  + (f" ({s['note']})" if s["note"] else "") for s in builds))
    failed = summary["failed"]
    lines += ["", f"Failed steps: {', '.join(failed) if failed else 'none'}", "", "## Steps", "",
              "| step | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for step in summary["steps"]:
        lines.append(f"| {cell(step['name'])} | {cell(step['status'])} | {fmt(step['seconds'], '.0f')} | "
                     f"{cell(step['note'])} |")

    if summary["tests"]:
        lines += ["", "## Tests", "", "| step | passed | failed | errors | skipped |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, c in summary["tests"].items():
            lines.append(f"| {name} | {c['passed']} | {c['failed']} | {c['errors']} | {c['skipped']} |")

    bench = summary["bench"]
    if bench:
        where = bench.get("gpu") or f"{bench.get('threads')} CPU threads"
        lines += ["", f"## bench_ops.py --device {bench.get('device')} ({where}, median of {bench.get('repeats')})", "",
                  "| case | op | ms | GB/s | % of copy | target 70% | torch eager ms | vs eager |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]
        for case in bench.get("cases", []):
            on_gpu = bench.get("device") == "cuda"
            lines.append(f"| {case['case']} | {'device-to-device' if on_gpu else 'memory'} copy | "
                         f"{fmt(case['copy_ms'], '.3f')} | {fmt(case['copy_gbps'], '.0f')} | 100% | | | |")
            for op, f in case["ops"].items():
                met = ("met" if f["of_copy"] >= 0.70 else "NOT met") if on_gpu else "n/a (CPU)"
                lines.append(f"| {case['case']} | {op} | {fmt(f['ms'], '.3f')} | {fmt(f['gbps'], '.0f')} | "
                             f"{f['of_copy']:.0%} | {met} | {fmt(f['eager_ms'], '.3f')} | {fmt(f['vs_eager'], '.1f')}x |")

    if summary["runs"]:
        lines += ["", "## Training on a phantom", "", f"{meta.get('training', '')}", "",
                  f"it/s: iterations {RATE_FROM}-{RATE_TO} (no start-up, no validation; over the whole run when "
                  f"shorter); wall: the whole command.", "",
                  "| run | iterations | final loss | validation Dice | it/s | wall s |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, r in summary["runs"].items():
            lines.append(f"| {name} | {fmt(r['iterations'], 'd')} | {fmt(r['final_loss'], '.4f')} | "
                         f"{fmt(r['val_dice'], '.4f')} | {fmt(r['it_per_s'], '.1f')} | {fmt(r['wall_s'], '.0f')} |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def write(work: Path, out: Path) -> Dict[str, object]:
    summary = collect(work)
    write_atomic(out / "summary.md", render(summary))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def main(argv: List[str]) -> int:
    if len(argv) == 3 and argv[0] == "write":
        write(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) == 2 and argv[0] == "junit":
        counts = junit_counts(Path(argv[1]))
        if counts is None:
            print(f"{argv[1]}: no readable JUnit XML", file=sys.stderr)
            return 2
        print(counts["passed"], counts["failed"], counts["errors"], counts["skipped"])
        return 0
    print(__doc__.split("WORK holds")[0].strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
