"""The stages a request passes, in order: auth, validate, plan, cache, admit, upstream, relay, price, record.

Each stage is a module of plain functions that take the ``Runtime`` (or just
what they need) and the request's ``Call``; ``cascade`` and ``shadow`` are the
routing extras around the upstream call. ``apps.gateway.handlers`` reads them
top to bottom.
"""
