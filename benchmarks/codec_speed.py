"""The lossless codec's speed: encode and decode images/s of a shipped model, in rounds, beside an
older tree, and the integer decoder's cost per latent row beside the float decoder's.

  python -m benchmarks.codec_speed --data idx:/work/shared/data/mnist --model pretrained:cvae_context_mnist \
      --old-tree /tmp/vae_old --samples 1 16 --count 1000 --rounds 3 --out DIR

Each tree runs in a worker process of its own (--old-tree is a checkout of an earlier commit,
`git archive COMMIT | tar -x -C DIR`, imported instead of this tree); the parent asks the workers
in turn, round after round, so their ratio is measured in the same run, alternately. A round at k
is one encode of the first --count test images by the VAE alone (`methods={vae}`, BB-IS with k
samples) and one decode of that file, each timed by the codec's own report (compilation apart),
and the round checks the decode is exact; "whole file" is the default per-image choice at k = 1.
The integer decoder's row cost is the median of 5 calls on 1,024 random bucket latents, beside
the float32 decoder jitted on the same rows: at k samples an image needs k rows, so it bounds k's
speed from above.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(args) -> None:
  """Serves rounds on stdin/stdout, one JSON line each, with whichever tree is on sys.path."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import context, files, images  # pylint: disable=import-outside-toplevel
  config, model, _ = pretrained.resolve(args.model)
  codec = files.Codec(model, config)
  x = images.load(args.data, "test", args.count)
  vae = frozenset({context.VAE})
  for k in args.samples:   # compile every shape before the first timed round
    codec.decode(codec.encode_lossless(x, methods=vae, samples=k)[0], "warm-up")
  codec.decode(codec.encode_lossless(x)[0], "warm-up")
  print(json.dumps({"ready": True}), flush=True)
  for _ in sys.stdin:
    row = {}
    for k, methods in [(k, vae) for k in args.samples] + [("whole file", None)]:
      kwargs = {"methods": methods, "samples": k} if methods else {}
      raw, enc = codec.encode_lossless(x, **kwargs)
      decoded, dec = codec.decode(raw, "round")
      if not np.array_equal(decoded, x):
        raise SystemExit("error: a round trip was not exact")
      row[str(k)] = {"encode": enc.images_per_sec, "decode": dec.images_per_sec,
                     "bits_per_pixel": 8 * len(raw) / x[..., 0].size}
    print(json.dumps(row), flush=True)


def row_costs(model_spec: str) -> dict:
  """µs per latent row of the integer decoder (the codec's) and of the float32 decoder."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec.tables import ModelTables  # pylint: disable=import-outside-toplevel
  _, model, _ = pretrained.resolve(model_spec)
  rows = 1024
  z = np.random.default_rng(0).integers(0, 256, (rows, model.latent_dim)).astype(np.int32)
  tables = ModelTables(model)
  graphdef, state = nnx.split(model)
  decode = jax.jit(lambda s, v: nnx.merge(graphdef, s).decode(v))
  zf = jax.numpy.asarray(np.random.default_rng(0).normal(size=z.shape), jax.numpy.float32)
  calls = {"integer_decoder": lambda: tables.raw_logits(z, rows),
           "float32_decoder": lambda: decode(state, zf).block_until_ready()}
  out = {}
  for name, call in calls.items():
    call()
    times = []
    for _ in range(5):
      start = time.perf_counter()
      call()
      times.append(time.perf_counter() - start)
    out[name + "_us_per_row"] = float(np.median(times)) / rows * 1e6
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--model", default="pretrained:cvae_context_mnist")
  parser.add_argument("--old-tree", help="an earlier checkout to set beside this tree")
  parser.add_argument("--samples", type=int, nargs="+", default=[1, 16])
  parser.add_argument("--count", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", help="a new directory for codec_speed.json")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return 0
  if args.out and os.path.exists(args.out):
    raise SystemExit(f"error: {args.out} exists (never overwritten)")
  trees = {"new": HERE}
  if args.old_tree:
    if not os.path.isdir(os.path.join(args.old_tree, "vae_jax")):
      raise SystemExit(f"error: {args.old_tree} holds no vae_jax package")
    trees["old"] = os.path.abspath(args.old_tree)
  workers = {}
  for name, tree in trees.items():
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--data", args.data,
           "--model", args.model, "--count", str(args.count), "--samples",
           *map(str, args.samples)]
    env = dict(os.environ, PYTHONPATH=tree)
    workers[name] = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
  for name, proc in workers.items():   # one at a time: compiling is not measured
    line = proc.stdout.readline()
    if not line:
      raise SystemExit(f"error: the {name} worker stopped before its first round")
  rounds = {name: [] for name in workers}
  for r in range(args.rounds):
    for name, proc in workers.items():
      proc.stdin.write("go\n")
      proc.stdin.flush()
      line = proc.stdout.readline()
      if not line:
        raise SystemExit(f"error: the {name} worker stopped in round {r + 1}")
      rounds[name].append(json.loads(line))
      print(f"round {r + 1} {name}: {line.strip()}", file=sys.stderr)
  for proc in workers.values():
    proc.stdin.close()
    proc.wait()
  import numpy as np  # pylint: disable=import-outside-toplevel
  summary = {}
  for name, rows in rounds.items():
    summary[name] = {k: {side: float(np.median([row[k][side] for row in rows]))
                         for side in ("encode", "decode", "bits_per_pixel")} for k in rows[0]}
  if "old" in summary:
    summary["new/old"] = {
        k: {side: float(np.median([n[k][side] / o[k][side]
                                   for n, o in zip(rounds["new"], rounds["old"])]))
            for side in ("encode", "decode")} for k in summary["new"]}
  result = {"command": " ".join(sys.argv), "rounds": rounds, "median": summary,
            "row_costs": row_costs(args.model)}
  print(json.dumps(result["median"], indent=1))
  print(json.dumps(result["row_costs"], indent=1))
  if args.out:
    os.makedirs(args.out)
    with open(os.path.join(args.out, "codec_speed.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
