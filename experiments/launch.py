"""Runs a multi-process job on this host, for trying out what a cluster runs (docs/multihost.md).

    python -m experiments.launch --processes 2 -- --data mnist-5k --workdir runs/two

starts `python -m experiments.mnist_vae ARGS --coordinator localhost:PORT --num-processes 2
--process-id I` for I = 0, 1 on a free port, prefixes every line each one prints with `[pI] `, and
when one of them fails or dies, stops the others and exits non-zero with one line naming it.
"""

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time

# How long the others get to stop at SIGTERM (interrupts: at their next step) before SIGKILL.
STOP_SECONDS = 20


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _relay(stream, prefix: str, out) -> None:
  """Copies stream's lines to out, each after prefix."""
  for line in iter(stream.readline, b""):
    out.write(prefix + line.decode(errors="replace"))
    out.flush()
  stream.close()


def _how(code: int) -> str:
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.launch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--processes", type=int, required=True, help="how many processes to start")
  p.add_argument("--module", default="experiments.mnist_vae", help="the entry point they run")
  p.add_argument("args", nargs=argparse.REMAINDER, help="-- then the entry point's arguments")
  args = p.parse_args(argv)
  if args.processes < 1:
    p.error(f"--processes must be at least 1, got {args.processes}")
  job_args = args.args[1:] if args.args[:1] == ["--"] else args.args
  coordinator = f"localhost:{_free_port()}"
  children, relays = [], []
  for i in range(args.processes):
    command = [sys.executable, "-m", args.module, *job_args, "--coordinator", coordinator,
               "--num-processes", str(args.processes), "--process-id", str(i)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children.append(child)
    for stream, out in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
      relays.append(threading.Thread(target=_relay, args=(stream, f"[p{i}] ", out), daemon=True))
      relays[-1].start()
  failed = None
  try:
    while failed is None and any(c.poll() is None for c in children):
      failed = next((i for i, c in enumerate(children) if c.poll() not in (None, 0)), None)
      time.sleep(0.1)
    failed = next((i for i, c in enumerate(children) if c.returncode), failed)
  except KeyboardInterrupt:
    failed = -1
  if failed is not None:
    for c in children:
      if c.poll() is None:
        c.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for c in children:
      try:
        c.wait(timeout=max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        c.kill()
        c.wait()
  for relay in relays:
    relay.join()
  if failed is None:
    return 0
  if failed == -1:
    print("error: interrupted; stopped every process", file=sys.stderr, flush=True)
    return 130
  code = children[failed].returncode
  print(f"error: process {failed} of {args.processes} {_how(code)}; stopped the others",
        file=sys.stderr, flush=True)
  return code if code > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
