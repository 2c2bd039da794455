"""One training run, from a Config to a workdir of metrics, pictures and checkpoints.

  train        the pure jitted step and the epochs as lax.scan chunks
  run          train_and_evaluate(config, workdir): the run loop, resume, restore_model
  checkpoints  orbax checkpoints with file checksums; the newest one that restores
  workdir      the workdir's files, its lock, atomic writes, readable OS errors
  parallel     data parallelism over devices and processes (none, sharded jit, pmap)
  pictures     each epoch's picture, the GIF, the curves, the latent manifold
  tensorboard  TensorBoard event files without TensorFlow
  hugepages    glibc huge pages for XLA:CPU's worker threads (set before the interpreter starts)
"""
