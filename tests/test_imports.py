"""Imports point one way (DEVELOPERS.md, issue 35): entry scripts -> extras -> core library.

Every project .py (the repository root's and extras/'s, whatever files exist) is parsed with ast;
nothing is imported. The rules:
  * the core library (CORE) imports only the core; extras import the core and extras, never an
    entry script (ENTRY); an entry script imports the core and extras, never another entry script;
  * no import circle in the module graph, counting imports inside functions too;
  * no project import inside a function, except DEFERRED below (each with its reason).
KNOWN_* list what is still to be moved (issue 35 item 3): none today; each must match exactly,
so a fix or a new violation both fail here until this file says so.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = {"train_sft", "train_rl", "eval"}
CORE = {"vadr", "data", "rewards", "grpo"}

# (importer, imported) pairs allowed inside a function: a project import deferred because it
# pulls in a heavy optional dependency (say why). None today.
DEFERRED: dict[tuple[str, str], str] = {}

KNOWN_UPWARD: set = set()
KNOWN_IN_FUNCTION: set = set()
KNOWN_CYCLES: list = []


def project_modules() -> dict[str, str]:
    """{module name: path} of every .py at the root and in extras/."""
    mods = {}
    for folder, prefix in (("", ""), ("extras", "extras.")):
        for name in sorted(os.listdir(os.path.join(ROOT, folder) if folder else ROOT)):
            if name.endswith(".py") and name != "__init__.py":
                mods[prefix + name[:-3]] = os.path.join(ROOT, folder, name)
    return mods


def imports_of(path: str, module: str, mods) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import statement in path."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module.rpartition(".")[0]
    found = []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:  # relative: from . import x, from .x import y
            base = ".".join(p for p in (package, base) if p)
        # `from extras import toy` names the module extras.toy; `from vadr import f` names vadr
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in targets(child):
                    # `import extras.toy.x` or a dotted submodule: its nearest project module
                    while name and name not in mods:
                        name = name.rpartition(".")[0]
                    if name and name != module:
                        found.append((name, child.lineno, in_function))
            walk(child, inner)

    walk(tree, False)
    return found


def layer(module: str) -> str:
    return "entry" if module in ENTRY else "core" if module in CORE else (
        "extras" if module.startswith("extras.") else "unknown")


MODS = project_modules()
GRAPH = {m: imports_of(p, m, MODS) for m, p in MODS.items()}


def test_every_module_has_a_layer():
    assert [m for m in MODS if layer(m) == "unknown"] == []  # a new root script: add it to ENTRY or CORE
    assert ENTRY | CORE <= set(MODS), "a module named here no longer exists"


def test_imports_point_one_way():
    allowed = {"core": {"core"}, "extras": {"core", "extras"}, "entry": {"core", "extras"}}
    upward = {(m, t) for m, edges in GRAPH.items() for t, _, _ in edges
              if layer(t) not in allowed[layer(m)]}
    assert upward == KNOWN_UPWARD, sorted(upward ^ KNOWN_UPWARD)


def test_no_project_import_inside_a_function():
    inside = {(m, t): line for m, edges in GRAPH.items() for t, line, f in edges if f}
    unexplained = {k: line for k, line in inside.items() if k not in DEFERRED}
    assert set(unexplained) == KNOWN_IN_FUNCTION, sorted(
        f"{MODS[m]}:{line} imports {t} inside a function" for (m, t), line in unexplained.items()
        if (m, t) not in KNOWN_IN_FUNCTION)
    assert set(DEFERRED) <= set(inside), "a DEFERRED entry no longer happens: remove it"


def strongly_connected(graph: dict[str, set]) -> list[set]:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = {m: {t for t, _, _ in edges} for m, edges in GRAPH.items()}
    cycles = strongly_connected(graph)
    assert sorted(map(sorted, cycles)) == sorted(map(sorted, KNOWN_CYCLES))


def test_the_checker_sees_what_it_checks(tmp_path):
    """The parser finds plain, from-package, relative and in-function imports; Tarjan finds
    circles."""
    src = tmp_path / "x.py"
    src.write_text("import vadr\nfrom extras import toy, fastpath\nfrom vadr import f\n"
                   "from .cli import g\nimport numpy\n"
                   "def h():\n    import eval\n    return lambda: __import__('x')\n")
    mods = {"vadr", "eval", "extras.toy", "extras.fastpath", "extras.cli", "extras.x"}
    assert imports_of(str(src), "extras.x", mods) == [
        ("vadr", 1, False), ("extras.toy", 2, False), ("extras.fastpath", 2, False),
        ("vadr", 3, False), ("extras.cli", 4, False), ("eval", 7, True)]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"a"}, "b": set()}) == [{"a"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


# ---- what a reader follows beside Algorithm 2 is what runs (issue 35 item 1) -------------------

def calls_in(module: str) -> list[str]:
    """Every call target of a module as written (`grpo.rl_step(...)` -> "grpo.rl_step")."""
    tree = ast.parse(open(MODS[module], encoding="utf-8").read(), MODS[module])
    return [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]


def source(module: str) -> str:
    return open(MODS[module], encoding="utf-8").read()


SCORER_LINE = "score = grpo.completion_logprobs if args.plain_scoring else fastpath.completion_logprobs"


def test_the_scripts_run_grpos_sampler_step_and_scorer():
    """train_rl.py runs grpo.rl_step; its sampler is grpo.sample_group (StepHooks' default, which
    extras/rollout.step_hooks leaves as it is) and its scorer is picked in ONE line of train_rl.py:
    grpo.completion_logprobs, or extras/fastpath.py's drop-in unless --plain-scoring. eval.py
    samples with grpo.sample_group. grpo.py imports no extras; every sampler call in the project
    is grpo.sample_group's (extras/bench.py's naive one aside)."""
    assert "grpo.rl_step" in calls_in("train_rl")
    uses = [n for n in ast.walk(ast.parse(source("train_rl"))) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name) and n.value.id == "fastpath"]   # fastpath.X in code
    assert [ast.unparse(n) for n in uses] == ["fastpath.completion_logprobs"]
    assert source("train_rl").splitlines()[uses[0].lineno - 1].strip() == SCORER_LINE
    assert "hooks.sample" in calls_in("grpo") and "hooks.score" in source("grpo")
    assert "    sample: Callable = sample_group " in source("grpo")
    assert "    score: Callable = completion_logprobs " in source("grpo")
    made = [n for n in ast.walk(ast.parse(source("extras.rollout"))) if isinstance(n, ast.Call)
            and ast.unparse(n.func) == "grpo.StepHooks"]                  # step_hooks' one StepHooks
    assert len(made) == 1 and "sample" not in {k.arg for k in made[0].keywords}
    assert [ast.unparse(k.value) for k in made[0].keywords if k.arg == "score"] == ["score"]
    assert "grpo.sample_group" in calls_in("eval") and "fastpath" not in source("eval")
    assert [t for t, _, _ in GRAPH["grpo"] if layer(t) != "core"] == []
    samplers = {(m, c) for m in MODS for c in calls_in(m) if c.endswith("sample_group")}
    assert {c for _, c in samplers} == {"grpo.sample_group", "naive_sample_group"}, sorted(samplers)
    assert {m for m, c in samplers if c == "naive_sample_group"} == {"extras.bench"}
    assert "def sample_group" not in source("extras.fastpath")
