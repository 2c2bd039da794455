import time, sys, numpy as np
from vae_jax import data, classifier
ds = data.load_idx_dir("/work/shared/data/mnist")
t = time.perf_counter()
m, info = classifier.cached_classifier(sys.argv[1], ds, classifier.ClassifierConfig(epochs=int(sys.argv[2])))
print("total s", time.perf_counter()-t, info)
