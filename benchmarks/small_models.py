"""Small models at batch 20, in rounds: the project's training epoch beside its older code, a minimal
hand-written JAX loop (the ceiling) and, when it is installed, PyTorch.

  python -m benchmarks.small_models --data idx:/work/shared/data/mnist --objective elbo \
      --old-tree /tmp/vae_old --rounds 3 --out small.json

Each column runs in a worker process of its own, started once (compiling once); the parent then
asks the workers in turn, round after round, for one timed round each, so every column's speed is
a ratio to the others measured in the same run, alternately. A round of the project's columns is
one whole training epoch of `vae_jax.training.run` (its host work, binarization, chunks and
dispatch included) and one evaluation of the test set, timed by the wall clock; --old-tree is a
checkout of an earlier commit, imported by its worker instead of this tree (`git archive COMMIT |
tar -x -C DIR`). The minimal loop is one jitted lax.scan over the epoch of plain jnp ops: the same
784-200-200-50 tanh MLP VAE (or its k-sample IWAE bound), the pixels drawn from the intensities
inside the scan, and Adam written out. The new_bf16 column is the project with --dtype bfloat16
(bfloat16 GEMM inputs; float32 parameters, accumulation and loss). The PyTorch column
(benchmarks/peers/torch_mlp_vae.py) runs with --torch-python, an interpreter that has torch.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- workers

def project_worker(args) -> None:
  """Serves rounds of the project's own epoch (whichever tree is on sys.path)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from vae_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  from vae_jax.config import get_config  # pylint: disable=import-outside-toplevel
  from vae_jax.training import run  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(
      get_config(), data=args.data, model="mlp", batch_size=args.batch_size, binarize="dynamic",
      objective=args.objective, iw_samples=args.iw_samples, train_size=args.train_size,
      learning_rate=1e-3, epochs=10**6, parallel="none", dtype=args.dtype)
  dataset = data_lib.load(config.data).take_train(config.train_size)
  the_run = run._Run(config, tempfile.mkdtemp(), dataset)  # pylint: disable=protected-access
  epoch = 0

  def one_round():
    nonlocal epoch
    epoch += 1
    start = time.perf_counter()
    row, _ = the_run.train_epoch(epoch)
    jax.block_until_ready(the_run.state)
    train_s = time.perf_counter() - start - row["compile_seconds"]
    start = time.perf_counter()
    the_run.evaluate(epoch)
    eval_s = time.perf_counter() - start
    return {"images_per_sec": len(dataset.train_images) / train_s,
            "eval_images_per_sec": len(dataset.test_images) / eval_s,
            "train_loss": row["train_loss"], "compile_seconds": row["compile_seconds"]}

  one_round()  # compiles the chunks and the evaluation
  serve(one_round, {"jax": jax.__version__, "tree": os.path.dirname(os.path.dirname(
      os.path.abspath(data_lib.__file__)))})


def minimal_worker(args) -> None:
  """Serves rounds of the hand-written loop: one jitted lax.scan over the epoch."""
  import math  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vae_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  dataset = data_lib.load(args.data).take_train(args.train_size)
  images = jnp.asarray(dataset.train_images.reshape(len(dataset.train_images), -1))
  steps, b, k = len(images) // args.batch_size, args.batch_size, args.iw_samples
  sizes = [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]
  key = jax.random.key(0)
  params = []
  for i, (m, n) in enumerate(sizes):
    limit = math.sqrt(6.0 / (m + n))
    params += [jax.random.uniform(jax.random.fold_in(key, i), (m, n), minval=-limit, maxval=limit),
               jnp.zeros(n)]

  def loss(p, x, eps):
    h = jnp.tanh(x @ p[0] + p[1])
    h = jnp.tanh(h @ p[2] + p[3])
    mean, logvar = jnp.split(h @ p[4] + p[5], 2, axis=-1)
    z = mean[:, None] + jnp.exp(0.5 * logvar[:, None]) * eps  # (b, k, 50)
    h = jnp.tanh(z @ p[6] + p[7])
    h = jnp.tanh(h @ p[8] + p[9])
    logits = h @ p[10] + p[11]
    log_px = -jnp.sum(jnp.maximum(logits, 0) - logits * x[:, None]
                      + jnp.log1p(jnp.exp(-jnp.abs(logits))), axis=-1)
    log_w = log_px + jnp.sum(-0.5 * z * z + 0.5 * eps * eps + 0.5 * logvar[:, None], axis=-1)
    return -jnp.mean(jax.nn.logsumexp(log_w, axis=1) - math.log(k))

  def epoch_fn(p, m, v, t, key):
    order = jax.random.permutation(key, len(images))[:steps * b].reshape(steps, b)

    def step(carry, xs):
      p, m, v, t = carry
      idx, skey = xs
      u_key, e_key = jax.random.split(skey)
      x = (jax.random.uniform(u_key, (b, 784)) * 255.0 < images[idx]).astype(jnp.float32)
      value, g = jax.value_and_grad(loss)(p, x, jax.random.normal(e_key, (b, k, 50)))
      t = t + 1
      m = [0.9 * a + 0.1 * c for a, c in zip(m, g)]
      v = [0.999 * a + 0.001 * c * c for a, c in zip(v, g)]
      lr = 1e-3 * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
      p = [a - lr * c / (jnp.sqrt(d) + 1e-4) for a, c, d in zip(p, m, v)]
      return (p, m, v, t), value

    (p, m, v, t), losses = jax.lax.scan(step, (p, m, v, t),
                                        (order, jax.random.split(key, steps)))
    return p, m, v, t, jnp.mean(losses)

  epoch_jit = jax.jit(epoch_fn, donate_argnums=(0, 1, 2))
  zeros = lambda: [jnp.zeros_like(a) for a in params]
  state = [params, zeros(), zeros(), jnp.zeros((), jnp.float32)]
  rounds = 0

  def one_round():
    nonlocal rounds
    rounds += 1
    start = time.perf_counter()
    *state[:4], mean_loss = epoch_jit(*state, jax.random.fold_in(key, 1000 + rounds))
    mean_loss = float(mean_loss)
    return {"images_per_sec": steps * b / (time.perf_counter() - start), "train_loss": mean_loss}

  one_round()
  serve(one_round, {"jax": jax.__version__, "numpy": np.__version__})


def serve(one_round, info) -> None:
  """Prints `info`, then answers each line on stdin with one round's result (JSON lines)."""
  print(json.dumps(info), flush=True)
  for _ in sys.stdin:
    print(json.dumps(one_round()), flush=True)


# ---------------------------------------------------------------- parent

class Worker:
  """A worker process started once; `round()` runs one timed round in it."""

  def __init__(self, name: str, argv: list[str], env: dict):
    self.name = name
    self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                 text=True, cwd=HERE)
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"error: the {name} worker exited before its first round "
                       f"(status {self.proc.wait()})")
    self.info = json.loads(line)

  def round(self) -> dict:
    self.proc.stdin.write("go\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"error: the {self.name} worker exited (status {self.proc.wait()})")
    return json.loads(line)

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.small_models", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default="idx:/work/shared/data/mnist")
  p.add_argument("--objective", choices=("elbo", "iwae"), default="elbo")
  p.add_argument("--iw-samples", type=int, default=1)
  p.add_argument("--batch-size", type=int, default=20)
  p.add_argument("--train-size", type=int, default=None, help="training images per epoch (all)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--old-tree", help="a checkout of an earlier commit: the 'old' column")
  p.add_argument("--torch-python", help="an interpreter with torch: the 'torch' column")
  p.add_argument("--columns", default="new,old,minimal,torch",
                 help="any of new, new_bf16 (the project with --dtype bfloat16: bfloat16 GEMM inputs, "
                      "float32 parameters, accumulation and loss), old, minimal, torch")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help=argparse.SUPPRESS)  # a project worker's compute dtype
  p.add_argument("--worker", choices=("project", "minimal"), help=argparse.SUPPRESS)
  p.add_argument("--out", help="write the result as JSON here too (a new file)")
  args = p.parse_args(argv)
  if args.worker == "project":
    project_worker(args)
    return 0
  if args.worker == "minimal":
    minimal_worker(args)
    return 0
  if args.out and os.path.exists(args.out):
    p.error(f"--out {args.out} exists; choose a new file")
  if args.objective == "elbo" and args.iw_samples != 1:
    p.error("--iw-samples is for --objective iwae")
  common = ["--data", args.data, "--objective", args.objective, "--iw-samples",
            str(args.iw_samples), "--batch-size", str(args.batch_size)]
  if args.train_size:
    common += ["--train-size", str(args.train_size)]
  # Workers run this file as a script: an old tree has a benchmarks package without it.
  me = [sys.executable, os.path.abspath(__file__)]
  wanted = args.columns.split(",")
  specs = {"new": (me + ["--worker", "project"] + common, HERE),
           "new_bf16": (me + ["--worker", "project", "--dtype", "bfloat16"] + common, HERE),
           "minimal": (me + ["--worker", "minimal"] + common, HERE)}
  if args.old_tree and "old" in wanted:
    specs["old"] = (me + ["--worker", "project"] + common, os.path.abspath(args.old_tree))
  if args.torch_python and "torch" in wanted:
    specs["torch"] = ([args.torch_python, os.path.join(HERE, "benchmarks", "peers",
                                                       "torch_mlp_vae.py")] + common, HERE)
  workers = []
  for name in wanted:
    if name in specs:
      argv_w, tree = specs[name]
      env = dict(os.environ, PYTHONPATH=tree)  # vae_jax from the column's own tree
      workers.append(Worker(name, argv_w, env))
  results = {w.name: [] for w in workers}
  for r in range(args.rounds):
    for w in workers:
      results[w.name].append(w.round())
      print(f"round {r + 1} {w.name:8s} {json.dumps(results[w.name][-1])}", flush=True)
  for w in workers:
    w.close()
  import numpy as np  # pylint: disable=import-outside-toplevel
  summary = {}
  for name, rows in results.items():
    summary[name] = {key: float(np.median([row[key] for row in rows]))
                     for key in rows[0] if key.endswith("per_sec")}
  base = results.get("old")
  ratios = {}
  for name, rows in results.items():
    if base and name != "old":
      ratios[f"{name}/old"] = float(np.median([a["images_per_sec"] / b["images_per_sec"]
                                               for a, b in zip(rows, base)]))
  for name, other in (("new", "minimal"), ("new_bf16", "minimal"), ("new_bf16", "new")):
    if name in results and other in results:
      ratios[f"{name}/{other}"] = float(np.median([
          a["images_per_sec"] / b["images_per_sec"] for a, b in zip(results[name], results[other])]))
  out = {"args": vars(args), "workers": {w.name: w.info for w in workers},
         "rounds": results, "median": summary, "ratios_median_of_rounds": ratios}
  print(json.dumps({"median": summary, "ratios": ratios}))
  if args.out:
    with open(args.out, "x") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
