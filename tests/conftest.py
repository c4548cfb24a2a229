from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pbp.config import load_config
from pbp.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return load_config(ModelConfig, REPO / "configs" / "model" / "tiny.yaml")
