"""A restarted torchrun group meets in a fresh store, whatever the previous group left in torchrun's.

torchrun's agent store is played by a TCPStore server in this process, the ranks by threads."""
import datetime
import socket
import threading
import time

import pytest
import torch.distributed as dist

from ffcv_cram.runtime import group_store as gs

TIMEOUT = datetime.timedelta(seconds=30)


@pytest.fixture
def agent(monkeypatch):
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    return store


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank1_in_background():
    found = {}
    thread = threading.Thread(target=lambda: found.update(store=gs.group_store(1, TIMEOUT)), daemon=True)
    thread.start()
    return thread, found


def test_only_under_torchruns_agent_store(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert not gs.served_by_agent()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    assert not gs.served_by_agent()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert gs.served_by_agent()


@pytest.mark.parametrize("stale", ["dead", "reused"])
def test_a_stale_post_is_passed_over_until_this_groups_rank_0_posts(agent, stale):
    """`dead`: the previous rank 0's port is closed. `reused`: a store answers there, but holds
    another token. Either way rank 1 waits for its own group's rank 0 and meets it."""
    if stale == "dead":
        agent.set(gs.POST, f"{closed_port()} oldtoken")
    else:
        squatter = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
        squatter.set(gs.TOKEN, "newer")
        agent.set(gs.POST, f"{squatter.port} oldtoken")
    thread, found = rank1_in_background()
    time.sleep(1.0)
    assert thread.is_alive()  # still waiting: it did not settle for the stale store
    rank0 = gs.group_store(0, TIMEOUT)
    thread.join(timeout=20)
    assert not thread.is_alive() and "store" in found
    rank0.set("hello", "from rank 0")
    assert found["store"].get("hello") == b"from rank 0"  # one store, shared by the group


def test_ranks_meet_whichever_starts_first(agent):
    rank0 = gs.group_store(0, TIMEOUT)  # rank 0 first, no stale post
    rank1 = gs.group_store(1, TIMEOUT)
    rank1.set("k", "v")
    assert rank0.get("k") == b"v"
