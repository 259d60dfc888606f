"""Section 1 of bench_topk_kernel.py: the checks that stop the run before anything is timed.

Also what the checks and the timings share: the sparsities, the CrAM+ step on a model copy
(`train_step`), and `FirstHalf`, the CrAM first half (perturb + select) on its own.
"""
import copy
import traceback

import torch

from ffcv_cram import NMTopkCrAM, TopkCrAM
from ffcv_cram.kernels.triton_layout import layout
from ffcv_cram.kernels.triton_select import BLOCK, bracket_plan, select
from ffcv_cram.optim.graphs import WARMUP_STEPS
from ffcv_cram.sparsity.masks import (compress_, magnitude_masks, nm_masks, prune_count,
                                      selection_groups)

SPARSITIES = (0.5, 0.7, 0.9)
RHO = 0.05
GRAPH_LR = 0.125  # exact in float32: graph replays (float32 device lr) equal eager steps
GRAPH_SEED = 2    # its draws repeat a sparsity after the graph warm-up: a first half is replayed


class CheckFailed(Exception):
    pass


def require(ok, what):
    if not ok:
        raise CheckFailed(what)


def sgd_kwargs(lr=0.1):
    return dict(lr=lr, momentum=0.9, weight_decay=5e-5, fused=True)  # fused: as make_optimizer


def clone(model):
    return copy.deepcopy(model)


def forward_backward(model, x, y):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()


def train_step(model, opt, x, y):
    forward_backward(model, x, y)
    opt.first_step(zero_grad=True)
    forward_backward(model, x, y)
    opt.second_step(zero_grad=True)


def no_capture(opt):
    """--smoke: graphs cannot be captured on the CPU; keep the graph mode's eager warm-up (device
    learning rates, the captured steps' code) forever instead."""
    opt._graphs.warmup = 1 << 30
    return opt


def equal_lists(a, b):
    return len(a) == len(b) and all((x is None) == (y is None) and (x is None or torch.equal(x, y))
                                    for x, y in zip(a, b))


# -- the CrAM first half on its own (a StepPlan over copies of a model's parameters) -------------
class FirstHalf:
    """perturb (save w and g, w += rho * g) + global select over copies of every parameter of a
    model, with fixed gradient buffers: what a CrAM+ step's first_step launches."""

    def __init__(self, model, grads):
        from ffcv_cram.kernels.triton_step import StepPlan
        self.params = [p.detach().clone() for p in model.parameters()]
        self.pristine = [p.clone() for p in self.params]
        self.grads = [g.clone() for g in grads]
        self.masks = [torch.empty_like(p, dtype=torch.bool) if p.dim() > 1 else None
                      for p in self.params]
        groups = [0 if p.dim() > 1 else -1 for p in self.params]
        self.prunable = [p for p in self.params if p.dim() > 1]
        self.w_saves = [torch.empty_like(p) for p in self.params]
        self.g_saves = [torch.empty_like(p) for p in self.params]
        self.plan = StepPlan(self.params, self.w_saves, self.g_saves, self.masks,
                             [RHO] * len(self.params), groups)
        self.plan.use_gradients(self.grads)
        self.counts = {s: selection_groups(self.prunable, s, "global")[1] for s in SPARSITIES}
        for counts in self.counts.values():
            self.plan.prepare(counts)
        self.workspace = bracket_plan(self.plan.layout, self.params, groups,
                                      self.params[0].device).workspace

    def reset(self):
        torch._foreach_copy_(self.params, self.pristine)

    def run(self, sparsity, **options):
        self.plan.perturb_and_select(self.counts[sparsity], **options)

    def expected(self, sparsity):
        """The torch path's perturbed, compressed weights and masks."""
        w = [p.clone() for p in self.pristine]
        torch._foreach_add_(w, torch._foreach_mul(self.grads, RHO))
        masks = iter(compress_([p for p in w if p.dim() > 1], sparsity, kernels=False))
        return w, [next(masks) if p.dim() > 1 else None for p in w]


# -- 1. checks -----------------------------------------------------------------------------------
def mask_workspace(weights, groups):
    """The bracket select's workspace as `select` uses it for these tensors."""
    plan = layout(weights, groups, BLOCK)
    return bracket_plan(plan, weights, groups, weights[0].device).workspace


def check_masks(weights):
    n = sum(w.numel() for w in weights)
    for sparsity in SPARSITIES:
        for scope in ("global", "uniform"):
            groups, counts = selection_groups(weights, sparsity, scope)
            expected = magnitude_masks(weights, sparsity, scope, kernels=False)
            new = magnitude_masks(weights, sparsity, scope, kernels=True)
            old = [torch.empty_like(w, dtype=torch.bool) for w in weights]
            select(weights, groups, counts, old, False, method="radix")
            where = f"sparsity {sparsity}, {scope}"
            require(equal_lists(expected, new), f"masks: new kernels != torch path ({where})")
            require(equal_lists(expected, old), f"masks: old radix kernels != torch path ({where})")
            pruned = [int((~m).sum()) for m in new]
            if scope == "global":
                wanted = prune_count(n, sparsity)
                require(sum(pruned) == wanted,
                        f"masks: {sum(pruned)} pruned, expected {wanted} ({where})")
            else:
                require(pruned == [prune_count(w.numel(), sparsity) for w in weights],
                        f"masks: per-tensor prune counts wrong ({where})")
    for n_, m_ in ((2, 4), (4, 8)):
        require(equal_lists(nm_masks(weights, n_, m_, kernels=False),
                            nm_masks(weights, n_, m_, kernels=True)), f"N:M {n_}:{m_} masks differ")


def check_forced_miss(weights, first_half, sparsities):
    """A bracket that misses on purpose: the fallback must still select exactly."""
    groups, _ = selection_groups(weights, 0.5, "global")
    space = mask_workspace(weights, groups)
    before = int(space.misses)
    for sparsity in sparsities:
        expected = magnitude_masks(weights, sparsity, kernels=False)
        got = [torch.empty_like(w, dtype=torch.bool) for w in weights]
        select(weights, groups, selection_groups(weights, sparsity, "global")[1], got, False,
               method="bracket", force_miss=True)
        require(equal_lists(expected, got), f"forced bracket miss: masks differ (s={sparsity})")
    require(int(space.misses) - before == len(sparsities),
            f"forced bracket miss: {int(space.misses) - before} misses counted, "
            f"expected {len(sparsities)}")
    sparsity = sparsities[-1]
    w, masks = first_half.expected(sparsity)
    for method, force in (("auto", False), ("radix", False), ("bracket", True)):
        first_half.reset()
        first_half.run(sparsity, method=method, force_miss=force)
        what = f"CrAM first half ({method}{', forced miss' if force else ''}, s={sparsity})"
        require(equal_lists(first_half.params, w), f"{what}: perturbed weights != torch path")
        require(equal_lists(first_half.masks, masks), f"{what}: masks != torch path")
        require(equal_lists(first_half.w_saves, first_half.pristine)
                and equal_lists(first_half.g_saves, first_half.grads),
                f"{what}: saved weights or gradients differ")
    first_half.reset()
    return int(space.misses) - before


def check_step(base, x, y):
    results = []
    for kernels in (False, True):
        model = clone(base)
        opt = TopkCrAM(model.parameters(), torch.optim.SGD, kernels=kernels, **sgd_kwargs())
        for _ in range(2):
            train_step(model, opt, x, y)
        results.append(model.state_dict())
    require(all(torch.equal(results[0][k], results[1][k]) for k in results[0]),
            "one CrAM+ step: fused != torch path")


def check_graphs(base, x, y, cuda):
    """TopkCrAM / NMTopkCrAM with cuda_graph=True (twice) == without, bit for bit."""
    report = {}
    for name, cls, drawn in (("TopkCrAM", TopkCrAM, "last_sparsity"),
                             ("NMTopkCrAM", NMTopkCrAM, "last_pattern")):
        steps = 3 + WARMUP_STEPS if cuda else WARMUP_STEPS
        states, draws = [], []
        for run, graph in enumerate((True, True, False) if cuda else (True, False)):
            model = clone(base)
            opt = cls(model.parameters(), torch.optim.SGD, seed=GRAPH_SEED, cuda_graph=graph,
                      **sgd_kwargs(GRAPH_LR))
            if graph and not cuda:
                no_capture(opt)
            seen = []
            # the first run goes on (10 steps at most) until a first half's graph is replayed
            while len(seen) < steps or (run == 0 and cuda and len(seen) < steps + 10
                                        and not repeats_in(seen[WARMUP_STEPS:])):
                train_step(model, opt, x, y)
                seen.append(getattr(opt, drawn))
            steps = len(seen)
            draws.append(seen)
            momentum = [s.get("momentum_buffer") for s in opt.base_optimizer.state.values()]
            states.append((model.state_dict(), momentum, opt.cram_steps))
        for other in states[1:]:
            require(all(torch.equal(states[0][0][k], other[0][k]) for k in states[0][0]),
                    f"{name}: CUDA graph replay != eager (model state_dict)")
            require(equal_lists(states[0][1], other[1]) and states[0][2] == other[2],
                    f"{name}: CUDA graph replay != eager (momentum buffers)")
        after = draws[0][WARMUP_STEPS:] if cuda else []
        report[name] = {"steps": steps, "graph_steps": len(after),
                        "first_half_replays": len(after) - len(set(after))}
        require(not cuda or repeats_in(after),
                f"{name}: no first half was replayed in {steps} steps: the check proves nothing")
    return report


def repeats_in(draws):
    return len(set(draws)) < len(draws)


def checks(base, weights, first_half, x, y, cuda):
    """Raises CheckFailed for wrong masks or steps. A failed graph check is returned instead
    (graphs: {"failed": why}): the graph variants are then not timed, the rest is."""
    deterministic = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        check_masks(weights)
        forced = check_forced_miss(weights, first_half, SPARSITIES if cuda else (0.9,))
        check_step(base, x[:8], y[:8])
        try:
            graphs = check_graphs(base, x[:8], y[:8], cuda)
        except Exception as err:  # noqa: BLE001 (a capture error is a failed check too)
            traceback.print_exc()
            graphs = {"failed": f"{type(err).__name__}: {err}"[:500]}
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic
    return {"passed": "failed" not in graphs, "forced_misses": forced, "graphs": graphs}
