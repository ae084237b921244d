"""Shared fixtures.

Tests that need the real datasets read them through ``DEEPGEN_DATA``. Where it is unset
they skip with a reason, except when ``DEEPGEN_REQUIRE_DATA=1`` (``.ci/run`` sets it):
then a missing folder is a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny test models run fastest on one thread, and CI has only two cores.
torch.set_num_threads(1)


@pytest.fixture
def real_data_dir() -> Path:
    root = os.environ.get("DEEPGEN_DATA")
    required = os.environ.get("DEEPGEN_REQUIRE_DATA") == "1"
    if not root or not Path(root).is_dir():
        message = f"real datasets not found: DEEPGEN_DATA={root!r} is not a folder"
        if required:
            pytest.fail(message + " (DEEPGEN_REQUIRE_DATA=1)")
        pytest.skip(message)
    return Path(root)
