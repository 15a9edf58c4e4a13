"""Request ids (apps/gateway/app.py ``RequestIds``): drawn from a pool of the OS's randomness, never repeated."""

from __future__ import annotations

import os
import re

from apps.gateway.app import RequestIds


def test_ids_are_req_and_24_hex_digits_and_never_repeat_across_refills() -> None:
    ids = RequestIds()
    drawn = [ids.next() for _ in range(RequestIds.BATCH * 5 + 7)]  # five refills and some
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", request_id) for request_id in drawn)
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_draws_from_a_pool_of_its_own() -> None:
    ids = RequestIds()
    ids.next()  # the pool is filled: a child without a pool of its own would draw the parent's next ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id to the parent, then out without running the test session's exit
        os.close(read)
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"req_[0-9a-f]{24}", child)
    assert child != ids.next()
