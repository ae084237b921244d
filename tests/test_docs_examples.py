"""The Python examples of the docs pages run as written (issue 14: "a short example that
runs as written"): every ```python block of each page below, in order, in one namespace
per page, on the CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["apps.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_the_python_examples_run_as_written(page: str, capsys) -> None:
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 2, f"{page} has no examples"
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page}:block{i}", "exec"), namespace)
        except Exception as e:  # the block's number in the message, for the reader of the page
            raise AssertionError(f"{page}, example {i + 1} failed: {type(e).__name__}: {e}") from e
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "MSE noisy" in printed and "probe accuracy" in printed
