"""The search tree of Diffusion Tree Sampling / Search (Jain et al., NeurIPS 2025), as flat host
arrays, and the tree arithmetic: progressive widening, selection, soft-Bellman backups and
sampling from a finished tree. No network calls here: ``search/dts.py`` drives the denoiser.

Levels: 0 is a dummy root (its children are fresh prior draws), level l = 1 .. L are the states at
the L branch steps, level L + 1 holds the clean samples (leaves). Node j has ``parent[j]``,
``level[j]``, a soft value ``value[j]`` (v-hat) and a visit count ``visits[j]``; its children are
``children[j]``. The paper's rules, with lambda the inverse temperature:

    widening      node x may have at most C N(x)^alpha children (else a new child is expanded)
    DTS select    x' ~ softmax_{children}(lambda v(x'))
    DTS* select   x' = argmax_{children} v(x') + c_uct sqrt(log N(x) / N(x'))
    uniform       x' uniform over the children (not in the paper: see ``select``)
    backup        v(leaf) = r(x0);
                  v(x) = (1/lambda) [logsumexp_{c in C(x)} lambda v(c) - log |C(x)|]
                  (the mean is uniform over children: they are i.i.d. proposals of the base model;
                  lambda = inf is the max-backup)
    sample        descend with the DTS rule (or argmax v for DTS*) to a leaf: 0 NFE per sample

Children created for a batch of rollouts but not yet evaluated are ``pending``: selection skips
them, and a node whose children are all pending cannot be descended in that batch.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np


def soft_backup(values, lam: float) -> float:
    """(1/lam) [logsumexp(lam v) - log n]; the max for lam = inf."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("soft_backup: a node without children has no backed-up value")
    if math.isinf(lam):
        return float(v.max())
    z = lam * v
    m = z.max()
    return float((m + math.log(np.exp(z - m).sum()) - math.log(v.size)) / lam)


def widening_limit(visits, c: float, alpha: float):
    """The most children a node with ``visits`` visits may have: C N^alpha."""
    return c * np.asarray(visits, np.float64) ** alpha


def boltzmann(rng, values, lam: float) -> int:
    """An index drawn with probability softmax(lam v) (lam = inf: the argmax, ties at random)."""
    v = np.asarray(values, np.float64)
    if math.isinf(lam):
        best = np.flatnonzero(v == v.max())
        return int(best[rng.integers(best.size)]) if best.size > 1 else int(best[0])
    z = lam * v
    p = np.exp(z - z.max())
    return int(rng.choice(v.size, p=p / p.sum()))


@dataclasses.dataclass
class Tree:
    """Flat arrays of a search tree with room for ``capacity`` nodes (module docstring). Node 0 is
    the root. Grows on demand; ``size`` nodes are in use."""

    levels: int                      # L + 1: the level of the leaves
    capacity: int = 1024
    parent: np.ndarray = None
    level: np.ndarray = None
    value: np.ndarray = None
    visits: np.ndarray = None
    pending: np.ndarray = None
    rollout: np.ndarray = None       # the index of the first node of the rollout that made it
    children: list = None
    size: int = 1

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError(f"Tree: need at least one level below the root, got {self.levels}")
        cap = max(int(self.capacity), 1)
        self.capacity = cap
        self.parent = np.full(cap, -1, np.int64)
        self.level = np.zeros(cap, np.int64)
        self.value = np.zeros(cap, np.float64)
        self.visits = np.zeros(cap, np.int64)
        self.pending = np.zeros(cap, bool)
        self.rollout = np.zeros(cap, np.int64)
        self.children = [[] for _ in range(cap)]
        self.visits[0] = 1                         # the paper's root starts at N = 1, v = 0
        self.size = 1

    def _grow(self, need: int):
        cap = self.capacity
        while cap < need:
            cap *= 2
        if cap == self.capacity:
            return
        pad = cap - self.capacity
        self.parent = np.concatenate([self.parent, np.full(pad, -1, np.int64)])
        self.level = np.concatenate([self.level, np.zeros(pad, np.int64)])
        self.value = np.concatenate([self.value, np.zeros(pad)])
        self.visits = np.concatenate([self.visits, np.zeros(pad, np.int64)])
        self.pending = np.concatenate([self.pending, np.zeros(pad, bool)])
        self.rollout = np.concatenate([self.rollout, np.zeros(pad, np.int64)])
        self.children.extend([] for _ in range(pad))
        self.capacity = cap

    def add_child(self, parent: int, pending: bool = False, rollout: int | None = None) -> int:
        """A new node (v = 0, N = 1) under ``parent``, made by rollout ``rollout`` (default: its
        own index, a new rollout); returns its index."""
        if not 0 <= parent < self.size:
            raise IndexError(f"Tree.add_child: no node {parent} (the tree has {self.size})")
        if self.level[parent] >= self.levels:
            raise ValueError(f"Tree.add_child: node {parent} is a leaf (level {self.levels})")
        self._grow(self.size + 1)
        j = self.size
        self.parent[j], self.level[j] = parent, self.level[parent] + 1
        self.value[j], self.visits[j], self.pending[j] = 0.0, 1, pending
        self.rollout[j] = j if rollout is None else rollout
        self.children[parent].append(j)
        self.size += 1
        return j

    def kids(self, node: int, ready: bool = False) -> np.ndarray:
        k = np.asarray(self.children[node], np.int64)
        return k[~self.pending[k]] if ready and k.size else k

    def path(self, node: int) -> list:
        """The nodes from the root to ``node``."""
        out = [node]
        while out[-1] != 0:
            out.append(int(self.parent[out[-1]]))
        return out[::-1]

    def leaves(self) -> np.ndarray:
        idx = np.arange(self.size)
        return idx[(self.level[:self.size] == self.levels) & ~self.pending[:self.size]]


SELECTIONS = ("boltzmann", "uct", "uniform")


def select(tree: Tree, rng, *, lam: float, c: float, alpha: float, rule: str = "boltzmann",
           c_uct: float = 1.0):
    """Descend from the root while the widening limit is reached (Alg. 1) by ``rule``: the paper's
    'boltzmann' (DTS) or 'uct' (DTS*), or 'uniform'. Returns ``(node, path)``: ``node`` is where to
    expand (its level is below the leaves), a leaf when the descent reached one (nothing to
    expand: a zero-NFE revisit), or None when it met a node whose children are all pending
    (possible only within a batch).

    Why 'uniform': a child's soft value is a mean over a number of leaves that Boltzmann selection
    chooses from the values themselves (promising children are revisited, their estimates regress
    down; poor ones stay), so at a finite budget DTS's values and samples are biased towards the
    prior. Selecting uniformly keeps every child's estimate an unbiased mean of i.i.d. leaves
    (nested importance sampling), at the price of not focusing the budget. Measured on a 1-D
    Gaussian in docs/SEARCH.md."""
    node, path = 0, [0]
    while tree.level[node] < tree.levels:
        kids = tree.children[node]
        if len(kids) < widening_limit(tree.visits[node], c, alpha):
            return node, path
        ready = tree.kids(node, ready=True)
        if ready.size == 0:
            return None, path
        if rule == "uct":
            bonus = c_uct * np.sqrt(math.log(tree.visits[node]) / tree.visits[ready])
            node = int(ready[boltzmann(rng, tree.value[ready] + bonus, math.inf)])
        elif rule == "uniform":
            node = int(ready[rng.integers(ready.size)])
        else:
            node = int(ready[boltzmann(rng, tree.value[ready], lam)])
        path.append(node)
    return node, path


def backup(tree: Tree, leaves, rewards, lam: float):
    """Set the leaves' values to their rewards, mark their paths evaluated, and recompute every
    ancestor's soft value from all its children, deepest first (visit counts are not changed:
    ``dts`` counts a visit when it selects a path)."""
    touched = set()
    for leaf, r in zip(np.asarray(leaves).tolist(), np.asarray(rewards).tolist()):
        tree.value[leaf] = r
        tree.pending[leaf] = False
        node = int(tree.parent[leaf])
        while node >= 0:
            tree.pending[node] = False
            touched.add(node)
            node = int(tree.parent[node])
    for node in sorted(touched, key=lambda j: -tree.level[j]):
        kids = tree.kids(node, ready=True)
        if kids.size:
            tree.value[node] = soft_backup(tree.value[kids], lam)


def sample_leaves(rng, tree: Tree, n: int, *, lam: float, greedy: bool = False) -> np.ndarray:
    """``n`` leaves drawn from the finished tree (Alg. 2): the DTS rule softmax(lam v) at every
    level, or, ``greedy`` (DTS*), the n best distinct paths by argmax v (each pick descends by
    argmax v among the children whose subtrees still hold an unpicked leaf; after every leaf is
    picked, picking starts over)."""
    if tree.size < 2 or not tree.leaves().size:
        raise ValueError("sample_leaves: the tree has no evaluated leaf yet (run more iterations)")
    out = []
    if not greedy:
        for _ in range(n):
            node = 0
            while tree.level[node] < tree.levels:
                kids = tree.kids(node, ready=True)
                node = int(kids[boltzmann(rng, tree.value[kids], lam)])
            out.append(node)
        return np.asarray(out, np.int64)
    left = np.zeros(tree.size, np.int64)
    for leaf in tree.leaves():
        for j in tree.path(int(leaf)):
            left[j] += 1
    full = left.copy()
    for _ in range(n):
        if left[0] == 0:
            left = full.copy()
        node = 0
        while tree.level[node] < tree.levels:
            kids = tree.kids(node, ready=True)
            kids = kids[left[kids] > 0]
            node = int(kids[np.argmax(tree.value[kids])])
        for j in tree.path(node):
            left[j] -= 1
        out.append(node)
    return np.asarray(out, np.int64)
