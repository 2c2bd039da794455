"""PyTorch peer of the small-model benchmark: the 784-200-200-50 tanh MLP VAE (or its k-sample IWAE
bound), batch 20, Adam (eps 1e-4), dynamically binarized MNIST, one worker of
benchmarks.small_models (one epoch per round, answered on stdout).

  python benchmarks/peers/torch_mlp_vae.py --data idx:DIR [--objective iwae --iw-samples 50]

Needs torch and numpy only (not vae_jax): run it with an interpreter that has torch. The whole
epoch's intensities live as one float tensor; each step draws its pixels with torch.rand, as the
JAX columns draw them on the device.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch


def read_images(directory: str, limit: int | None) -> np.ndarray:
  with gzip.open(os.path.join(directory, "train-images-idx3-ubyte.gz"), "rb") as f:
    raw = f.read()
  n, rows, cols = struct.unpack(">3I", raw[4:16])
  images = np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols)
  return images[:limit] if limit else images


class VAE(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.enc = torch.nn.Sequential(torch.nn.Linear(784, 200), torch.nn.Tanh(),
                                   torch.nn.Linear(200, 200), torch.nn.Tanh(),
                                   torch.nn.Linear(200, 100))
    self.dec = torch.nn.Sequential(torch.nn.Linear(50, 200), torch.nn.Tanh(),
                                   torch.nn.Linear(200, 200), torch.nn.Tanh(),
                                   torch.nn.Linear(200, 784))

  def loss(self, x, k: int):
    mean, logvar = self.enc(x).chunk(2, dim=-1)
    eps = torch.randn(x.shape[0], k, 50)
    z = mean[:, None] + torch.exp(0.5 * logvar[:, None]) * eps
    logits = self.dec(z)
    log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x[:, None].expand_as(logits), reduction="none").sum(-1)
    log_w = log_px + (-0.5 * z * z + 0.5 * eps * eps + 0.5 * logvar[:, None]).sum(-1)
    return -(torch.logsumexp(log_w, dim=1) - math.log(k)).mean()


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--objective", default="elbo")
  p.add_argument("--iw-samples", type=int, default=1)
  p.add_argument("--batch-size", type=int, default=20)
  p.add_argument("--train-size", type=int)
  args = p.parse_args()
  if not args.data.startswith("idx:"):
    print("error: the torch peer reads --data idx:DIR only", file=sys.stderr)
    return 2
  torch.manual_seed(0)
  images = torch.from_numpy(read_images(args.data[4:], args.train_size).astype(np.float32) / 255.0)
  model = VAE()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4)
  b, steps = args.batch_size, len(images) // args.batch_size

  def one_round():
    start = time.perf_counter()
    order = torch.randperm(len(images))
    total = 0.0
    for s in range(steps):
      intensity = images[order[s * b:(s + 1) * b]]
      x = (torch.rand_like(intensity) < intensity).float()
      opt.zero_grad(set_to_none=True)
      loss = model.loss(x, args.iw_samples)
      loss.backward()
      opt.step()
      total += loss.item()
    return {"images_per_sec": steps * b / (time.perf_counter() - start),
            "train_loss": total / steps}

  print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
  for _ in sys.stdin:
    print(json.dumps(one_round()), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
