"""Enforcement: budgets and rate limits in Redis, used by the gateway and the batch runner alike.

Imports only ``apps.core``: the limiter (``limiter.py``), per-process leases
(``leases.py``), the Lua scripts (``lua/``, loaded by ``scripts.py``), the 429
replies and rate-limit headers (``replies.py``) and the lean Redis client the
hot path uses (``fastredis.py``).
"""
