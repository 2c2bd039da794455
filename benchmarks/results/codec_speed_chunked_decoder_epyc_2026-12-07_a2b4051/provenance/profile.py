import cProfile, pstats, sys, time, numpy as np
from vae_jax import pretrained
from vae_jax.codec import context, files, images
config, model, _ = pretrained.resolve("pretrained:cvae_context_mnist")
codec = files.Codec(model, config)
k = int(sys.argv[1]); n = int(sys.argv[2])
x = images.load("idx:/work/shared/data/mnist", "test", n)
vae = frozenset({context.VAE})
raw, _ = codec.encode_lossless(x, methods=vae, samples=k)
codec.decode(raw, "warm")
pr = cProfile.Profile(); pr.enable()
raw, enc = codec.encode_lossless(x, methods=vae, samples=k)
pr.disable(); print("encode", enc.images_per_sec, 8 * len(raw) / x.size)
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
pr = cProfile.Profile(); pr.enable()
out, dec = codec.decode(raw, "x")
pr.disable(); print("decode", dec.images_per_sec)
pstats.Stats(pr).sort_stats("tottime").print_stats(12)
