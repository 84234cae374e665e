"""The package's shape: no import circles, and the heavy optional libraries stay out of the
modules an accelerator job imports."""

import ast
import pathlib
import subprocess
import sys

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / 'guide_jax'


def import_graph() -> dict[str, set[str]]:
  """module -> the guide_jax modules it imports, at the top or inside a function."""
  modules = {}
  for path in PACKAGE.rglob('*.py'):
    name = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    modules[name.removesuffix('.__init__')] = path
  graph = {m: set() for m in modules}
  for name, path in modules.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('guide_jax'):
        for alias in node.names:
          full = f'{node.module}.{alias.name}'
          graph[name].add(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        graph[name] |= {a.name for a in node.names if a.name in modules}
  return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, out = {}, {}, [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in graph[v] & graph.keys():
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = stack[stack.index(v):]
      del stack[stack.index(v):]
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_circles():
  graph = import_graph()
  assert {'guide_jax.cli', 'guide_jax.data.pipeline'} <= graph.keys()
  assert circles(graph) == []
  # the checker finds one when there is one
  assert circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_training_modules_import_neither_tensorflow_nor_torch():
  code = ('import sys; import guide_jax.main, guide_jax.train.trainer, guide_jax.bench, '
          'guide_jax.teacher_logits, guide_jax.data.pipeline; '
          'print(sorted(m for m in ("tensorflow", "torch", "transformers") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       cwd=REPO, check=True).stdout.strip()
  assert out == '[]'
