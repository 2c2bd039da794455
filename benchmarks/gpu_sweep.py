"""JAX training throughput over batch sizes and implementation choices, in one process (for GPUs).

    python -m benchmarks.gpu_sweep --out sweep.jsonl

Each configuration is the main job's compiled training chunk (benchmarks.throughput's recipe):
compile apart, one warm-up, then timed calls. Achieved FLOP/s count the model's own multiply-adds
(`training_flops_per_image`); the fraction of peak is against the chip's dense FP32 and TF32
tensor-core peaks.
"""

import argparse
import json

import jax

from benchmarks import throughput
from vae_jax import cli

# Dense peak TFLOP/s by device kind (NVIDIA datasheets: H100 SXM / H200: 67 FP32, 495 TF32, 989 BF16).
PEAKS_TFLOPS = {"H100": {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0},
                "H200": {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}}

# (batch size, Config overrides): the default first, then one change at a time.
SWEEP = (
    (100, {}),
    (100, {"conv_transpose": "xla"}),
    (100, {"steps_per_chunk": 600}),
    (100, {"dtype": "bfloat16"}),
    (1000, {"steps_per_chunk": 20}),
    (1000, {"steps_per_chunk": 20, "conv_transpose": "xla"}),
    (10000, {"steps_per_chunk": 10}),
    (10000, {"steps_per_chunk": 10, "conv_transpose": "xla"}),
    (10000, {"steps_per_chunk": 10, "dtype": "bfloat16"}),
)


def training_flops_per_image(latent_dim: int = 50) -> float:
  """Multiply-add FLOPs of one training image: 3x the forward pass (forward, input and weight
  gradients; the first conv needs no input gradient). XLA's GPU cost analysis cannot be used: it
  does not count the cuBLAS/cuDNN calls. (XLA's CPU count of the whole step: 35.1 MFLOP.)"""
  macs = {  # forward multiply-adds per image of each layer (transposed convs: useful taps only)
      "enc_conv1": 13 * 13 * 32 * 9 * 1, "enc_conv2": 6 * 6 * 64 * 9 * 32,
      "enc_dense": 2304 * 2 * latent_dim, "dec_dense": latent_dim * 7 * 7 * 32,
      "dec_deconv1": 7 * 7 * 9 * 32 * 64, "dec_deconv2": 14 * 14 * 9 * 64 * 32,
      "dec_deconv3": 28 * 28 * 9 * 32 * 1}
  return 2 * (3 * sum(macs.values()) - macs["enc_conv1"])


def peaks(device_kind: str) -> dict | None:
  return next((v for k, v in PEAKS_TFLOPS.items() if k in device_kind), None)


def run(steps: int, max_batch: int, out) -> None:
  device = jax.devices()[0]
  peak = peaks(device.device_kind)
  for batch_size, overrides in SWEEP:
    if batch_size > max_batch or (device.platform == "cpu" and
                                  overrides.get("steps_per_chunk", 0) > 100):
      continue  # CPU chunks are unrolled: a 600-step chunk would compile for minutes
    # The same number of images at every batch size, and at least two chunks.
    n = max(steps * 100 // batch_size, 2 * overrides.get("steps_per_chunk", 1))
    try:
      result = throughput.measure(throughput.jax_bench(batch_size, 50, 0, **overrides),
                                  batch_size, n)
    except Exception as e:  # pylint: disable=broad-except
      result = {"batch_size": batch_size, "error": f"{type(e).__name__}: {e}"[:300]}
    result.update(overrides=overrides, device_kind=device.device_kind)
    flops = result["model_flops_per_image"] = training_flops_per_image()
    if "images_per_sec" in result:
      result["tflops"] = flops * result["images_per_sec"] / 1e12
      if peak:
        result["fraction_of_fp32_peak"] = result["tflops"] / peak["fp32"]
        result["fraction_of_tf32_peak"] = result["tflops"] / peak["tf32"]
    line = json.dumps(result)
    print(line, flush=True)
    out.write(line + "\n")
    out.flush()


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m benchmarks.gpu_sweep", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=2000, help="steps timed at batch 100 (fewer at larger)")
  p.add_argument("--max-batch", type=int, default=10**9, help="skip larger batch sizes")
  p.add_argument("--out", required=True, help="JSON lines, one per configuration")
  args = p.parse_args(argv)
  with open(args.out, "x") as out:
    run(args.steps, args.max_batch, out)
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
