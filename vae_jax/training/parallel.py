"""Data parallelism over devices and hosts: one device, a sharded jit over a mesh, or pmap.

Every strategy sees the same global batch in the same order; each example's noise is drawn from
its position in the global batch (see `train.example_keys`), so results do not depend on how many
devices or processes share the batch.
"""

import atexit
import dataclasses
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vae_jax.errors import UserError, flush_std_streams

DATA_AXIS = "data"


# A process that sends the coordination service no heartbeat for this long counts as dead (JAX's
# default is 100 s). A process exiting waits at most SHUTDOWN_SECONDS for the others (JAX's
# default; the run ends with sync_processes, so they arrive together).
HEARTBEAT_SECONDS = 30
SHUTDOWN_SECONDS = 300
# The runtime errors of a collective or of the coordination service whose peer went away.
_PEER_LOST_MARKS = ("Gloo", "Connection reset", "Connection closed", "UNAVAILABLE", "heartbeat",
                    "DEADLINE_EXCEEDED", "Barrier")

_started_by = None  # how this process found the others: "--coordinator HOST:PORT" or a cluster's name


class ProcessLost(UserError):
  """Another process of a multi-process run died or stopped responding."""


def cluster_environment():
  """The cluster environment jax.distributed.initialize() would detect (SLURM, Cloud TPU, Open MPI,
  Kubernetes; mpi4py only when asked), or None."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel  # jax's own detection
  return next((env for env in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
               if not env.opt_in_only_method and env.is_env_present()), None)


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
  """Starts JAX's multi-process runtime (before any JAX work) from the flags, else from a cluster
  environment that runs more than one process; with neither, the run is one process."""
  timeouts = dict(heartbeat_timeout_seconds=HEARTBEAT_SECONDS,
                  shutdown_timeout_seconds=SHUTDOWN_SECONDS)
  if coordinator is None:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise UserError("--num-processes/--process-id need --coordinator HOST:PORT")
    env = cluster_environment()
    if env is None or env.get_process_count() < 2:
      return
    _start(dict(timeouts), f"{env.__name__} environment")
    return
  if num_processes is None or process_id is None:
    raise UserError("--coordinator needs --num-processes and --process-id")
  if not 0 <= process_id < num_processes:
    raise UserError(f"--process-id {process_id} must be in [0, {num_processes})")
  _start(dict(timeouts, coordinator_address=coordinator, num_processes=num_processes,
              process_id=process_id, cluster_detection_method="deactivate"),
         f"--coordinator {coordinator}")


def _start(kwargs: dict, started_by: str) -> None:
  global _started_by  # pylint: disable=global-statement
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:  # JaxRuntimeError is a RuntimeError
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"cannot start the multi-process run ({started_by}): {first}") from None
  _started_by = started_by
  # After a lost process, the exit skips JAX's shutdown barrier: it would wait for the dead
  # process and then abort from C++. Registered after jax's own exit hook, so it runs first.
  atexit.register(_exit_without_shutdown)


def processes_text() -> str:
  """'1 process', or 'N processes (how they found each other)' for the startup line."""
  if jax.process_count() == 1:
    return "1 process"
  return f"{jax.process_count()} processes ({_started_by}), this one {jax.process_index()}"


_lost = False


def lost_process(error: Exception, last_checkpoint: int) -> ProcessLost | None:
  """The ProcessLost that a runtime error of a multi-process run means, or None (another error)."""
  global _lost  # pylint: disable=global-statement
  text = str(error)
  if jax.process_count() < 2 or not any(mark in text for mark in _PEER_LOST_MARKS):
    return None
  _lost = True
  n, me = jax.process_count(), jax.process_index()
  others = [p for p in range(n) if p != me]
  who = f"process {others[0]} of {n}" if len(others) == 1 else f"a process of the {n}"
  kept = (f"the last complete checkpoint is epoch {last_checkpoint}" if last_checkpoint else
          "no checkpoint is complete yet")
  return ProcessLost(f"{who} stopped responding; {kept}; restart all processes with --resume")


def _exit_without_shutdown() -> None:
  if _lost:
    flush_std_streams(0)
    os._exit(2)  # pylint: disable=protected-access  # the exit code of every one-line error


def sync_processes(name: str) -> None:
  """Returns when every process has called it with `name` (at once with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def min_max_over_processes(value: int) -> tuple[int, int]:
  """(min, max) of an integer over every process (value, value with one process)."""
  if jax.process_count() == 1:
    return value, value
  values = multihost_utils.process_allgather(np.int32(value))
  return int(values.min()), int(values.max())


@dataclasses.dataclass(frozen=True)
class Strategy:
  """How state and batches are placed, and how step functions are compiled, for one mode."""
  kind: str            # none | sharded | pmap
  mesh: jax.sharding.Mesh

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def axis_name(self) -> str | None:
    """The collective axis inside pmap'd functions (the others need none: jit partitions them)."""
    return DATA_AXIS if self.kind == "pmap" else None

  @property
  def local_devices(self) -> list:
    """This process's devices in the mesh, in mesh order."""
    return [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]

  def check_batch(self, batch_size: int) -> None:
    if batch_size % self.num_devices:
      where = f"{self.num_devices} devices"
      if jax.process_count() > 1:
        where += f" in {jax.process_count()} processes"
      raise UserError(f"--batch-size {batch_size} does not divide over {where}; "
                      f"use a multiple of {self.num_devices} or fewer --devices")

  def process_rows(self, batch_size: int) -> slice:
    """The columns of every global batch that this process feeds."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)

  # ------------------------------------------------------------ placement
  #
  # Every host <-> device move of the state and the outputs goes through host_copy and
  # put_replicated: a jax.Array's shards are read only where they are this process's own, and a
  # global array is only ever built from host data (a device_put of a one-device array onto a mesh
  # that spans processes makes arrays whose shards cannot be read back, jax 0.10).

  def put_replicated(self, tree):
    """A replicated global array on the mesh of every leaf of a host (or device) pytree."""
    def put(a):
      return jax.make_array_from_callback(a.shape, self.replicated, lambda index: a[index])
    return jax.tree.map(put, host_copy(tree))

  def put_state(self, state):
    """Places a host (or replicated) pytree on the devices: replicated, or one copy per device for pmap."""
    if self.kind != "pmap":
      return self.put_replicated(state)
    local = len(self.local_devices)
    host = host_copy(state)
    return self._to_devices(jax.tree.map(lambda a: np.broadcast_to(a, (local,) + a.shape), host))

  def _to_devices(self, tree):
    """Per-device arrays in the layout pmap'd functions take and return (no copy per call)."""
    return jax.pmap(lambda t: t, axis_name=DATA_AXIS, devices=self.mesh.devices.tolist())(tree)

  def fetch(self, tree):
    """Host numpy copy of the outputs of this strategy's functions (pmap's: one replica)."""
    return host_copy(tree, per_device=self.kind == "pmap")

  def host_state(self, state):
    """A replicated (single-copy) view of the state for checkpoints and pictures."""
    if self.kind != "pmap":
      return state
    return self.put_replicated(self.fetch(state))

  def put_batches(self, x_local: np.ndarray, mask_local: np.ndarray):
    """Places this process's (steps, batch/processes, ...) stack; pmap gets (devices, steps, ...)."""
    if self.kind == "pmap":
      local = len(self.local_devices)
      def split(a):
        a = a.reshape(a.shape[0], local, a.shape[1] // local, *a.shape[2:])
        return np.swapaxes(a, 0, 1)
      return self._to_devices((split(x_local), split(mask_local)))
    sharding = NamedSharding(self.mesh, P(None, DATA_AXIS))
    def put(a):
      global_shape = (a.shape[0], a.shape[1] * jax.process_count(), *a.shape[2:])
      return jax.make_array_from_process_local_data(sharding, a, global_shape)
    return put(x_local), put(mask_local)

  def batch_at(self, stacks, i: int):
    """Batch i of stacks placed by `put_batches`."""
    return tuple(a[:, i] if self.kind == "pmap" else a[i] for a in stacks)

  # ------------------------------------------------------------ compilation

  def jit(self, fn, in_kinds: tuple[str, ...], *, donate_state: bool):
    """Compiles fn; in_kinds names each argument 'state' (replicated), 'batch' (split) or 'shared'."""
    donate = tuple(i for i, k in enumerate(in_kinds) if k == "state") if donate_state else ()
    if self.kind == "pmap":
      in_axes = tuple(None if k == "shared" else 0 for k in in_kinds)
      return jax.pmap(fn, axis_name=DATA_AXIS, in_axes=in_axes, donate_argnums=donate,
                      devices=self.mesh.devices.tolist())
    return jax.jit(fn, donate_argnums=donate, out_shardings=self.replicated)


def host_copy(tree, per_device: bool = False):
  """Host numpy copy of a pytree whose arrays hold the same value on every device that has them.

  With per_device, each array is pmap's stack of one copy per device, (devices, ...), and the copy
  on this process's first device is returned. Reads only this process's shards, so it works for
  arrays that span processes; an array that is split over devices rather than copied is refused.
  """
  def read(a):
    if not isinstance(a, jax.Array):
      return np.asarray(a)
    if not per_device:
      if not a.sharding.is_fully_replicated:
        raise ValueError(f"host_copy of an array split over devices (sharding {a.sharding})")
      return np.asarray(a.addressable_data(0))
    local = np.asarray(a.addressable_data(0))
    if local.shape != (1,) + a.shape[1:]:
      raise ValueError(f"host_copy(per_device=True) of an array of shape {a.shape} whose first "
                       f"shard has shape {local.shape}, not one device's copy")
    return local[0]
  return jax.tree.map(read, tree)


def _pick_devices(num_devices: int | None) -> list:
  """The first num_devices / processes devices of every process (all when None), process-major.

  Process-major order puts each process's slice of the global batch (`process_rows`) on its own
  devices.
  """
  total, processes = jax.device_count(), jax.process_count()
  n = total if num_devices is None else num_devices
  if not 1 <= n <= total:
    raise UserError(f"--devices {n} must be between 1 and the {total} visible devices")
  if n % processes:
    raise UserError(f"--devices {n} must be a multiple of the {processes} processes")
  return [d for p in range(processes) for d in jax.local_devices(process_index=p)[:n // processes]]


def make_strategy(kind: str = "auto", num_devices: int | None = None) -> Strategy:
  """The placement strategy for `kind` on `num_devices` devices (None: all).

  'auto' means sharded when more than one device would be used.
  """
  if kind == "auto":
    kind = "sharded" if (num_devices or jax.device_count()) > 1 else "none"
  if kind == "none":
    if jax.process_count() > 1:
      raise UserError("--parallel none runs on one device; with several processes use "
                      "sharded or pmap")
    if num_devices not in (None, 1):
      raise UserError(f"--parallel none runs on one device, not --devices {num_devices}")
    devices = np.array(jax.devices()[:1])
  elif kind in ("sharded", "pmap"):
    devices = np.array(_pick_devices(num_devices))
  else:
    raise UserError(f"--parallel must be none, sharded, pmap or auto, got {kind!r}")
  mesh = jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  return Strategy(kind, mesh)
