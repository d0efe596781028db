"""The step images, as far as this machine can check them: no Docker engine runs here, so the
Dockerfiles are read, not built (the README says so)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

IMAGES = Path(__file__).parent.parent / "images"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_each_image_installs_hdap_then_runs_hdap_help_as_a_non_root_user(name: str) -> None:
    steps = instructions(IMAGES / name)
    base = next(arguments for instruction, arguments in steps if instruction == "FROM")
    assert re.search(r":\d[\w.-]*$", base) and "latest" not in base  # a pinned release, not whatever is newest
    install = next(i for i, (instruction, arguments) in enumerate(steps) if instruction == "RUN" and "pip install '.[pipeline,mlflow,model-registry]'" in arguments)
    user = next(i for i, (instruction, _) in enumerate(steps) if instruction == "USER")
    assert install < user and steps[user][1].split(":")[0] not in ("0", "root")
    assert all(instruction != "USER" or arguments.split(":")[0] not in ("0", "root") for instruction, arguments in steps[user:])
    assert steps[-1] == ("RUN", "hdap --help > /dev/null")  # the smoke command, as the step user


def test_the_cpu_image_takes_torch_from_the_cpu_wheel_index() -> None:
    runs = [arguments for instruction, arguments in instructions(IMAGES / "Dockerfile.cpu") if instruction == "RUN"]
    torch_install = next(arguments for arguments in runs if "torch==" in arguments)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_install
    assert runs.index(torch_install) < next(i for i, arguments in enumerate(runs) if "'.[pipeline,mlflow,model-registry]'" in arguments)
