"""Two real processes (torchrun, gloo, CPU), each rank on data that alone would keep other
channels: the statistics are combined over ranks, so every rank computes the masks of
one process that sees both ranks' data."""

import os
import socket
import subprocess
import sys

import _ddp_worker as worker
import pytest
import torch

from secateurs import load_masks


def _kept(masks):
    return {(m, t): v for m, e in masks.items() for t, v in e.items()}


@pytest.fixture(scope="module")
def ddp_masks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={port}", worker.__file__, str(out)],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    masks = {name: [_kept(load_masks(out / f"{name}-rank{r}.safetensors")) for r in (0, 1)] for name in worker.CASES}
    masks["resume"] = {(attempt, r): (_kept(load_masks(out / f"resume-{attempt}-rank{r}.safetensors")),
                                      int((out / f"resume-{attempt}-rank{r}.calls").read_text()),
                                      sorted(p.name for p in (out / "checkpoints" / f"rank-{r}").iterdir()))
                       for attempt in ("first", "again") for r in (0, 1)}
    return masks


@pytest.mark.parametrize("name", list(worker.CASES))
def test_every_rank_gets_the_masks_of_one_process_that_sees_all_the_data(name, ddp_masks):
    _, norm, _ = worker.CASES[name]
    rank0, rank1 = ddp_masks[name]
    r0, r1 = worker.rank_data(0), worker.rank_data(1)

    def single(steps):
        return _kept(worker.prune(name, worker.build(norm), steps))

    both = single([[a, b] for a, b in zip(r0, r1)])  # each step averages the two ranks' losses, as DDP does
    alone0, alone1 = single([[a] for a in r0]), single([[b] for b in r1])
    assert rank0.keys() == rank1.keys() == both.keys() and rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], both[key]), key
    # The data make the ranks disagree on their own, so the agreement above is the all-reduce's.
    assert any(not torch.equal(alone0[k], alone1[k]) for k in alone0)
    assert any(not torch.equal(alone0[k], both[k]) for k in alone0)
    assert all(int((~v).sum()) > 0 for v in rank0.values())


def test_each_rank_checkpoints_apart_and_a_finished_run_is_restored_on_every_rank(ddp_masks):
    runs = ddp_masks["resume"]
    reference, _, _ = runs[("first", 0)]
    assert reference and all(int((~v).sum()) > 0 for v in reference.values())
    for (attempt, rank), (masks, calls, files) in runs.items():
        assert calls == (2 if attempt == "first" else 0), (attempt, rank)  # restored without training
        assert files == ["round-000001.safetensors", "round-000002.safetensors"], rank
        assert masks.keys() == reference.keys()
        assert all(torch.equal(masks[k], reference[k]) for k in reference), (attempt, rank)
