"""Shared fixtures: a tiny toy world (a few short videos) and the toy model built on its text."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402
import vadr  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """8 SFT-train, 4 SFT-test and 8 RL videos of 16-24 frames: enough for every script."""
    d = tmp_path_factory.mktemp("tiny_world")
    paths = data.generate_toy_world(str(d), seed=1, n_sft=8, n_test=4, n_rl=8, frames=(16, 24), quiet=True)
    return dict(paths, root=str(d))


@pytest.fixture(scope="session")
def tiny_model(tiny_world):
    """The toy preset with its tokenizer trained on the tiny world's SFT text (seed 0)."""
    return vadr.load_model("toy", corpus=data.toy_corpus(tiny_world["root"]), seed=0)
