"""`make bench`: every step 6 figure and step 8's fairness figures in one run, each beside its
baseline, then a summary.

    .venv/bin/python bench/run_all.py

Runs bench/embeddings.py, bench/latency.py, bench/submit.py, bench/memory.py,
bench/fairness.py, bench/generation.py and bench/images.py one after the other (each starts
and stops its own farm, so they never share the cores), shows their output as it comes, and
ends with one table of the figures against the targets. Exits non-zero if a benchmark fails; a
figure short of its target is reported, not an error.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Figure:
    script: str
    name: str
    pattern: str  # its first group is the figure
    target: str
    meets: str  # "ge:<x>" or "le:<x>"; "" for a figure shown without a target


FIGURES = [
    Figure(
        "embeddings.py",
        "3,000 sentences end to end / SentenceTransformer.encode",
        r"ratio farm / in-process: ([\d.]+)",
        ">= 2.0x",
        "ge:2.0",
    ),
    Figure(
        "embeddings.py",
        "  the same at int8 / SentenceTransformer.encode",
        r"precision int8: .*ratio / encode ([\d.]+)",
        ">= 2.0x",
        "ge:2.0",
    ),
    Figure(
        "embeddings.py",
        "  int8 mean cosine to encode's vectors",
        r"precision int8: .*mean cosine ([\d.]+)",
        ">= 0.99",
        "ge:0.99",
    ),
    Figure(
        "embeddings.py",
        "  the same at bf16 / SentenceTransformer.encode",
        r"precision bf16: .*ratio / encode ([\d.]+)",
        "",
        "",
    ),
    Figure(
        "embeddings.py",
        "  bf16 mean cosine to encode's vectors",
        r"precision bf16: .*mean cosine ([\d.]+)",
        ">= 0.99",
        "ge:0.99",
    ),
    Figure(
        "latency.py",
        "one-item job, POST + GET Prefer: wait, p50 (ms)",
        r"farm \(POST \+ GET Prefer: wait\)\s+p50\s+([\d.]+) ms",
        "<= 25 ms",
        "le:25",
    ),
    Figure(
        "latency.py",
        "one-item job, p90 (ms)",
        r"farm \(POST \+ GET Prefer: wait\).*p90\s+([\d.]+) ms",
        "<= 40 ms",
        "le:40",
    ),
    Figure(
        "submit.py",
        "jobs accepted/s, 8 clients / bare INSERT+COMMIT+LPUSH",
        r"ratio farm / bare\s+([\d.]+)x",
        ">= 0.8x",
        "ge:0.8",
    ),
    Figure(
        "memory.py",
        "1,000,000 scikit-learn items / naive in-process loop",
        r"ratio farm / baseline throughput: ([\d.]+)",
        ">= 1.0x",
        "ge:1.0",
    ),
    Figure(
        "memory.py",
        "  worker tree peak RSS (MB), same job",
        r"farm worker peak RSS: tree\s+([\d.]+) MB",
        "< 1536 MB",
        "le:1536",
    ),
    Figure(
        "fairness.py",
        "tenant B's 10-item job behind A's backlog (s)",
        r"behind A:\s+median ([\d.]+) s",
        "<= 5 s",
        "le:5",
    ),
    Figure(
        "fairness.py",
        "  the same, behind A / on an idle farm",
        r"ratio behind A / idle: ([\d.]+)",
        "none",
        "",  # shown, not judged: B waits behind about a window of shards, however idle is
    ),
    Figure(
        "fairness.py",
        "high job's wait behind normal work / one shard's time",
        r"high job's wait / one shard: ([\d.]+)",
        "<= 1.0x",
        "le:1.0",
    ),
    Figure(
        "fairness.py",
        "  the longest of five waits / one shard's time",
        r"longest wait / one shard: ([\d.]+)",
        "none",
        "",  # shown, not judged: the shard running when the job came is never interrupted
    ),
    Figure(
        "generation.py",
        "smollm2 chat tokens/s, farm / generate one at a time",
        r"ratio farm / one at a time: ([\d.]+)",
        ">= 3.0x",
        "ge:3.0",
    ),
    Figure(
        "generation.py",
        "  farm / generate, padded batches of 16",
        r"ratio farm / padded batches: ([\d.]+)",
        ">= 1.2x",
        "ge:1.2",
    ),
    Figure(
        "generation.py",
        "  farm / llama.cpp one at a time (nan: not installed)",
        r"ratio farm / llama.cpp: ([\d.]+)",
        ">= 1.5x",
        "ge:1.5",
    ),
    Figure(
        "generation.py",
        "  farm texts identical to its engine in-process (%)",
        r"identical to the engine in-process: ([\d.]+) %",
        ">= 95 %",
        "ge:95",
    ),
    Figure(
        "images.py",
        "2,000 images, ResNet-50 / in-process one at a time",
        r"ratio farm / one at a time: ([\d.]+)",
        ">= 2.0x",
        "ge:2.0",
    ),
    Figure(
        "images.py",
        "  the same / in-process batches of 32",
        r"ratio farm / batches of 32: ([\d.]+)",
        ">= 0.9x",
        "ge:0.9",
    ),
    Figure(
        "images.py",
        "  at bf16 (a job's choice) / one at a time",
        r"ratio farm at bf16 / one at a time: ([\d.]+)",
        "",
        "",
    ),
]


def main() -> int:
    outputs: dict[str, str] = {}
    for script in dict.fromkeys(f.script for f in FIGURES):
        print(f"\n=== bench/{script}", flush=True)
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the farms' own logs go to files (bench/farm.py)
            lines.append(line)
            print(line, end="", flush=True)
        if proc.wait() != 0:
            print("".join(lines[-40:]))
            print(f"bench/{script} failed (exit {proc.returncode})")
            return 1
        outputs[script] = "".join(lines)
    print(f"\n=== summary: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'figure':58s} {'measured':>10s}  {'target':>10s}")
    for figure in FIGURES:
        match = re.search(figure.pattern, outputs[figure.script])
        value = float(match.group(1)) if match else float("nan")
        verdict = ""
        if figure.meets:
            kind, bound = figure.meets.split(":")
            met = value >= float(bound) if kind == "ge" else value <= float(bound)
            verdict = "met" if met else "NOT met"
        print(f"{figure.name:58s} {value:10.2f}  {figure.target:>10s}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
