"""Running the project's scripts (examples, benchmarks), and Python code, in a fresh
Python process."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_script(
    arguments: list[str], legacy_keras: bool, timeout: float, env: dict | None = None
) -> str:
    """Runs `python <arguments>` from the repository root with the chosen Keras flavour,
    bounded by `timeout` seconds; fails the test with the tail of its output unless it
    exits 0, and returns its stdout."""
    environment = dict(os.environ if env is None else env)
    environment.pop("TF_USE_LEGACY_KERAS", None)
    if legacy_keras:
        environment["TF_USE_LEGACY_KERAS"] = "1"
    environment["TF_CPP_MIN_LOG_LEVEL"] = "2"
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [environment.get("PYTHONPATH")] if p]
    )
    result = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        env=environment,
        cwd=str(ROOT),
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{' '.join(arguments)} failed with exit code {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


def printed_json(script: str) -> Any:
    """Runs `python -c script` as it is (the current directory and environment) and
    returns the JSON of the last line it prints; fails unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
