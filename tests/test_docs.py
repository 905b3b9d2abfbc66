"""The docs agree with the code: README.md stays a front door (its size, its test command is .ci/run's,
its make targets exist, the Makefile header's README sections exist), and docs/course.md's knobs
table lists every flag of train_rl.py's AVA-GRPO and rewards groups and its API table every
parameter and default of the functions it names."""
import ast
import contextlib
import importlib
import inspect
import io
import os
import re

import pytest

import train_rl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    return open(os.path.join(ROOT, *path), encoding="utf-8").read()


def _table_rows(text, heading):
    """The `| ... |` rows (header and rule dropped) of the first table under `## heading`."""
    section = text.split(f"\n## {heading}\n")[1].split("\n## ")[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in rows[2:]]


def test_readme_is_a_front_door():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 150
    assert [i + 1 for i, ln in enumerate(lines) if len(ln) > 200] == []


def test_ci_runs_exactly_the_readme_test_command():
    block = _read("README.md").split("\n## Test\n")[1].split("```bash\n")[1].split("```")[0]
    assert block.splitlines() == ["python -m pytest tests/ -q"]
    assert _read(".ci", "run").strip().splitlines()[-1] == block.strip()


def test_readme_make_targets_exist_and_the_makefile_header_names_readme_sections():
    readme, makefile = _read("README.md"), _read("Makefile")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    used = set(re.findall(r"^make ([a-z][a-z-]*)", readme, re.M))
    assert {"toy", "toy-smoke", "toy-base-smoke"} <= used and used <= targets, used - targets
    header = "\n".join(ln[1:].strip() for ln in makefile.splitlines()[:15] if ln.startswith("#"))
    named = re.findall(r'README\.md\s+"([^"]+)"', header.replace("\n", " "))
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert len(named) == 2 and all(n in headings for n in named), (named, headings)


def _help_groups():
    """train_rl.py --help as {group title: [its --flags]}."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        train_rl.parse_args(["--help"])
    groups, title = {}, None
    for ln in out.getvalue().splitlines():
        if ln and not ln.startswith(" ") and ln.endswith(":"):
            title = ln[:-1]
            groups[title] = []
        elif title and re.match(r"^  --", ln):
            groups[title].append(ln.split()[0].rstrip(","))
    return groups


def test_course_knobs_table_lists_every_grpo_and_reward_flag():
    groups = _help_groups()
    want = [f for t, flags in groups.items() if t.startswith(("AVA-GRPO", "rewards")) for f in flags]
    assert "--loss-type" in want and "--no-length-reward" in want  # both groups were found
    rows = _table_rows(_read("docs", "course.md"), "Knobs of `train_rl.py`")
    listed = [re.fullmatch(r"`(--[a-z-]+)`", r[0]).group(1) for r in rows]
    assert sorted(listed) == sorted(want + ["--prompt-variant"])  # that one too: what the rollouts are asked
    values = {r[0].strip("`"): r[1] for r in rows}
    for flag, choices in (("--loss-type", ("sequence", "token", "dr_grpo")),
                          ("--adv-std", ("unbiased", "biased", "none")),
                          ("--length-mode", ("words", "authors"))):
        assert re.findall(r"`([a-z_]+)`", values[flag]) == list(choices), flag


def test_course_api_table_matches_the_signatures():
    rows = _table_rows(_read("docs", "course.md"), "API for course assignments")
    assert len(rows) == 10
    for name, sig, _ in rows:
        mod_name, fn_name = name.strip("`").split(".")
        mod = importlib.import_module(mod_name)
        params = inspect.signature(getattr(mod, fn_name)).parameters
        written = [p.strip() for p in sig.strip("`()").split(", ")]
        assert [w.split("=")[0] for w in written] == list(params), name
        for w in written:
            if "=" not in w:
                assert params[w].default is inspect.Parameter.empty, (name, w)
                continue
            key, text = w.split("=", 1)
            default = getattr(mod, text) if text.isupper() else ast.literal_eval(text)  # a module constant by name
            assert params[key].default == default, (name, key)
