"""Exact Shapley values of a small cooperative game: the teaching example of study 4.

The value of a player is its marginal contribution averaged over every ordering of the players.

>>> shapley_values("AB", lambda s: float(len(s) == 2))
{'A': 0.5, 'B': 0.5}
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Hashable, Iterable

from .errors import ConfigError

__all__ = ["MAX_PLAYERS", "marginal_contributions", "shapley_values"]

#: Orderings grow as n!; 9 players (362,880 orderings) is the most enumerated exactly.
MAX_PLAYERS = 9


def marginal_contributions(players: Iterable[Hashable], value: Callable[[frozenset], float]
                           ) -> list[tuple[tuple, dict]]:
    """For every ordering of `players`: what each adds to the coalition of those before it.

    Returns [(ordering, {player: value(before | {player}) - value(before)})].
    This is the definition Shapley values average, spelled out for teaching.
    """
    players = list(players)
    if len(set(players)) != len(players):
        raise ConfigError(f"players must be distinct, got {players}.")
    if len(players) > MAX_PLAYERS:
        raise ConfigError(f"exact enumeration of {len(players)}! orderings is too slow; "
                          f"at most {MAX_PLAYERS} players.")
    v = functools.cache(lambda coalition: float(value(coalition)))  # each coalition's value computed once
    rows = []
    for order in itertools.permutations(players):
        before, gains = frozenset(), {}
        for p in order:
            gains[p] = v(before | {p}) - v(before)
            before = before | {p}
        rows.append((order, gains))
    return rows


def shapley_values(players: Iterable[Hashable], value: Callable[[frozenset], float]) -> dict:
    """Exact Shapley values: each player's marginal contribution averaged over all orderings.

    `value` maps a frozenset of players (a coalition) to a number. The values
    sum to value(all) - value(empty) (efficiency).
    """
    players = list(players)
    rows = marginal_contributions(players, value)
    return {p: sum(gains[p] for _, gains in rows) / len(rows) for p in players}
