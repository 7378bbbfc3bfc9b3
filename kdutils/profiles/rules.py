"""What values a profile field accepts: the third entry of every field spec.

Each rule says in words what is allowed, so a bad value fails before any work
with a message naming the field, the value and the rule. A list field applies
its rule to every item. Checks must stay cheap and import nothing heavy: the
command line validates every `-p` with them before a kernel starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Allowed:
    """`text` says what is allowed; `check(value, profile)` says whether `value` is."""

    text: str
    check: Callable[[object, str], bool]


def one_of(*values) -> Allowed:
    return Allowed(f"one of {', '.join(map(repr, values))}", lambda v, profile: v in values)


POSITIVE = Allowed("> 0", lambda v, profile: v > 0)
NON_NEGATIVE = Allowed(">= 0", lambda v, profile: v >= 0)
UNIT = Allowed("in [0, 1]", lambda v, profile: 0 <= v <= 1)
FRACTION = Allowed("in (0, 1]", lambda v, profile: 0 < v <= 1)
OPEN_UNIT = Allowed("in (0, 1)", lambda v, profile: 0 < v < 1)
BELOW_ONE = Allowed("in [0, 1)", lambda v, profile: 0 <= v < 1)
FLAG = Allowed("True or False", lambda v, profile: isinstance(v, bool))
NAME = Allowed("a non-empty name or path", lambda v, profile: bool(v.strip()))
PATH_OR_EMPTY = Allowed("a path, or '' for none", lambda v, profile: True)
DEVICE = Allowed("'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'",
                 lambda v, profile: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None)
# SynthWorld split sizes: `paper` uses the real data sets instead and sets them to 0
SYNTH_SIZE = Allowed("> 0 (0 only at the paper profile, which does not use SynthWorld)",
                     lambda v, profile: v > 0 or (v == 0 and profile == "paper"))
