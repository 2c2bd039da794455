"""Counts the instructions of two optimized HLO dumps by (result type, opcode) and prints the differences.

  python hlo_compare.py step chunk evaluate    # reads before_NAME.hlo and after_NAME.hlo

Every pair whose count differs is counted; the float32 ones are listed with (before, after) counts.
"""
import collections
import re
import sys


def count(path):
  with open(path) as f:
    text = f.read()
  return collections.Counter(re.findall(r"= ((?:f32|bf16|s32|u32|u8|pred|f64|\()\S*) ([a-z\-]+)\(", text))


for name in sys.argv[1:]:
  a, b = count(f"before_{name}.hlo"), count(f"after_{name}.hlo")
  diff = {k: (a[k], b[k]) for k in set(a) | set(b) if a[k] != b[k]}
  f32 = {k: v for k, v in diff.items() if k[0].startswith("f32")}
  print(f"{name}: {sum(a.values())} vs {sum(b.values())} instructions; differing (type, op) pairs: "
        f"{len(diff)}, of them f32: {len(f32)}")
  for k, v in sorted(f32.items()):
    print("   ", k, v)
