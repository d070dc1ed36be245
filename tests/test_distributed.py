"""Two real processes (torchrun, gloo, CPU): every rank computes identical masks."""

import os
import socket
import subprocess
import sys

import torch

from secateurs import load_masks


def test_data_driven_masks_are_identical_on_every_rank(tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", worker, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("apoz", "meanrank", "taylor", "slim"):
        rank0, rank1 = (load_masks(tmp_path / f"{name}-rank{r}.safetensors") for r in (0, 1))
        assert rank0.keys() == rank1.keys() and rank0
        pruned = 0
        for module in rank0:
            for target in rank0[module]:
                assert torch.equal(rank0[module][target], rank1[module][target]), (name, module, target)
                pruned += int((~rank0[module][target]).sum())
        assert pruned > 0
