"""The Lua scripts, read from ``lua/`` once when the process starts, run by their SHA-1 (EVALSHA).

Each script is one atomic step: ``ADMIT`` checks every limit and reserves on
every budget (``window.lua``'s functions, then ``admit.lua``), ``SETTLE``
replaces reservations by what was used, ``RETURN_BUDGET`` and ``RETURN_SCOPE``
give a lease's unused part back. The admission script answers with a status
first (``STATUS_*``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_LUA = Path(__file__).resolve().parent / "lua"


def _read(name: str) -> str:
    return (_LUA / name).read_text()


ADMIT = _read("window.lua") + _read("admit.lua")
SETTLE = _read("settle.lua")
RETURN_BUDGET = _read("return_budget.lua")
RETURN_SCOPE = _read("return_scope.lua")
ALL = (ADMIT, SETTLE, RETURN_BUDGET, RETURN_SCOPE)

# The admission script's first reply: admitted, or which limit refused (STATUS_LEASED: a hard budget
# would refuse only because of what other processes hold as leases).
STATUS_OK, STATUS_BUDGET, STATUS_RPM, STATUS_TPM, STATUS_CONCURRENCY, STATUS_LEASED = range(6)


def sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)
