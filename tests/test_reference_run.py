"""Behaviour held still: a small fixed-seed pipeline run reproduces the reference saved before the refactor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reference_run import REFERENCE, differences, run_reference


@pytest.mark.slow
def test_a_small_fixed_seed_run_reproduces_the_saved_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HDAP_S3_ENDPOINT", "HDAP_S3_ACCESS_KEY", "HDAP_S3_SECRET_KEY", "HDAP_S3_SECURE", "HDAP_HOME"):
        monkeypatch.setenv(name, "")  # run_reference sets them for its own store; restored after the test
    monkeypatch.chdir(tmp_path)
    found = differences(json.loads(REFERENCE.read_text()), run_reference(tmp_path))
    assert not found, "the run no longer reproduces tests/data/reference_run.json:\n" + "\n".join(found[:20])
