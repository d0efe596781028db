"""Behaviour held still: a small fixed-seed pipeline run reproduces the reference saved before the refactor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reference_run import REFERENCE, differences, numerics, run_reference


@pytest.mark.slow
def test_a_small_fixed_seed_run_reproduces_the_saved_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HDAP_S3_ENDPOINT", "HDAP_S3_ACCESS_KEY", "HDAP_S3_SECRET_KEY", "HDAP_S3_SECURE", "HDAP_HOME"):
        monkeypatch.setenv(name, "")  # run_reference sets them for its own store; restored after the test
    if not REFERENCE.exists():
        pytest.skip(f"no reference saved for this processor ({numerics()}; float results differ between processors): "
                    "write one with `.venv/bin/python -m tests.reference_run --write`")
    monkeypatch.chdir(tmp_path)
    found = differences(json.loads(REFERENCE.read_text()), run_reference(tmp_path))
    assert not found, f"the run no longer reproduces {REFERENCE.name}:\n" + "\n".join(found[:20])
