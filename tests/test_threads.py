"""Thread counts per loader and per process: the rule, the user's choice, FFCV's side effect."""
import os

import numpy as np
import pytest
import torch

from betons import write_test_beton
from ffcv_cram.data.threads import loader_threads, thread_summary, torch_threads, usable_cores


@pytest.fixture
def machine(monkeypatch):
    """A machine of 16 cores of which this process may use 8, outside torchrun."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    for name in ("LOCAL_WORLD_SIZE", "OMP_NUM_THREADS", "RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cores_follow_the_affinity_mask(machine):
    assert usable_cores() == 8
    machine.delattr(os, "sched_getaffinity")  # no affinity API (macOS, Windows): all cores
    assert usable_cores() == 16
    machine.setattr(os, "cpu_count", lambda: None)
    assert usable_cores() == 1


def test_loader_threads_share_the_cores_among_local_processes_and_loaders(machine):
    assert loader_threads() == 8
    assert loader_threads(concurrent_loaders=2) == 4
    machine.setenv("LOCAL_WORLD_SIZE", "2")
    assert loader_threads() == 4 and loader_threads(concurrent_loaders=2) == 2
    machine.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_threads(concurrent_loaders=2) == 1  # never 0
    machine.setenv("LOCAL_WORLD_SIZE", "24")
    assert loader_threads() == 1
    machine.setenv("LOCAL_WORLD_SIZE", "not a number")
    assert loader_threads() == 8


def test_an_explicit_num_workers_is_kept(machine):
    machine.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_threads(3) == 3 and loader_threads(3, concurrent_loaders=4) == 3
    assert thread_summary(3).startswith("loader threads: 3 per loader (--data.num_workers)")


def test_torch_threads_follow_omp_num_threads_else_the_share(machine):
    assert torch_threads() == 8
    machine.setenv("LOCAL_WORLD_SIZE", "2")
    assert torch_threads() == 4
    machine.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets for several processes
    assert torch_threads() == 1
    assert thread_summary() == ("loader threads: 4 per loader (8 usable cores, 2 local "
                                "processes); torch threads: 1")


class Recorder:
    """Stands in for ImageLoader: records the arguments it was built with."""
    built = []

    def __init__(self, path, **kwargs):
        Recorder.built.append(kwargs)

    def __len__(self):
        return 1


def _eval_cfg(num_workers):
    return {"data": {"style": "cifar", "resolution": 32, "num_workers": num_workers,
                     "in_memory": True, "decode": "cpu", "val_dataset": "v.beton",
                     "calib_dataset": "c.beton", "train_dataset": ""},
            "bnt": {"augment": True, "batch_size": 8, "seed": 0, "batches": 1},
            "eval": {"batch_size": 8}}


@pytest.mark.parametrize("given,want", [(0, 4), (3, 3)])
def test_eval_sparse_loaders_get_the_rule_or_the_users_choice(machine, capsys, given, want):
    from ffcv_cram.data import pipelines
    from ffcv_cram.sweep import job
    machine.setattr(pipelines, "ImageLoader", Recorder)
    machine.setenv("LOCAL_WORLD_SIZE", "2")
    Recorder.built = []
    job._loaders(_eval_cfg(given), torch.device("cpu"), None)
    assert [kw["options"].num_workers for kw in Recorder.built] == [want, want]
    assert capsys.readouterr().out.count(f"loader threads: {want} per loader") == 1
    machine.setenv("RANK", "1")  # the other processes of a torchrun launch print nothing
    job._loaders(_eval_cfg(given), torch.device("cpu"), None)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("given,want", [(0, 2), (5, 5)])
def test_trainer_loaders_get_the_rule_or_the_users_choice(machine, capsys, given, want):
    from ffcv_cram.train import loop
    from ffcv_cram.runtime.dist import Context
    machine.setattr(loop, "ImageLoader", Recorder)
    machine.setenv("LOCAL_WORLD_SIZE", "4")
    cfg = {"data": {"num_workers": given, "in_memory": True, "decode": "cpu", "order": "random",
                    "train_dataset": "t.beton", "val_dataset": "v.beton",
                    "cifar_inputs": "reference"},
           "training": {"channels_last": True, "seed": 0},
           "batch_plan": {"batch_size_per_process": 8},
           "validation": {"batch_size": 8}, "resolution": {}}
    for rank in (0, 1):
        Recorder.built = []
        loop._loaders(cfg, "cifar", Context(rank=rank, world_size=4), 0)
        assert [kw["options"].num_workers for kw in Recorder.built] == [want, want]
        printed = capsys.readouterr().out
        assert printed.count("loader threads:") == (1 if rank == 0 else 0), printed


def small_constant(i):
    return np.full((8, 8, 3), i, np.uint8)


def test_the_loader_keeps_torch_threads_where_ffcv_would_move_them(machine, tmp_path,
                                                                    keep_torch_threads):
    """FFCV sets torch's thread count to num_workers when a Loader is built and iterated."""
    path = write_test_beton(tmp_path / "constant.beton", small_constant, 24,
                            labels=np.arange(24) % 3)
    from ffcv_cram.data.loader_options import LoaderOptions
    from ffcv_cram.data.pipelines import ImageLoader
    machine.setenv("OMP_NUM_THREADS", "1")
    loader = ImageLoader(path, train=False, batch_size=8,
                         options=LoaderOptions(style="cifar", num_workers=2))
    assert loader.loader.num_workers == 2 and loader.num_workers == 2  # the user's choice
    assert torch.get_num_threads() == 1
    seen = []
    for _ in loader:
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 1]
    machine.setenv("LOCAL_WORLD_SIZE", "4")  # 8 usable cores / 4 processes
    machine.delenv("OMP_NUM_THREADS")
    loader = ImageLoader(path, train=True, batch_size=8, options=LoaderOptions(style="cifar"))
    assert loader.loader.num_workers == 2
    assert torch.get_num_threads() == 2
