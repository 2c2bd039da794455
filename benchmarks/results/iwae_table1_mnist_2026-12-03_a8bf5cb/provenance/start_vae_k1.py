"""Starts (or resumes) the table's VAE k=1 seed-0 row: the IWAE protocol, until the CLI flag lands."""
import os, sys
from vae_jax.config import Config
from vae_jax.training import run
seed = int(sys.argv[1]); resume = "--resume" in sys.argv
c = Config(data="idx:/work/shared/data/mnist", model="mlp", objective="elbo", binarize="dynamic",
           batch_size=20, lr_schedule="burda", learning_rate=1e-3, epochs=3280, seed=seed)
run.train_and_evaluate(c, f"/root/iwae_runs/vae_k1/seed_{seed}", resume=resume)
