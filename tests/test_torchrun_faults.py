"""torchrun as a user runs it: two agents joined by the c10d rendezvous train as one job, and a
worker SIGKILLed after the first checkpoint is restarted by torchrun into a bit-identical run.
Real processes, gloo on the CPU; the scenario is bench/bench_restarts.py's, run once here."""
import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_restarts import (finish, kill_and_restart, make_dataset, same_weights, start,  # noqa: E402
                            torchrun, train_args)

from ffcv_cram.models import get_model  # noqa: E402
from ffcv_cram.train.checkpoint import parameters_sha256  # noqa: E402

# a hang must fail the test, not stall CI: one run takes 30-90 s on a loaded 2-core machine
TIMEOUT = 420

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds workers through /proc")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("restart_data"))


@pytest.fixture(scope="module")
def two_agents(dataset, tmp_path_factory):
    """Two torchrun agents of one process each, as on two nodes, meeting at a c10d endpoint."""
    folder = tmp_path_factory.mktemp("two_agents") / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [start(torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                             f"--rdzv-endpoint={endpoint}", "--rdzv-id=two_agents",
                             *train_args(dataset, folder)))
              for _ in range(2)]
    deadline = time.monotonic() + TIMEOUT  # one limit for both: an agent alone waits for the other
    results = [finish(agent, max(1.0, deadline - time.monotonic())) for agent in agents]
    return folder, [(agent.returncode, *result) for agent, result in zip(agents, results)]


def test_two_agents_joined_by_c10d_end_with_the_same_weights_on_every_rank(two_agents):
    folder, agents = two_agents
    for returncode, out, err, timed_out in agents:
        assert not timed_out and returncode == 0, err[-3000:]
    assert sum(out.count("done:") for _, out, _, _ in agents) == 1  # rank 0 speaks for the job
    last = json.loads((folder / "log.jsonl").read_text().splitlines()[-1])
    model = get_model("resnet20", 4)
    model.load_state_dict(torch.load(folder / "final_weights.pt"))
    assert last["params_sha256"] == [parameters_sha256(model)] * 2  # both ranks hold these weights


def test_worker_killed_after_first_checkpoint_is_restarted_bit_identically(dataset, two_agents,
                                                                            tmp_path):
    """Rank 0 is the one killed: it also served the group's store, so the restarted rank 1 first
    finds a stale address. The uninterrupted reference is the two-agent run (same two ranks)."""
    reference, agents = two_agents
    assert all(returncode == 0 for returncode, *_ in agents), "the reference run failed"
    run = kill_and_restart(dataset, tmp_path / "run", victim=0, timeout=TIMEOUT)
    assert run["killed_at_s"] is not None, "the run ended before a worker could be killed"
    assert not run["timed_out"] and run["returncode"] == 0, run["stderr"][-3000:]
    assert run["starts"] == 2  # the trainer started again after the kill
    assert same_weights(reference, tmp_path / "run")
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
