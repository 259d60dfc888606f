"""The bracket select (`kernels/triton_bracket.py`) and the fused step and CUDA-graph orchestration
built on it, against the torch path.

Selection (issue 22): masks bit-equal to `kernels=False` with exactly round(s * n) pruned, the tie
rule (lowest (tensor, row-major index) first) on the fast path and in the exact fallback, ties of
any number ranked without a miss, every way into the fallback (a full candidate buffer,
`force_miss`), and the workspace left clean by every call. Without a GPU the kernels run in
Triton's CPU interpreter (conftest.py); the selection tests also run on CUDA where one is present.

Orchestration (CPU, interpreter only): CUDA-graph capture with a recorded graph standing in for
`torch.cuda.CUDAGraph` (`RecordedGraph`: it keeps what a real graph keeps, each launch with its
arguments fixed and tensors by address, so a replay reading freed memory is an error), the launch
count of one CrAM+ step, and that a step after the warm-up builds, allocates and copies nothing.
"""
import contextlib
import copy
import os
from collections import Counter

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from ffcv_cram import NMTopkCrAM, TopkCrAM
from ffcv_cram.kernels import triton_bracket, triton_layout, triton_select, triton_step
from ffcv_cram.optim import graphs
from ffcv_cram.optim.two_pass import TwoPassOptimizer
from ffcv_cram.sparsity.masks import magnitude_masks, prune_count, selection_groups
from nets import SmallConvNet, batch
from test_triton_kernels import DEVICES

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreter_only = pytest.mark.skipif(not INTERPRETED, reason="Triton interpreter not active")
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.999]


@pytest.fixture(autouse=True)
def fresh_plans():
    """New layouts, bracket plans and workspaces for each test (plans are cached on layouts and
    read FULL_SAMPLE_MAX and the workspace when they are built)."""
    triton_layout._layouts.clear()
    triton_bracket._workspaces.clear()
    yield
    triton_layout._layouts.clear()
    triton_bracket._workspaces.clear()


@pytest.fixture
def sampled(request, monkeypatch):
    """`sampled=True`: the sample pass reads 1/32 of the keys even of small groups."""
    if request.param:
        monkeypatch.setattr(triton_bracket, "FULL_SAMPLE_MAX", 0)
    return request.param


# -- helpers ----------------------------------------------------------------------------------------
def bits(t):
    return t.view(torch.int32)


def plan_of(tensors, groups=None):
    """The bracket plan the last selection over these tensors used."""
    groups = [0] * len(tensors) if groups is None else groups
    return triton_layout.layout(tensors, groups, triton_select.BLOCK).bracket


def assert_clean(space):
    """The invariant each call leaves for the next: scratch zero, except the miss count."""
    counters = space.counters.cpu().tolist()
    assert counters[:4] + counters[5:] == [0] * 7, counters
    for name in ("coarse", "l1", "l2"):
        assert int(getattr(space, name).count_nonzero()) == 0, name


def misses(space) -> int:
    return int(space.misses)


def random_tensors(seed, device, shapes=None):
    """Gaussian weights of assorted scales, channels_last among them; odd and multi-chunk sizes."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [(32, 16, 3, 3), (3000,), (10, 33), (1, 1), (128, 40, 1, 1), (7, 5, 2, 3)]
    tensors = [torch.randn(s, generator=g) * float(torch.rand(1, generator=g) + 0.5)
               for s in shapes]
    tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    if len(tensors) > 4:
        tensors[4] = tensors[4].contiguous(memory_format=torch.channels_last)
    return [t.to(device) for t in tensors]


def assert_masks_equal_torch_path(tensors, masks, sparsity):
    expected = magnitude_masks([t.cpu() for t in tensors], sparsity, kernels=False)
    for x, y in zip(expected, masks):
        assert torch.equal(x, y.cpu())
    n = sum(t.numel() for t in tensors)
    assert sum(int((~m).sum()) for m in masks) == prune_count(n, sparsity)


def tie_order(tensors, magnitude):
    """(tensor, row-major index) of every weight of this magnitude, in the tie rule's order."""
    return [(i, int(j)) for i, t in enumerate(tensors)
            for j in torch.nonzero(t.cpu().reshape(-1).abs() == magnitude).flatten()]


def assert_tie_rule(tensors, masks, magnitude, pruned):
    """Exactly the first `pruned` ties (lowest (tensor, row-major index)) are pruned."""
    order = tie_order(tensors, magnitude)
    kept = [bool(masks[i].cpu().reshape(-1)[j]) for i, j in order]
    assert kept == [False] * pruned + [True] * (len(order) - pruned)


def straddling_ties(seed, device, pruned, ties_per_tensor=(4, 3, 2), magnitude=0.75):
    """Gaussian tensors with a few weights of one magnitude (both signs) in three tensors, the
    first channels_last at places whose row-major and memory orders differ (pruning 2 of its
    ties tells them apart); returns the tensors, and the sparsity that prunes every key below
    that magnitude and `pruned` of the ties, and `pruned`."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, 6, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(301, generator=g)
    c = torch.randn(10, 33, generator=g)
    places = [[(0, 1, 0, 0), (0, 0, 0, 1), (1, 0, 2, 0), (0, 0, 1, 0)], [(7,), (100,), (3,)],
              [(9, 32), (0, 0)]]
    for t, where, count in zip((a, b, c), places, ties_per_tensor):
        for p, sign in zip(where[:count], (1, -1, -1, 1)):
            t[p] = sign * magnitude
    tensors = [t.to(device) for t in (a, b, c)]
    return tensors, cutting_ties(tensors, magnitude, pruned), pruned


def cutting_ties(tensors, magnitude, pruned):
    """The sparsity pruning every key below `magnitude` and `pruned` of the ties at it."""
    n = sum(t.numel() for t in tensors)
    below = sum(int((t.abs() < magnitude).sum()) for t in tensors)
    assert 0 < pruned < len(tie_order(tensors, magnitude))
    return (below + pruned - 0.25) / n  # round(s * n) = below + pruned


# -- 1. equality with the torch path -----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampled", [False, True], indirect=True, ids=["full_sample", "sampled"])
def test_global_masks_equal_torch_path(device, sampled):
    total_misses = None
    for seed, sparsity in enumerate(SPARSITIES):
        tensors = random_tensors(100 + seed, device)
        masks = magnitude_masks(tensors, sparsity, "global", kernels=True)
        assert_masks_equal_torch_path(tensors, masks, sparsity)
        plan = plan_of(tensors)
        assert plan.full_sample is not sampled and (plan.m < plan.n) is sampled
        assert_clean(plan.workspace)
        total_misses = misses(plan.workspace)
    if not sampled:  # every key sampled: the k-th key is always inside the bracket
        assert total_misses == 0


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_bracket_takes_the_fast_path(device, monkeypatch):
    # 1/32 of the keys, and the k-th key still inside the bracket: magnitudes in a narrow band
    # (all within the 32 coarse bins a bracket may span), so the estimate cannot miss
    monkeypatch.setattr(triton_bracket, "FULL_SAMPLE_MAX", 0)
    g = torch.Generator().manual_seed(7)
    shapes = [(32, 16, 3, 3), (5000,), (10, 33)]
    tensors = [(1 + 0.05 * torch.rand(s, generator=g)) * torch.randn(s, generator=g).sign()
               for s in shapes]
    tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    tensors = [t.to(device) for t in tensors]
    for sparsity in (0.5, 0.9):
        masks = magnitude_masks(tensors, sparsity, kernels=True)
        assert_masks_equal_torch_path(tensors, masks, sparsity)
        plan = plan_of(tensors)
        assert not plan.full_sample and misses(plan.workspace) == 0
        assert_clean(plan.workspace)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_reads_as_many_keys_as_the_host_counts(device, monkeypatch):
    # the bracket's ranks rest on the host's count of sampled keys: partial chunks (whose hashed
    # run slots decide how many of their keys are read) and unselected tensors in between
    monkeypatch.setattr(triton_bracket, "FULL_SAMPLE_MAX", 0)
    shapes = [(32, 16, 3, 3), (2 * 4096 + 17,), (64,), (5000,), (24, 16, 3, 3), (10, 33), (3,)]
    groups = [0, 0, -1, 0, 0, 0, -1]
    tensors = random_tensors(3, device, shapes)
    masks = [torch.empty_like(t, dtype=torch.bool) if g >= 0 else None
             for t, g in zip(tensors, groups)]
    n = sum(t.numel() for t, g in zip(tensors, groups) if g >= 0)
    triton_select.select(tensors, groups, [prune_count(n, 0.7)], masks, False, method="bracket")
    plan = plan_of(tensors, groups)
    assert plan.n == n and not plan.full_sample
    assert int(plan.workspace.state[triton_bracket._SAMPLED]) == plan.m < n


@pytest.mark.parametrize("device", DEVICES)
def test_sample_is_not_fooled_by_channel_structure(device, monkeypatch):
    # channels_last filters whose first 8 input channels are 100x larger: a sample at a fixed
    # offset of every stretch of keys reads only those channels, and its bracket misses
    monkeypatch.setattr(triton_bracket, "FULL_SAMPLE_MAX", 0)
    g = torch.Generator().manual_seed(11)
    shape = (64, 64, 3, 3)
    w = (1 + 0.05 * torch.rand(shape, generator=g)) * torch.randn(shape, generator=g).sign()
    w[:, :8] *= 100
    w = w.contiguous(memory_format=torch.channels_last).to(device)
    for sparsity in (0.5, 0.7):
        masks = magnitude_masks([w], sparsity, kernels=True)
        assert_masks_equal_torch_path([w], masks, sparsity)
        assert misses(plan_of([w]).workspace) == 0


# -- 2. partial ties on the fast path ----------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pruned", [2, 6], ids=["cut_in_channels_last", "cut_across_tensors"])
def test_partial_ties_resolved_on_the_fast_path(device, pruned):
    tensors, sparsity, pruned = straddling_ties(1, device, pruned)
    masks = magnitude_masks(tensors, sparsity, kernels=True)
    space = plan_of(tensors).workspace
    state = space.state.cpu().tolist()
    assert state[triton_bracket._PARTIAL] == 1  # the ties were ranked by the scan
    assert state[triton_bracket._MISS] == 0 and misses(space) == 0
    assert_masks_equal_torch_path(tensors, masks, sparsity)
    assert_tie_rule(tensors, masks, 0.75, pruned)
    assert_clean(space)


# -- 3. more than 1,024 ties: ranked by the scan, no miss -------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_over_a_thousand_ties_ranked_without_a_miss(device):
    g = torch.Generator().manual_seed(3)
    a = torch.full((16, 8, 3, 3), 0.5) * torch.randn(16, 8, 3, 3, generator=g).sign()
    a = a.contiguous(memory_format=torch.channels_last)
    b = torch.full((401,), -0.5)
    c = torch.randn(200, generator=g) * 4  # a few other magnitudes around the tie
    tensors = [t.to(device) for t in (a, b, c)]
    ties = len(tie_order(tensors, 0.5))
    assert ties > 1024  # (once the limit of the fast path's tie ranking)
    below = sum(int((t.abs() < 0.5).sum()) for t in tensors)
    n = sum(t.numel() for t in tensors)
    sparsity = (below + ties // 3 - 0.25) / n
    masks = magnitude_masks(tensors, sparsity, kernels=True)
    space = plan_of(tensors).workspace
    assert misses(space) == 0 and space.state.cpu()[triton_bracket._PARTIAL] == 1
    assert_masks_equal_torch_path(tensors, masks, sparsity)
    assert_tie_rule(tensors, masks, 0.5, ties // 3)
    assert_clean(space)


# -- 4. force_miss: masks, and the fused CrAM step -------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_forced_miss_masks_equal_torch_path(device):
    tensors, sparsity, pruned = straddling_ties(2, device, pruned=2)  # row-major, not memory
    groups, counts = selection_groups(tensors, sparsity, "global")
    masks = [torch.empty_like(t, dtype=torch.bool) for t in tensors]
    before = [t.clone() for t in tensors]
    triton_select.select(tensors, groups, counts, masks, zero=False, method="bracket",
                         force_miss=True)
    space = plan_of(tensors).workspace
    assert misses(space) == 1
    assert all(torch.equal(bits(x), bits(y)) for x, y in zip(before, tensors))  # masks only
    assert_masks_equal_torch_path(tensors, masks, sparsity)
    assert_tie_rule(tensors, masks, 0.75, pruned)
    assert_clean(space)


def step_inputs(seed, device):
    """A CrAM step's inputs: prunable weights with a partial tie (their gradients zero, so the
    perturbed values tie too), a bias outside the selection, per-tensor rho."""
    tensors, _, _ = straddling_ties(seed, device, pruned=2)
    g = torch.Generator().manual_seed(seed + 1)
    params = tensors + [torch.randn(17, generator=g).to(device)]
    grads = [torch.randn(p.shape, generator=g).to(device).contiguous(
        memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
        for p in params]
    for p, grad in zip(params, grads):
        grad[p.abs() == 0.75] = 0.0
    rhos = [0.05, 0.2, 0.05, 0.1]
    perturbed = [p + grad * rho for p, grad, rho in zip(params, grads, rhos)]
    pruned = 2  # in row-major order, not memory order, of the first (channels_last) tensor
    return params, grads, rhos, cutting_ties(perturbed[:3], 0.75, pruned), pruned


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("force_miss", [False, True], ids=["fast_path", "forced_miss"])
def test_fused_step_first_half_equals_torch(device, force_miss):
    params, grads, rhos, sparsity, pruned = step_inputs(4, device)
    groups = [0, 0, 0, -1]
    w = [p.clone() for p in params]
    # the torch computation of the same step: w_saved = w, g_saved = g, w <- (w + rho g) * mask
    perturbed = [x + g * rho for x, g, rho in zip(w, grads, rhos)]
    expected_masks = magnitude_masks([p.cpu() for p in perturbed[:3]], sparsity, kernels=False)
    expected = [p.cpu() * m for p, m in zip(perturbed, expected_masks)] + [perturbed[3].cpu()]

    w_saves = [torch.empty_like(p) for p in params]
    g_saves = [torch.empty_like(p) for p in params]
    masks = [torch.empty_like(p, dtype=torch.bool) for p in params[:3]] + [None]
    counts = selection_groups(params[:3], sparsity, "global")[1]
    perturbation = triton_step.Perturbation(grads, w_saves, g_saves, rhos)
    triton_step.perturb_and_select(params, perturbation, groups, counts, masks,
                                   force_miss=force_miss)
    space = plan_of(params, groups).workspace
    assert misses(space) == int(force_miss)
    if not force_miss:  # the perturbed ties were ranked on the fast path
        assert space.state.cpu()[triton_bracket._PARTIAL] == 1
    for got, want in zip(params, expected):  # signed zeros included
        assert torch.equal(bits(got.cpu()), bits(want))
    assert any(bool((bits(p) == int(bits(torch.tensor(-0.0)))).any()) for p in params[:3])
    for got, want in zip(masks, expected_masks):
        assert torch.equal(got.cpu(), want)
    for saved, original in zip(w_saves, w):
        assert torch.equal(bits(saved), bits(original))
    for saved, grad in zip(g_saves, grads):
        assert torch.equal(bits(saved), bits(grad))
    assert_tie_rule(perturbed[:3], masks[:3], 0.75, pruned)  # (g = 0 there: w + rho g = w)
    assert_clean(space)


# -- 5. candidate buffer overflow -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_candidate_overflow_falls_back_exactly(device, monkeypatch):
    tiny = {}

    def tiny_workspace(device, chunks):  # room for 32: a bracket of +-64 ranks overflows it
        if device not in tiny:
            tiny[device] = triton_bracket.Workspace(device, chunks, bucket=16, spill=16)
        return tiny[device]
    monkeypatch.setattr(triton_bracket, "workspace", tiny_workspace)
    tensors = random_tensors(5, device)
    for calls, sparsity in enumerate((0.7, 0.3), 1):
        masks = magnitude_masks(tensors, sparsity, kernels=True)
        plan = plan_of(tensors)
        assert plan.workspace.bucket == 16
        assert misses(plan.workspace) == calls
        assert_masks_equal_torch_path(tensors, masks, sparsity)
        assert_clean(plan.workspace)  # the fallback cleared the counts of unstored candidates


# -- 7. CUDA-graph orchestration, with a recorded graph on the CPU ----------------------------------
class _Address:
    """A tensor argument as a CUDA graph keeps it: the memory it addresses, no reference to it."""

    def __init__(self, t):
        storage = t.untyped_storage()
        self.storage, self.address = StorageWeakRef(storage), storage.data_ptr()
        self.view = (t.dtype, t.storage_offset(), tuple(t.shape), t.stride())

    def tensor(self, what):
        storage = (None if self.storage.expired()
                   else torch.UntypedStorage._new_with_weak_ptr(self.storage.cdata))
        if storage is None:
            raise AssertionError(f"replay of {what}: memory it reads was freed after the capture")
        assert storage.data_ptr() == self.address, f"replay of {what}: memory moved"
        dtype, offset, shape, stride = self.view
        return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)


class RecordedGraph:
    """Stands in for torch.cuda.CUDAGraph: the capture records each Triton launch and ATen kernel
    without running it, arguments fixed (scalars by value, tensors by address); a replay runs them
    again in order. Memory allocated during the capture is the graph's own (kept); memory that
    existed before is not kept alive by the graph, so reading it after it was freed fails."""

    def __init__(self):
        self.work, self.pool, self.replays = [], {}, 0

    def _freeze(self, value):
        if isinstance(value, torch.Tensor):
            pooled = self.pool.get(value.untyped_storage().data_ptr())
            return value if pooled is not None else _Address(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._freeze(v) for v in value)
        if isinstance(value, dict):
            return {k: self._freeze(v) for k, v in value.items()}
        return value

    def _thaw(self, value, what):
        if isinstance(value, _Address):
            return value.tensor(what)
        if isinstance(value, (list, tuple)):
            return type(value)(self._thaw(v, what) for v in value)
        if isinstance(value, dict):
            return {k: self._thaw(v, what) for k, v in value.items()}
        return value

    def record(self, run, what, args, kwargs, outputs=None):
        outputs = [t for t in _flat_tensors(outputs)]
        args, kwargs = self._freeze(args), self._freeze(kwargs)
        for t in outputs:  # allocated inside the capture: the graph's pool
            self.pool[t.untyped_storage().data_ptr()] = t
        self.work.append((run, what, args, kwargs, outputs))

    def replay(self):
        self.replays += 1
        for run, what, args, kwargs, outputs in self.work:
            result = run(*self._thaw(args, what), **self._thaw(kwargs, what))
            for old, new in zip(outputs, _flat_tensors(result)):
                old.copy_(new)


def _flat_tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flat_tensors(v)]
    return []


_HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
               torch.ops.aten.equal.default}


class _Capturing(TorchDispatchMode):
    """ATen calls inside a capture: views and non-kernel ops run now (host metadata); mutations
    are recorded for the replays; functional ops run now (their outputs join the pool) and are
    recorded; a host read of device memory is an error."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise AssertionError(f"{func} inside a CUDA graph capture: a host synchronisation")
        if func.namespace != "aten" or func.is_view:
            return func(*args, **kwargs)
        if func._schema.is_mutable:
            self.graph.record(func, str(func), args, kwargs)
            return _written(func, args, kwargs)
        out = func(*args, **kwargs)
        self.graph.record(func, str(func), args, kwargs, outputs=out)
        return out


def _written(func, args, kwargs):
    """What a mutating op returns: its written arguments (nothing for `-> ()` ops)."""
    if not func._schema.returns:
        return None
    values = [args[i] if i < len(args) else kwargs.get(a.name)
              for i, a in enumerate(func._schema.arguments)
              if a.alias_info is not None and a.alias_info.is_write]
    return values[0] if len(func._schema.returns) == 1 else tuple(values)


@pytest.fixture
def recorded_graphs(monkeypatch):
    """StepGraphs captures RecordedGraphs; the list of those captured, in order."""
    from triton.runtime.interpreter import InterpretedFunction
    original = InterpretedFunction.run
    capturing = {"graph": None}
    captured = []

    def run(self, *args, grid, warmup, **kwargs):
        graph = capturing["graph"]
        if graph is None or warmup:
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)
        launch = lambda *a, **k: original(self, *a, grid=grid, warmup=False, **k)  # noqa: E731
        graph.record(launch, self.__name__, args, kwargs)

    def capture(step_graphs, launches):
        graph = capturing["graph"] = RecordedGraph()
        try:
            with _Capturing(graph):
                launches()
        finally:
            capturing["graph"] = None
        captured.append(graph)
        return graph
    monkeypatch.setattr(InterpretedFunction, "run", run)
    monkeypatch.setattr(graphs.StepGraphs, "_capture", capture)
    return captured


def cram_run(cls, cuda_graph, steps, events=None, interval=1, seed=0, after_step=None,
             **options):
    """`steps` steps of a channels_last SmallConvNet under `cls` with a fused SGD base (lr
    0.125: exact in float32); events[step](optimizer) runs before that step, after_step() after
    each. Returns the final parameters, buffers and momenta, the optimizer, and per step (full
    step?, index of the sparsity or pattern drawn)."""
    torch.manual_seed(0)
    model = SmallConvNet().to(memory_format=torch.channels_last)
    optimizer = cls(model.parameters(), torch.optim.SGD, lr=0.125, momentum=0.9,
                    weight_decay=1e-4, fused=True, kernels=True, cuda_graph=cuda_graph,
                    interval=interval, seed=seed, **options)
    history = []
    for step in range(steps):
        if events and step in events:
            events[step](optimizer)
        x, y = batch(dtype=torch.float32, seed=step)

        def backward():
            torch.nn.functional.cross_entropy(model(x), y).backward()
        backward()
        if optimizer.full_step_due:
            optimizer.first_step(zero_grad=True)
            backward()
            optimizer.second_step(zero_grad=True)
            if isinstance(optimizer, NMTopkCrAM):
                history.append((True, optimizer.patterns.index(optimizer.last_pattern)))
            else:
                history.append((True, optimizer.sparsities.index(optimizer.last_sparsity)))
        else:
            optimizer.one_pass_step(zero_grad=True)
            history.append((False, None))
        if after_step is not None:
            after_step()
    final = dict(model.state_dict())
    final.update({f"momentum{i}": s["momentum_buffer"]
                  for i, s in enumerate(optimizer.base_optimizer.state.values())})
    return final, optimizer, history


def assert_bit_equal(expected, got):
    assert expected.keys() == got.keys()
    for name in expected:
        x, y = expected[name], got[name]
        assert torch.equal(x.view(torch.int32) if x.is_floating_point() else x,
                           y.view(torch.int32) if y.is_floating_point() else y), name


def lr_to(value):
    def event(optimizer):
        for group in optimizer.param_groups:
            group["lr"] = value
    return event


def reload(optimizer):
    """A checkpoint round trip: new momentum tensors (what a captured step must not read)."""
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    if optimizer._graphs is not None:
        assert not optimizer._graphs.graphs, "load_state_dict kept captured graphs"


reload.resets_graphs = True


def rho_to(value):
    """Another rho: the fused step's plan is rebuilt (its tables are new)."""
    def event(optimizer):
        for group in optimizer.param_groups:
            group["rho"] = value
    event.resets_graphs = True
    return event


def expected_captures(history, second_key, invalidated_before=()):
    """Per step, captures so far: after WARMUP_STEPS full steps each full step replays one
    first-half graph per draw and one second-half graph per table of step masks (`second_key`
    of the draw), captured on first use (again after an invalidation)."""
    seen, total, full_steps, out = set(), 0, 0, []
    for step, (full, draw) in enumerate(history):
        if step in invalidated_before:
            seen = set()
        if full and full_steps >= graphs.WARMUP_STEPS:
            for kind in (("first", draw), second_key(draw)):
                if kind not in seen:
                    seen.add(kind)
                    total += 1
        full_steps += full
        out.append(total)
    return out


GRAPH_CASES = {  # id: (class, steps, options, events)
    "global": (TopkCrAM, 5, {}, {3: lr_to(0.0625), 4: reload}),
    "uniform": (TopkCrAM, 4, {"scope": "uniform"}, {3: lr_to(0.0625)}),
    "nm": (NMTopkCrAM, 6, {}, {3: lr_to(0.0625), 4: reload, 5: rho_to(0.1)}),
    "interval2": (TopkCrAM, 6, {"interval": 2}, {}),
}


@interpreter_only
@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_cuda_graph_steps_equal_eager_steps(case, recorded_graphs):
    cls, steps, options, events = GRAPH_CASES[case]
    expected, _, eager_history = cram_run(cls, False, steps, events, **options)
    captures = []  # graphs captured so far, after each step
    got, optimizer, history = cram_run(cls, True, steps, events, **options,
                                       after_step=lambda: captures.append(len(recorded_graphs)))
    assert history == eager_history
    assert_bit_equal(expected, got)
    resets = [s for s, e in events.items() if getattr(e, "resets_graphs", False)]

    def second_key(draw):
        if cls is NMTopkCrAM:  # the finish reads the mask table of groups of M
            return ("second", optimizer.patterns[draw][1])
        return ("second",)  # one mask table whatever the sparsity
    assert captures == expected_captures(history, second_key, resets), (captures, history)
    graph_steps = sum(1 for full, _ in history if full) - graphs.WARMUP_STEPS
    assert sum(g.replays for g in recorded_graphs) == 2 * graph_steps  # both halves, every step
    assert all(g.replays >= 1 for g in recorded_graphs)
    kinds = [key[0] for key in optimizer._graphs.graphs]
    assert any(kind[0] == "second" for kind in kinds) and len(set(kinds)) == len(kinds)


@interpreter_only
def test_recorded_graph_fails_a_replay_of_stale_momentum(recorded_graphs, monkeypatch):
    # the harness above can fail: without the invalidation on load_state_dict, the captured
    # base step still addresses the momentum buffers the load replaced (and freed)
    monkeypatch.setattr(graphs.StepGraphs, "invalidate", lambda self: None)

    def reload_keeping_graphs(optimizer):
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    with pytest.raises(AssertionError, match="freed after the capture"):
        cram_run(NMTopkCrAM, True, 4, {3: reload_keeping_graphs}, patterns=((2, 4),))


@interpreter_only
def test_captured_uniform_selection_outlives_table_cache_churn(recorded_graphs):
    # the prune counts a captured uniform selection reads must live as long as its graph, not
    # as long as the shared cache of small tables keeps them (other plans and selections fill it)
    def churn(optimizer):
        for i in range(2 * triton_layout._CACHE_SIZE):
            triton_layout.small_table([i, -i], torch.int64, torch.device("cpu"))
    got, _, _ = cram_run(TopkCrAM, True, 4, {3: churn}, scope="uniform", sparsities=(0.5,))
    assert len(recorded_graphs) == 2 and all(g.replays == 2 for g in recorded_graphs)
    assert all(bool(t.isfinite().all()) for t in got.values() if t.is_floating_point())


def test_cuda_graph_refusals_name_the_setting():
    model = SmallConvNet()
    cases = [({"kernels": False}, "kernels=False"), ({"reuse": True}, "reuse=True"),
             ({"grad_norm": True}, "grad_norm=True"), ({"fused": False}, "fused=True"),
             ({"fused": None, "foreach": True}, "fused=True")]
    for options, message in cases:
        options = {"fused": True, "kernels": True, **options}
        for cls in (TopkCrAM, NMTopkCrAM):
            with pytest.raises(ValueError, match=message):
                cls(model.parameters(), torch.optim.SGD, lr=0.1, cuda_graph=True, **options)


# -- 8, 9. one step's launches, and a step after the warm-up builds nothing ------------------------
_NO_KERNEL = {  # on CUDA: host work or allocator bookkeeping, no launch
    torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
    torch.ops.aten.empty_like.default, torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
}
_HOST_DATA = {  # a host tensor made from Python values (torch.tensor), and pinning it
    torch.ops.aten.lift_fresh.default, torch.ops.aten._pin_memory.default,
    torch.ops.aten.is_pinned.default,
}


class StepCounter(TorchDispatchMode):
    """Inside `with counter:` (the optimizer's half-steps only): Triton launches by kernel, ATen
    operations by kind, tensor allocations, host syncs; and plan building (new Layouts, rewritten
    address tables, host tables copied to the device, pin_memory calls). The optimizer's draw of
    the sparsity (a CPU generator, identical on CUDA) is counted apart as host work."""

    def __init__(self, monkeypatch):
        super().__init__()
        from triton.runtime.interpreter import InterpretedFunction
        self.triton, self.aten, self.host, self.allocations = Counter(), Counter(), Counter(), []
        self.builds = Counter()
        self.active, self.depth, self.drawing = False, 0, False
        launch = InterpretedFunction.run

        def run(fn, *args, **kwargs):
            if self.counting:
                self.triton[fn.__name__] += 1
            self.depth += 1  # (the interpreter's own tensor copies are not the step's)
            try:
                return launch(fn, *args, **kwargs)
            finally:
                self.depth -= 1
        monkeypatch.setattr(InterpretedFunction, "run", run)
        draw = TwoPassOptimizer.draw

        def drawing(optimizer, n):
            self.drawing = True
            try:
                return draw(optimizer, n)
            finally:
                self.drawing = False
        monkeypatch.setattr(TwoPassOptimizer, "draw", drawing)
        self._count_calls(monkeypatch, triton_layout.Layout, "__init__", "new Layout")
        self._count_calls(monkeypatch, triton_layout, "_to_device", "host table to device")
        self._count_calls(monkeypatch, torch.Tensor, "pin_memory", "pin_memory")
        update = triton_step._Table.update

        def rewrite(table, addresses):
            if self.counting and addresses != table.addresses:
                self.builds["address table rewritten"] += 1
            return update(table, addresses)
        monkeypatch.setattr(triton_step._Table, "update", rewrite)

    def _count_calls(self, monkeypatch, owner, name, label):
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            if self.counting:
                self.builds[label] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    @property
    def counting(self):
        return self.active and self.depth == 0

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if not self.counting or func.namespace != "aten" or (
                func.is_view and func not in _HOST_DATA):
            return out  # views and metadata (detach included), profiler records
        if self.drawing:
            self.host["draw: " + name] += 1
            return out
        if func in _HOST_DATA or func in _HOST_READS:
            self.host[name] += 1
            if func is torch.ops.aten.lift_fresh.default:  # torch.tensor(...): a new tensor
                self.allocations.append(name)
            return out
        if func not in _NO_KERNEL:
            self.aten[name] += 1
        inputs = {t.untyped_storage().data_ptr() for t in _flat_tensors((args, kwargs))}
        if any(t.untyped_storage().data_ptr() not in inputs for t in _flat_tensors(out)):
            self.allocations.append(name)
        return out

    def reset(self):
        for counter in (self.triton, self.aten, self.host, self.builds):
            counter.clear()
        self.allocations.clear()

    def launches(self) -> int:
        return sum(self.triton.values()) + sum(self.aten.values())

    def report(self) -> dict:
        return {"launches": self.launches(), "triton": dict(self.triton),
                "aten": dict(self.aten), "host": dict(self.host),
                "allocations": list(self.allocations), "builds": dict(self.builds)}


def counted_steps(counter, cls, warmup, counted=1, stay_put=True, seed=1, **options):
    """`warmup` full CrAM steps of a channels_last SmallConvNet (fused SGD base), then `counted`
    more with the optimizer's half-steps inside `counter`. `stay_put`: gradients handed over in
    the same buffers every pass (as CUDA's caching allocator usually does), else autograd's."""
    torch.manual_seed(0)
    model = SmallConvNet().to(memory_format=torch.channels_last)
    optimizer = cls(model.parameters(), torch.optim.SGD, lr=0.125, momentum=0.9, fused=True,
                    kernels=True, seed=seed, **options)
    buffers = {p: torch.empty_like(p) for p in model.parameters()}
    draws = []
    for step in range(warmup + counted):
        x, y = batch(dtype=torch.float32, seed=step)

        def backward():
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if stay_put:
                for p, buffer in buffers.items():
                    p.grad = buffer.copy_(p.grad)
        if step == warmup:
            counter.reset()
        backward()
        with counter if step >= warmup else contextlib.nullcontext():
            optimizer.first_step(zero_grad=True)
        backward()
        with counter if step >= warmup else contextlib.nullcontext():
            optimizer.second_step(zero_grad=True)
        draws.append(getattr(optimizer, "last_sparsity", None) or optimizer.last_pattern)
    return optimizer, draws


# one CrAM+ step's optimizer side (global threshold), on CUDA: the bracket select's 7 launches
# (3 of them return at once unless the bracket missed or a tie straddles the threshold), the
# finish, the fused base step
LAUNCH_TARGET = 9


@interpreter_only
def test_cram_plus_step_launch_count(monkeypatch):
    counter = StepCounter(monkeypatch)
    counted_steps(counter, TopkCrAM, warmup=1)
    report = counter.report()
    print(f"\nTopkCrAM global, CrAM+, gradients in place: {report}")
    assert counter.launches() <= LAUNCH_TARGET, report
    # what they are: the bracket select's launches, the finish, the fused base step
    assert report["triton"] == {"_sample": 1, "_full": 1, "_pick": 1, "_resolve": 1,
                                "_fine_histogram": 1, "_scan_ties": 1, "_settle_masks": 1,
                                "_finish": 1}
    assert report["aten"] == {"aten._fused_sgd_.default": 1}
    assert report["host"] == {"draw: aten.randint.generator": 1,
                              "draw: aten._local_scalar_dense.default": 1}  # no other sync
    for name, cls, options, stay_put in [
            ("TopkCrAM global, gradients moved by autograd", TopkCrAM, {}, False),
            ("TopkCrAM uniform", TopkCrAM, {"scope": "uniform"}, True),
            ("NMTopkCrAM", NMTopkCrAM, {}, True)]:
        counter = StepCounter(monkeypatch)
        counted_steps(counter, cls, warmup=1, stay_put=stay_put, **options)
        print(f"{name}: {counter.report()}")


@interpreter_only
def test_step_after_warmup_builds_allocates_and_copies_nothing(monkeypatch):
    counter = StepCounter(monkeypatch)
    optimizer, draws = counted_steps(counter, TopkCrAM, warmup=graphs.WARMUP_STEPS)
    assert draws[-1] not in draws[:-1]  # (a sparsity first drawn now: nothing built for it)
    report = counter.report()
    assert report["builds"] == {}, report  # no Layout, table rewrite, device copy, pinning
    assert report["allocations"] == [], report
    assert report["host"] == {"draw: aten.randint.generator": 1,
                              "draw: aten._local_scalar_dense.default": 1}, report
