import hashlib, dataclasses, jax, numpy as np
from vae_jax.config import get_config
from vae_jax.training import parallel, train
c = get_config()
strategy = parallel.make_strategy("none")
gd, st = train.init_state(c)
steps = train.Steps(gd, c, strategy)
length, unroll = train.chunk_plan(c, jax.default_backend())
x = np.zeros((length, 100, 28, 28, 1), np.uint8)
xs, m = strategy.put_batches(x, np.ones((length, 100), np.float32))
st = strategy.put_state(st)
k = train.run_keys(0)
t = steps.chunk(length, unroll).lower(st, xs, m, k.noise, 0).as_text()
tx = np.zeros((100, 100, 28, 28, 1), np.uint8)
e = steps.evaluate.lower(st.params, *strategy.put_batches(tx, np.ones((100, 100), np.float32)), k.eval).as_text()
import re
strip = lambda s: re.sub(r'(loc\(.*?\)|#loc\d*.*|metadata=\{[^}]*\})', '', s)
print(length, unroll, train.micro_batches(c, 100), hashlib.sha256(strip(t).encode()).hexdigest()[:16], hashlib.sha256(strip(e).encode()).hexdigest()[:16])
