"""Diffusion Tree Sampling (DTS) and Diffusion Tree Search (DTS*), Jain, Sareen, Pedramfar and
Ravanbakhsh, NeurIPS 2025, "Diffusion Tree Sampling: Scalable inference-time alignment of
diffusion models" (arXiv 2506.20701), Algorithms 1-2.

The reverse chain of a stochastic sampler is a tree; DTS grows it by iterations of

    select   descend from the root while each node has its C N^alpha children (search/tree.py):
             DTS by softmax(lambda v), DTS* by UCT
    expand   one new child of the node reached, by the base sampler
    roll out from it down to x0 with the base sampler, adding every branch-level state to the tree
    back up  v(x0) = r(x0), then up the path the soft-Bellman
             v(x) = (1/lambda) log mean_c exp(lambda v(c))

and samples from the finished tree at zero NFE: DTS targets p(x0) exp(lambda r(x0)) (Prop. 1, as the
iterations grow), DTS* returns the best paths by argmax v. Nodes branch only at ``branch_steps``
(step indices of the sampler's grid; step 0 is always one: the root's children are fresh prior
draws x_T, and they branch too; the paper's 50-step schedule branches at steps 0, 10, 20, 30, 40).

Batched and sharded, as continuous batching: ``batch`` rollouts are in flight in fixed slots. Each
jitted call advances every slot by one segment (branch level to branch level, each slot from its
own step: one compiled program for the whole search), writes the new nodes' states into a device
buffer of whole sampler states (so every sampler of the stepper works, multistep history and all)
and shards the slots over the mesh's batch axes. A slot whose rollout reaches x0 is scored,
backed up and refilled by a new selection on the host before the next call (visits are counted at
selection; the nodes of rollouts in flight are pending). The noise of a rollout is drawn from
fold_in(key, its first node's index), so the tree does not depend on the device count. NFE is
the stepper's own count, summed over rollouts (a rollout from level l costs exactly the sampler's
NFE from branch step l to the end; a new rollout is started only if it fits in ``budget``). The
node buffer holds every node's state: memory is about budget / (NFE per segment) states.

    res = dts(key, "ddim", D, sigmas, verifier, example_shape=(16, 16, 1), budget=20000,
              branch_steps=(0, 10, 20, 30, 40), eta=1.0)
    x = sample(key, res, 64)              # (64, 16, 16, 1) from the tilted distribution, 0 NFE
    res = dts_star(...); x = sample(key, res, 1)
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import samplers
from diffjax.search import tree as tree_lib


class DTSResult(NamedTuple):
    tree: tree_lib.Tree
    states: Any          # the device buffer of node states (x, x0, history, ...; leading: node)
    nfe: int             # network evaluations spent
    history: Any         # per call that finished rollouts: nfe, best reward, root value, rollouts
    lam: float
    greedy: bool


def _check_branches(branch_steps, num_steps: int) -> tuple:
    """The branch steps, sorted, with 0 (the x_T nodes, the root's children, always branch)."""
    steps = tuple(sorted(set(int(s) for s in branch_steps) | {0}))
    if steps[0] < 0 or steps[-1] >= num_steps:
        raise ValueError(f"dts: branch_steps must be step indices in 0 .. {num_steps - 1} of the "
                         f"{num_steps}-step grid, got {steps}")
    return steps


def _level_nfe(st, example_shape, level_steps, knobs) -> np.ndarray:
    """NFE of the sampler from step 0 to each level's step (a dry run on a zero denoiser: the
    counts are properties of the sampler and grid, not of the data)."""
    zero = samplers.stepper(st.sampler, lambda x, s, c=None: jnp.zeros_like(x), st.sigmas,
                            **knobs)

    @jax.jit
    def counts(x):
        s = zero.init(x)

        def body(s, i):
            s = zero.step(s, i, jnp.zeros_like(x) if zero.needs_noise else None)
            return s, s.nfe
        _, n = jax.lax.scan(body, s, jnp.arange(zero.num_steps))
        return jnp.concatenate([jnp.zeros((1,), n.dtype), n])

    per_step = np.asarray(counts(jnp.zeros((1,) + tuple(example_shape), st.dtype)))
    return per_step[np.asarray(level_steps)]


def _rows_sharding(mesh):
    if mesh is None:
        return None
    from diffjax.training import sharding
    return sharding.batch_sharding(mesh)


@functools.partial(jax.jit, static_argnames=("seg", "sharding_"), donate_argnums=(1,))
def _advance(st, buf, src, dst, keys, fresh, start, length, seg: int, sharding_=None):
    """One segment for every slot: rows ``src`` of the node buffer, each stepped ``length`` steps
    from its own ``start`` step (at most ``seg``: the rest of the loop leaves it unchanged),
    written to rows ``dst`` (out-of-range rows are idle slots, dropped). A ``fresh`` slot starts a
    rollout at the root: its row ``src`` is a new x_T = sigma_0 z, written there first. Returns
    the buffer and the written rows' x."""
    rows = jax.tree.map(lambda a: a[src], buf)
    shape = rows.x.shape[1:]
    prior = jax.vmap(lambda k: st.sigmas[0] * jax.random.normal(
        jax.random.fold_in(k, 0), shape, rows.x.dtype))(keys)
    init = jax.vmap(st.init)(prior)
    pick = lambda a, b: jnp.where(fresh.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    rows = jax.tree.map(pick, init, rows)
    if sharding_ is not None:
        rows = jax.lax.with_sharding_constraint(rows, sharding_)
    cap = buf.x.shape[0]
    at = jnp.where(fresh, src, cap)
    buf = jax.tree.map(lambda b, o: b.at[at].set(o.astype(b.dtype), mode="drop"), buf, rows)

    def one(row, key, i0, n):
        def body(k, s):
            i = i0 + k
            noise = jax.random.normal(jax.random.fold_in(key, i + 1), s.x.shape, s.x.dtype)
            new = st.step(s, jnp.minimum(i, st.num_steps - 1), noise if st.needs_noise else None)
            return jax.tree.map(lambda a, b: jnp.where(k < n, a, b), new, s)
        return jax.lax.fori_loop(0, seg, body, row)

    out = jax.vmap(one)(rows, keys, start, length)
    buf = jax.tree.map(lambda b, o: b.at[dst].set(o.astype(b.dtype), mode="drop"), buf, out)
    return buf, out.x.reshape((out.x.shape[0],) + out.x.shape[2:])


def dts(key, sampler: str, D: Callable, sigmas, verifier, *, example_shape, budget: int,
        branch_steps=(0,), lam: float = 1.0, c: float = 2.0, alpha: float = 0.8,
        greedy: bool = False, selection: str | None = None, c_uct: float = 1.0, batch: int = 64,
        cond=None, mesh=None, progress: Callable | None = None, **knobs) -> DTSResult:
    """Grow a DTS (or, ``greedy``, DTS*) tree with ``budget`` network evaluations (module
    docstring). ``D(x, sigma, cond)`` is any denoiser (guided ones included), ``verifier(x0, cond)
    -> (B,)`` the reward; ``cond`` is one example's conditioning (arrays with a leading 1), shared
    by the whole tree. ``selection``: 'boltzmann' (DTS, the default), 'uct' (DTS*'s default) or
    'uniform' (search/tree.py ``select``: unbiased values at any budget). ``batch``: rollouts in
    flight (slots of the one jitted call; rounded up to the mesh's batch shards).
    ``progress(nfe, budget)`` is called as rollouts finish."""
    if budget < 1 or batch < 1:
        raise ValueError(f"dts: need budget >= 1 and batch >= 1, got {budget} and {batch}")
    if not (lam > 0 and c > 0 and 0 <= alpha <= 1):
        raise ValueError(f"dts: need lam > 0, c > 0 and 0 <= alpha <= 1, got lam={lam}, c={c}, "
                         f"alpha={alpha}")
    rule = selection or ("uct" if greedy else "boltzmann")
    if rule not in tree_lib.SELECTIONS:
        raise ValueError(f"dts: selection must be one of {', '.join(tree_lib.SELECTIONS)}, got "
                         f"{selection!r}")
    st = samplers.stepper(sampler, D, sigmas, cond=cond, **knobs)
    if not st.needs_noise:
        raise ValueError(f"dts needs a stochastic sampler (the children of a node are draws of "
                         f"p(x_t-1 | x_t)); {sampler!r} with these knobs is deterministic: use "
                         f"ddpm, or ddim with eta > 0")
    if st.sampler.requires_process is not None:
        raise ValueError(f"dts draws the root's children from the Gaussian prior; {sampler!r} "
                         f"needs its own process's prior")
    example_shape = tuple(example_shape)
    steps = _check_branches(branch_steps, st.num_steps)
    level_steps = np.asarray((0,) + steps + (st.num_steps,))   # root, branch levels, leaves
    levels = len(steps) + 1
    cum = _level_nfe(st, example_shape, level_steps, knobs)
    cost = cum[-1] - cum                                # NFE of a rollout expanding below level l
    cost[0] = cum[-1]
    if cost[:levels].min() <= 0:
        raise ValueError("dts: a rollout from the last branch step costs no network evaluation; "
                         "the last branch step must come before the grid's last step")
    per_nfe = max((levels - lv) / cost[lv] for lv in range(levels))
    tree = tree_lib.Tree(levels=levels, capacity=int(budget * per_nfe) + 2)
    cap = tree.capacity
    shard = _rows_sharding(mesh)
    shards = 1 if mesh is None else _divisor(mesh)
    slots = -(-batch // shards) * shards
    seg = int(np.diff(level_steps).max())         # one segment per call, the longest one
    row = st.init(jnp.zeros((1,) + example_shape, st.dtype))
    buf = jax.tree.map(lambda a: jnp.zeros((cap,) + jnp.shape(a), jnp.asarray(a).dtype), row)
    if mesh is not None:
        from diffjax.training import sharding
        buf = jax.device_put(buf, sharding.replicated(mesh))
    if cond is not None:
        cond = jax.tree.map(jnp.asarray, cond)
    score = jax.jit(lambda x: verifier(x, None if cond is None else jax.tree.map(
        lambda v: jnp.broadcast_to(v, (x.shape[0],) + v.shape[1:]), cond)))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    k_roll = jax.random.fold_in(key, 1)
    nfe = committed = 0
    hist = {"nfe": [], "best": [], "root_value": [], "rollouts": []}
    best, out_of_budget = -math.inf, False
    flight = [None] * slots        # per slot: [chain (node ids), position of its current node]

    def refill():
        nonlocal committed, out_of_budget
        attempts = blocked = 0
        for s_ in range(slots):
            while flight[s_] is None and not out_of_budget and attempts < 64 * slots \
                    and blocked < 8:
                attempts += 1
                node, path = tree_lib.select(tree, rng, lam=lam, c=c, alpha=alpha, rule=rule,
                                             c_uct=c_uct)
                if node is None:                     # met a node with only pending children
                    blocked += 1
                    continue
                blocked = 0
                if tree.level[node] == levels:       # reached a leaf: a zero-NFE visit
                    tree.visits[path] += 1
                    continue
                if committed + cost[tree.level[node]] > budget:
                    out_of_budget = True
                    break
                tree.visits[path] += 1
                committed += int(cost[tree.level[node]])
                chain = [node, tree.add_child(node, pending=True)]
                for _ in range(levels - tree.level[node] - 1):
                    chain.append(tree.add_child(chain[-1], pending=True, rollout=chain[1]))
                flight[s_] = [chain, 0]

    while True:
        refill()
        busy = [s_ for s_ in range(slots) if flight[s_] is not None]
        if not busy:
            break
        src = np.zeros(slots, np.int32)
        dst = np.full(slots, cap, np.int32)
        ids = np.zeros(slots, np.int32)
        start = np.zeros(slots, np.int32)
        length = np.zeros(slots, np.int32)
        fresh = np.zeros(slots, bool)
        for s_ in busy:
            chain, j = flight[s_]
            if chain[j] == 0:                        # from the root: a new x_T (step 0), then
                fresh[s_] = True                     # its first segment, in this call
                j = flight[s_][1] = 1
            src[s_], dst[s_], ids[s_] = chain[j], chain[j + 1], chain[1]
            lv = tree.level[chain[j]]
            start[s_], length[s_] = level_steps[lv], level_steps[lv + 1] - level_steps[lv]
        keys = jax.vmap(lambda i: jax.random.fold_in(k_roll, i))(jnp.asarray(ids))
        buf, x = _advance(st, buf, jnp.asarray(src), jnp.asarray(dst), keys, jnp.asarray(fresh),
                          jnp.asarray(start), jnp.asarray(length), seg=seg, sharding_=shard)
        done = []
        for s_ in busy:
            flight[s_][1] += 1
            if flight[s_][1] == len(flight[s_][0]) - 1:
                done.append(s_)
        if not done:
            continue
        r = np.asarray(score(x), np.float64)
        if r.shape != (slots,):
            raise ValueError(f"dts: the verifier returned {r.shape} for {slots} samples")
        r = r[done]
        if not np.all(np.isfinite(r)):
            raise ValueError("dts: the verifier returned a non-finite reward; rewards must be "
                             "finite (clip log-probabilities, e.g. with a floor)")
        chains = [flight[s_][0] for s_ in done]
        leaves = np.asarray([ch[-1] for ch in chains], np.int64)
        first = np.asarray([ch[0] for ch in chains], np.int64)
        got = np.asarray(buf.nfe[jnp.asarray(np.concatenate([leaves, first]))], np.int64)
        used = int(got[:leaves.size].sum() - got[leaves.size:][first != 0].sum())
        expected = int(cost[tree.level[first]].sum())
        if used != expected:
            raise RuntimeError(f"dts: rollouts used {used} NFE, {expected} expected (internal "
                               f"error)")
        nfe += used
        tree_lib.backup(tree, leaves, r, lam)
        for s_ in done:
            flight[s_] = None
        best = max(best, float(np.max(r)))
        for k_, v_ in (("nfe", nfe), ("best", best), ("root_value", tree.value[0]),
                       ("rollouts", len(done))):
            hist[k_].append(v_)
        if progress is not None:
            progress(nfe, budget)
    if tree.size < 2:
        raise ValueError(f"dts: a budget of {budget} NFE does not pay for one rollout "
                         f"({int(cost[0])} NFE from the root)")
    return DTSResult(tree, buf, nfe, {k_: np.asarray(v_) for k_, v_ in hist.items()}, float(lam),
                     bool(greedy))


def dts_star(key, sampler: str, D: Callable, sigmas, verifier, **kw) -> DTSResult:
    """DTS* (Alg. 1 with UCT selection; ``sample`` then returns the best paths by argmax v)."""
    return dts(key, sampler, D, sigmas, verifier, greedy=True, **kw)


def _divisor(mesh) -> int:
    from diffjax.training import sharding
    return sharding.batch_divisor(mesh)


def sample(key, res: DTSResult, n: int, *, lam: float | None = None,
           greedy: bool | None = None) -> jax.Array:
    """``n`` samples from the finished tree at zero NFE (Alg. 2): DTS's Boltzmann descent at
    ``lam`` (default: the tree's), or for DTS* the n best distinct paths."""
    leaves = sample_indices(key, res, n, lam=lam, greedy=greedy)
    x = res.states.x[jnp.asarray(leaves)]
    return x.reshape((n,) + x.shape[2:])


def sample_indices(key, res: DTSResult, n: int, *, lam: float | None = None,
                   greedy: bool | None = None) -> np.ndarray:
    if n < 1:
        raise ValueError(f"sample: n must be >= 1, got {n}")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    return tree_lib.sample_leaves(rng, res.tree, n, lam=res.lam if lam is None else lam,
                                  greedy=res.greedy if greedy is None else greedy)
