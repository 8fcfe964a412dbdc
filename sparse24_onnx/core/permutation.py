"""Channel permutation search for 2:4 pruning (Pool & Yu, NeurIPS 2021; apex ASP's channel swaps).

Which 4 channels share a group of a weight's reduction axis is an accident of
training.  Reordering the channels (and the layer that produces them, so the
model computes the same function) changes which elements 2:4 pruning keeps.
Given a non-negative importance matrix ``S`` of shape ``(H, C)`` (row ``h`` = the
importance of every weight reading channel ``h``), the retained score of an
order ``perm`` is::

    sum over groups g, columns c of  top-2 of S[perm[4g : 4g+4], c]

:func:`search_permutation` raises it by greedy channel swaps between groups:
each sweep scores every swap of a channel of group ``a`` with a channel of
group ``b`` at once (no loop per element), applies the best non-conflicting
improving swaps, and repeats until no swap helps or the time budget is spent.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["PermutationResult", "retained_score", "search_permutation"]


def retained_score(importance: np.ndarray, perm: np.ndarray | None = None) -> float:
    """Sum of the top-2 importances of every group of 4 rows, per column (rows in ``perm`` order)."""
    s = np.asarray(importance, dtype=np.float64)
    if perm is not None:
        s = s[perm]
    h, c = s.shape
    if h % 4:
        raise ValueError(f"the channel count {h} is not a multiple of 4")
    groups = np.sort(s.reshape(h // 4, 4, c), axis=1)
    return float(groups[:, 2:, :].sum())


class PermutationResult:
    """The order found and what it changed.

    Attributes:
        perm: New order of the channels: channel ``perm[k]`` moves to position ``k``.
        before: Retained score of the original order.
        after: Retained score of ``perm``.
        total: Sum of all importances (what unstructured pruning could not exceed).
        sweeps: Sweeps of swaps performed.
        stopped: Why the search ended: ``converged`` (no swap helps), ``sweeps``
            (``max_sweeps`` reached) or ``time`` (the time cap; then the result
            depends on the machine's speed).
    """

    def __init__(self, perm: np.ndarray, before: float, after: float, total: float, sweeps: int, stopped: str) -> None:
        self.perm = perm
        self.before = before
        self.after = after
        self.total = total
        self.sweeps = sweeps
        self.stopped = stopped


def _leave_one_out_top2(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each group (G, 4, C) and member i: the top two of the other three members, per column."""
    g, _, c = groups.shape
    top1 = np.empty((g, 4, c))
    top2 = np.empty((g, 4, c))
    for i in range(4):  # 4 fixed positions, each a whole-array operation
        others = np.sort(np.delete(groups, i, axis=1), axis=1)
        top1[:, i] = others[:, 2]
        top2[:, i] = others[:, 1]
    return top1, top2


#: Element operations a sweep may cost (bounds the partners compared per group).
_SWEEP_WORK = 1 << 27


def search_permutation(
    importance: np.ndarray, *, seconds: float = 2.0, seed: int = 0, partners: int = 128, max_sweeps: int = 16
) -> PermutationResult:
    """Search an order of the rows of ``importance`` that keeps more of it under 2:4.

    Args:
        importance: ``(H, C)`` non-negative scores, ``H`` a multiple of 4.
        seconds: Time cap; the search stops after the sweep that exceeds it.  The
            result is reproducible as long as the cap is not reached.
        seed: Seed for choosing swap partners when there are many groups.
        partners: At most this many groups each group is compared with per sweep
            (all of them when there are fewer; fewer on large layers, so that a
            sweep costs at most ~1e8 element operations: ``16 * G * partners * C``).

    Returns:
        The best order found (never worse than the original one).
    """
    s = np.asarray(importance, dtype=np.float64)
    h, c = s.shape
    if h % 4:
        raise ValueError(f"the channel count {h} is not a multiple of 4")
    groups_count = h // 4
    perm = np.arange(h)
    before = retained_score(s)
    total = float(s.sum())
    rng = np.random.default_rng(seed)
    partners = int(min(partners, max(4, _SWEEP_WORK // max(1, 16 * groups_count * c))))
    deadline = time.monotonic() + seconds
    sweeps = 0
    stopped = "converged"
    while groups_count > 1:
        if sweeps >= max_sweeps:
            stopped = "sweeps"
            break
        if time.monotonic() >= deadline:
            stopped = "time"
            break
        groups = s[perm].reshape(groups_count, 4, c)
        base = np.sort(groups, axis=1)[:, 2:, :].sum(axis=(1, 2))  # (G,)
        top1, top2 = _leave_one_out_top2(groups)
        keep = top1.sum(axis=2)  # (G, 4): the other three's top-1, summed over columns
        if groups_count <= partners:
            choice = np.broadcast_to(np.arange(groups_count), (groups_count, groups_count))
        else:
            choice = rng.integers(0, groups_count, size=(groups_count, partners))
        k = choice.shape[1]
        # new[a, i, p, j]: score of group a with member i replaced by member j of partner choice[a, p].
        new = np.empty((groups_count, 4, k, 4))
        block = max(1, (1 << 24) // max(1, 16 * k * c))
        for start in range(0, groups_count, block):
            stop = min(start + block, groups_count)
            partner_rows = groups[choice[start:stop]]  # (A, k, 4, C)
            np.sum(
                np.maximum(top2[start:stop, :, None, None, :], partner_rows[:, None, :, :, :]),
                axis=4,
                out=new[start:stop],
            )
            new[start:stop] += keep[start:stop, :, None, None]
        # The partner's side of the same swap: group b loses member j and gains member i of a.
        a_index = np.arange(groups_count)[:, None]
        b = choice  # (G, k)
        partner_new = np.empty_like(new)
        for start in range(0, groups_count, block):
            stop = min(start + block, groups_count)
            own_rows = groups[start:stop]  # (A, 4, C): the member i that moves into b
            bb = b[start:stop]  # (A, k)
            t2b = top2[bb]  # (A, k, 4, C) leave-one-out of b, by j
            partner_new[start:stop] = (
                np.maximum(t2b[:, None, :, :, :], own_rows[:, :, None, None, :]).sum(axis=4) + keep[bb][:, None, :, :]
            )
        gain = new + partner_new - base[:, None, None, None] - base[b][:, None, :, None]
        gain[np.broadcast_to((b == a_index)[:, None, :, None], gain.shape)] = -np.inf
        order = np.argsort(gain, axis=None)[::-1]
        used = np.zeros(groups_count, dtype=bool)
        swapped = 0
        for flat in order[: 4 * groups_count * 4]:
            value = gain.flat[flat]
            if not value > 1e-12 * max(total, 1.0):
                break
            a, i, p, j = np.unravel_index(flat, gain.shape)
            partner = b[a, p]
            if used[a] or used[partner]:
                continue
            used[a] = used[partner] = True
            x, y = 4 * a + i, 4 * partner + j
            perm[x], perm[y] = perm[y], perm[x]
            swapped += 1
        sweeps += 1
        if not swapped:
            break
    after = retained_score(s, perm)
    if after < before:  # cannot happen with improving swaps only; kept as a guard
        perm, after = np.arange(h), before
    return PermutationResult(perm, before, after, total, sweeps, stopped)
