"""`accelerate launch` with 2 CPU processes (gloo) trains a tiny memory to the same weights as one
process with the combined batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

JOB = Path(__file__).with_name("accelerate_job.py")


def _environment(tmp_path) -> dict[str, str]:
    source = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "MEMLM_HOME": str(tmp_path / "home"), "MEMLM_CACHE": str(tmp_path / "cache")}


@pytest.mark.timeout(1300)  # two runs of up to 600 s each
def test_two_gloo_processes_train_the_weights_of_one_process_on_the_combined_batch(tmp_path):
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    environment = _environment(tmp_path)
    single, double = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, str(JOB), str(single)], check=True, env=environment, timeout=600)
    subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                    str(JOB), str(double)], check=True, env=environment, timeout=600)
    with safe_open(str(double), "pt") as handle:
        assert handle.metadata()["processes"] == "2"
        assert handle.metadata()["backend"] == "gloo"
    one, two = load_file(str(single)), load_file(str(double))
    assert one.keys() == two.keys() and one
    trained = [name for name in one if name.startswith("trained/")]
    # both runs start from the same weights, and training moved them
    assert all(torch.equal(one[name], two[name]) for name in one if name.startswith("initial/"))
    assert any(not torch.equal(one[name], one[name.replace("trained/", "initial/")]) for name in trained)
    for name in trained:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
