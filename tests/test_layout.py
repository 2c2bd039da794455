"""The package's import graph, read from the source with `ast`: no circle, and every floor imports
only the floors below it (the ground floor <- nn <- training <- research, study, codec, pretrained
<- cli), as vae_jax/__init__.py draws it."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vae_jax")
FLOORS = {"nn": 1, "training": 2, "research": 3, "study": 3, "codec": 3, "pretrained": 3}
TOP = {"cli": 4}  # top-level modules above the ground floor


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")].split(os.sep)
  return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def _modules() -> dict[str, str]:
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        found[_module_name(os.path.join(root, f))] = os.path.join(root, f)
  return found


def import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports (at any depth of its body, lazy imports included)."""
  modules = _modules()
  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from vae_jax.nn import models` imports vae_jax.nn.models when that is a module.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      else:
        continue
      deps.update(t for t in targets if t in modules and t != name)
    graph[name] = deps
  return graph


def floor(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1:
    return 0  # vae_jax/__init__.py imports nothing of the package
  if len(parts) == 2 and parts[1] in TOP:
    return TOP[parts[1]]
  return FLOORS.get(parts[1], 0)


def _find_cycle(graph):
  state = {}
  def visit(node, path):
    state[node] = "open"
    for dep in sorted(graph[node]):
      if state.get(dep) == "open":
        return path[path.index(dep):] + [dep] if dep in path else [node, dep]
      if dep not in state:
        cycle = visit(dep, path + [dep])
        if cycle:
          return cycle
    state[node] = "done"
    return None
  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [node])
      if cycle:
        return cycle
  return None


def test_the_graph_reader_sees_a_known_edge_and_a_known_circle():
  graph = import_graph()
  assert "vae_jax.nn.models" in graph["vae_jax.nn.objectives"]
  assert "vae_jax.training.train" in graph["vae_jax.training.run"]
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_imports_no_circle():
  assert _find_cycle(import_graph()) is None


@pytest.mark.parametrize("subpackage", sorted(FLOORS))
def test_each_subpackage_imports_only_floors_below_it(subpackage):
  bad = [f"{m} -> {d}" for m, deps in import_graph().items()
         if m.split(".")[1:2] == [subpackage] for d in sorted(deps)
         if floor(d) > floor(m) or (floor(d) == floor(m) and d.split(".")[1] != subpackage)]
  assert not bad, "imports that go up or sideways: " + "; ".join(bad)


def test_the_ground_floor_imports_no_subpackage():
  bad = [f"{m} -> {d}" for m, deps in import_graph().items() if floor(m) == 0
         for d in sorted(deps) if floor(d) != 0]
  assert not bad, "; ".join(bad)


def test_every_subpackage_says_what_lives_there():
  for sub in FLOORS:
    init = os.path.join(PACKAGE, sub, "__init__.py")
    with open(init, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read()))
    assert doc and len(doc.splitlines()) >= 2, f"{init} needs a docstring naming its modules"
