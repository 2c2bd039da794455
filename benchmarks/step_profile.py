"""Where the training step's time goes, per layer: GEMM (dot and convolution) thunks vs the rest.

  python -m benchmarks.step_profile --chunks 20 --out profile.json [--dtype bfloat16]
  python -m benchmarks.step_profile --model mlp --batch-size 20 [--objective iwae --iw-samples 50]

Compiles the main job's training chunk (vae_jax.training.train.Steps; by default batch 100, the
CVAE; --model/--objective/--iw-samples/--batch-size choose another, on {0, 1} pixels), runs
--chunks of it under jax.profiler, and reads the XLA:CPU thunk events of the trace: each names the
HLO instruction it ran. The compiled HLO says what each instruction is (a dot, a convolution, a
fusion that contains one, or elementwise/layout work) and which layer it came from (the
`vae_jax.nn.layers.scope_name` named scope in its op_name, forward and backward alike; none for the
loss, Adam and the glue between layers). The report gives, per layer and per step, the
milliseconds of GEMM thunks and of the rest, the layer's GEMM FLOPs and the rate they ran at, and
the slowest non-GEMM instructions. Thunks of one step can overlap on the two cores, so thunk
milliseconds add up to more than the wall time; both are given.

The FLOPs of a dot are 2 x (output elements) x (contracted size), read from the HLO shapes; a
convolution's are 2 x output elements x kernel window x input features.
"""

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time

from benchmarks import throughput
from vae_jax import cli

LAYER_RE = re.compile(r"((?:GemmConvTranspose|GemmConv|Linear)_\d+_\d+)")
INSTR_RE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w\-]*)\((.*)$")
SHAPE_RE = re.compile(r"(bf16|f32|f16|f64|s32|u8|pred|s8|u32)\[([\d,]*)\]")
GEMM_OPS = ("dot", "convolution")


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  shape: tuple
  line: str
  op_name: str
  calls: str | None


def _dims(text: str) -> tuple:
  m = SHAPE_RE.search(text)
  return tuple(int(d) for d in m.group(2).split(",") if d) if m else ()


def parse_hlo(text: str):
  """{computation: [Instr]} of the compiled module's text."""
  comps, current = {}, None
  for line in text.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)  # XLA's /*index=5*/ comments in long tuples
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      comps[current] = []
      continue
    m = INSTR_RE.match(line)
    if m and current is not None:
      name, shape_text, opcode = m.group(1), m.group(2), m.group(3)
      op_name = re.search(r'op_name="([^"]*)"', line)
      calls = re.search(r"calls=%?([\w.\-]+)", line)
      comps[current].append(Instr(name, opcode, _dims(shape_text), line,
                                  op_name.group(1) if op_name else "",
                                  calls.group(1) if calls else None))
  return comps


def _operand_shapes(line: str, table: dict) -> list:
  args = line.split("(", 1)[1] if "(" in line else ""
  names = re.findall(r"%([\w.\-]+)", args.split(")")[0])
  return [table[n].shape for n in names if n in table]


def gemm_flops(instr: Instr, table: dict) -> float:
  """FLOPs of a dot or convolution instruction from its HLO shapes."""
  out = math.prod(instr.shape) if instr.shape else 0
  operands = _operand_shapes(instr.line, table)
  if instr.opcode == "dot":
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr.line)
    if not m or not operands:
      return 0.0
    lhs = operands[0]
    contracted = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)
    return 2.0 * out * contracted
  if instr.opcode == "convolution" and len(operands) == 2:
    window = re.search(r"window=\{size=([\dx]+)", instr.line)
    taps = math.prod(int(v) for v in window.group(1).split("x")) if window else 1
    labels = re.search(r"dim_labels=(\w+)_(\w+)->", instr.line)
    kernel = operands[1]
    in_feat = kernel[labels.group(2).index("i")] if labels else 1
    return 2.0 * out * taps * in_feat
  return 0.0


def _describe(instr: Instr, comps: dict) -> str:
  """What an instruction without an op_name does: its shape and the ops of its fused computation."""
  inner = collections.Counter(i.opcode for i in comps.get(instr.calls, []) if instr.calls)
  ops = ",".join(f"{op}x{n}" for op, n in inner.most_common(6))
  return f"[no op_name] {instr.opcode} {list(instr.shape)} {ops}"


def classify(comps: dict):
  """{instruction name: (kind, layer, flops, op_name)} for the instructions thunks can run.

  A fusion counts as GEMM when its fused computation holds a dot or convolution; its layer is the
  first scope found in its own op_name or its GEMMs' (XLA names a fusion after its root op, so a
  fusion's elementwise work can belong to the next layer's code while named after this one)."""
  table = {i.name: i for instrs in comps.values() for i in instrs}
  gemms_in = {}
  for comp, instrs in comps.items():
    gemms_in[comp] = [i for i in instrs if i.opcode in GEMM_OPS]
  fused = {i.calls for instrs in comps.values() for i in instrs if i.opcode == "fusion" and i.calls}
  out = {}
  for comp, instrs in comps.items():
    if comp in fused:  # inside a fusion: the fusion's thunk runs it
      continue
    for i in instrs:
      inner = gemms_in.get(i.calls, []) if i.calls else []
      gemm = i.opcode in GEMM_OPS or bool(inner)
      flops = gemm_flops(i, table) if i.opcode in GEMM_OPS else sum(gemm_flops(g, table) for g in inner)
      op_names = [i.op_name] + [g.op_name for g in inner]
      layer = next((m.group(1) for o in op_names for m in [LAYER_RE.search(o)] if m), None)
      kind = "gemm" if gemm else i.opcode
      out[i.name] = (kind, layer or "outside layers", flops, i.op_name or _describe(i, comps))
  return out


def thunk_times(trace_dir: str, module_prefix: str) -> tuple[dict, float]:
  """({hlo_op: total µs}, µs spanned) of the thunk events of modules named module_prefix*."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise SystemExit(f"error: jax.profiler wrote no trace under {trace_dir}")
  with gzip.open(files[-1]) as f:
    events = json.load(f)["traceEvents"]
  times, starts, ends = collections.Counter(), [], []
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") == "X" and str(args.get("hlo_module", "")).startswith(module_prefix) \
        and "hlo_op" in args:
      times[args["hlo_op"]] += float(e.get("dur", 0.0))
      starts.append(float(e["ts"]))
      ends.append(float(e["ts"]) + float(e.get("dur", 0.0)))
  return dict(times), (max(ends) - min(starts)) if starts else 0.0


def profile(chunks: int, dtype: str, batch_size: int | None = None, **overrides) -> dict:
  import dataclasses  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vae_jax.config import get_config  # pylint: disable=import-outside-toplevel
  from vae_jax.training import train  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(get_config(), batch_size=batch_size or get_config().batch_size,
                               dtype=dtype, **overrides)
  bench = throughput.jax_bench(config.batch_size, config.latent_dim, 0, dtype=dtype, **overrides)
  length = bench.steps_per_call
  # An instruction of an unrolled chunk runs once per chunk, one of a rolled loop's body per step.
  unroll = train.chunk_plan(config, jax.default_backend())[1]
  copies = length if unroll is True else (unroll or 1)
  hlo = bench.hlo_text()
  module = re.search(r"HloModule (\S+?)[,\s]", hlo).group(1)

  def run(calls: int) -> float:
    """ms per step of `calls` chunks, synced once at the end."""
    start = time.perf_counter()
    for _ in range(calls - 1):
      bench.train()
    bench.sync(bench.train())
    return (time.perf_counter() - start) / (calls * length) * 1e3

  run(3)  # warm-up
  plain_ms = run(chunks)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    traced_ms = run(chunks)
    jax.profiler.stop_trace()
    times, span_us = thunk_times(trace_dir, module)
  info = classify(parse_hlo(hlo))
  n_steps = chunks * length
  layers = collections.defaultdict(lambda: {"gemm_ms": 0.0, "other_ms": 0.0, "gemm_flops": 0.0,
                                            "gemm_thunks": 0, "other_thunks": 0})
  others = []
  unknown_us = 0.0
  flops_counted = set()
  for op, us in times.items():
    if op not in info:
      unknown_us += us
      continue
    kind, layer, flops, op_name = info[op]
    row = layers[layer]
    ms = us / 1e3 / n_steps
    if kind == "gemm":
      row["gemm_ms"] += ms
      row["gemm_thunks"] += 1
      if op not in flops_counted:
        row["gemm_flops"] += flops / copies
        flops_counted.add(op)
    else:
      row["other_ms"] += ms
      row["other_thunks"] += 1
      others.append({"hlo_op": op, "kind": kind, "layer": layer, "ms_per_step": ms,
                     "op_name": op_name[-160:]})
  for row in layers.values():
    row["gemm_thunks"] /= copies
    row["other_thunks"] /= copies
    row["gemm_gflops_per_s"] = (row["gemm_flops"] / (row["gemm_ms"] * 1e-3) / 1e9
                                if row["gemm_ms"] else None)
  others.sort(key=lambda r: -r["ms_per_step"])
  return {"dtype": dtype, "batch_size": config.batch_size, "latent_dim": config.latent_dim,
          "model": config.model, "objective": config.objective, "iw_samples": config.iw_samples,
          "steps_per_chunk": length, "unroll": unroll,
          "steps_profiled": n_steps, "step_ms_untraced": plain_ms, "step_ms_traced": traced_ms,
          "thunk_span_ms_per_step": span_us / 1e3 / n_steps,
          "unattributed_thunk_ms_per_step": unknown_us / 1e3 / n_steps,
          "layers": dict(layers), "other_instructions": others,
          "versions": {"jax": jax.__version__}}


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--chunks", type=int, default=20, help="training chunks (10 steps each) traced")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--model", default="cvae")
  p.add_argument("--objective", default="elbo")
  p.add_argument("--iw-samples", type=int, default=1)
  p.add_argument("--batch-size", type=int, default=None, help="default: the tutorial's 100")
  p.add_argument("--out", help="write the result as JSON here too (a new file)")
  args = p.parse_args(argv)
  if args.chunks < 1:
    p.error(f"--chunks must be >= 1, got {args.chunks}")
  if args.out and os.path.exists(args.out):
    p.error(f"--out {args.out} exists; choose a new file")
  result = profile(args.chunks, args.dtype, args.batch_size, model=args.model,
                   objective=args.objective, iw_samples=args.iw_samples)
  print(f"step {result['step_ms_untraced']:.2f} ms untraced, {result['step_ms_traced']:.2f} traced; "
        f"thunks span {result['thunk_span_ms_per_step']:.2f} ms")
  print(f"{'layer':28s} {'GEMM ms':>8s} {'other ms':>8s} {'GEMM %':>7s} {'GFLOP/s':>8s}")
  for name, row in sorted(result["layers"].items(), key=lambda kv: -kv[1]["gemm_ms"] - kv[1]["other_ms"]):
    total = row["gemm_ms"] + row["other_ms"]
    rate = f"{row['gemm_gflops_per_s']:.0f}" if row["gemm_gflops_per_s"] else "-"
    print(f"{name:28s} {row['gemm_ms']:8.2f} {row['other_ms']:8.2f} "
          f"{100 * row['gemm_ms'] / total if total else 0:6.0f}% {rate:>8s}")
  for r in result["other_instructions"][:10]:
    print(f"  {r['ms_per_step']:.3f} ms {r['kind']:10s} {r['layer']:26s} {r['op_name'][-90:]}")
  if args.out:
    with open(args.out, "x") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
