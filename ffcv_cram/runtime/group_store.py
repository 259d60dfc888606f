"""The key-value store in which a torchrun worker group meets: a fresh one for every (re)start.

torchrun (torch >= 2.5) hands its workers its own TCPStore (TORCHELASTIC_USE_AGENT_STORE=True; the
c10d rendezvous, which a plain `torchrun --nproc_per_node=N` also picks, and the static one) and
keeps that store across restarts of the worker group, with no per-restart key prefix. A restarted
group finds the previous group's keys there: gloo reads the address of a worker that no longer
exists and fails in connectFullMesh ("Connection refused"), or two ranks each read the other's
stale address, both wait to be connected to, and hang until the timeout. Which of these happens,
or neither, depends on which rank writes its key first.

So rank 0 of every group serves a store of its own on a free port and posts that port with a random
token in the agent's store; the other ranks use the posted store once it answers with the posted
token. A stale post names the previous group's rank 0, which torchrun stopped before it started
this group: its port refuses the connection (or, reused since, holds another token), and the rank
reads the post again.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
import time

import torch.distributed as dist

POST = "ffcv_cram/group_store"
TOKEN = "ffcv_cram/group_token"
PROBE_SECONDS = 5.0  # to connect to a posted store and read its token


def served_by_agent() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def group_store(rank: int, timeout: datetime.timedelta) -> dist.Store:
    """This group's own store (call only when `served_by_agent()`); waits at most `timeout`."""
    host = os.environ["MASTER_ADDR"]
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    if rank == 0:
        # rank 0 runs on the node that serves the agent's store, so MASTER_ADDR reaches it too
        store = dist.TCPStore(host, 0, is_master=True, timeout=timeout, wait_for_workers=False)
        token = secrets.token_hex(16)
        store.set(TOKEN, token)
        agent.set(POST, f"{store.port} {token}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port, token = agent.get(POST).decode().split()  # waits until some group has posted
        store = _open(host, int(port), token)
        if store is not None:
            store.set_timeout(timeout)
            return store
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank 0's store, posted in torchrun's store at {host}:"
                               f"{os.environ['MASTER_PORT']}, did not answer within {timeout}")
        time.sleep(0.2)


def _open(host: str, port: int, token: str) -> dist.Store | None:
    """The store at host:port if it holds `token`, else None (a stale post)."""
    try:  # a plain socket first: c10d logs every refused attempt with a C++ stack trace
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        store = dist.TCPStore(host, port, is_master=False,
                              timeout=datetime.timedelta(seconds=PROBE_SECONDS))
        if store.check([TOKEN]) and store.get(TOKEN).decode() == token:
            return store
    except (OSError, RuntimeError):  # refused, timed out, or not a TCPStore (dist.DistError)
        pass
    return None
