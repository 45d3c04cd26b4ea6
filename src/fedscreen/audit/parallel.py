"""Verifying a long log's entry signatures in worker processes (``audit verify``).

Kept apart from ``fedscreen.audit.verify``, which decides and does no I/O: this
module only chooses where :func:`~fedscreen.audit.verify.verify_entries` runs.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Final

from fedscreen.audit.verify import Checked, EntryVerifier, verify_entries

__all__ = ["PARALLEL_MIN_ENTRIES", "in_processes"]

#: logs shorter than this are verified in-process (starting workers costs ~0.3 s)
PARALLEL_MIN_ENTRIES: Final = 20_000


def in_processes(workers: int) -> EntryVerifier:
    """An entry verifier that spreads logs of ``PARALLEL_MIN_ENTRIES`` or more over
    ``workers`` processes (four chunks each), yielding the chunks in log order."""

    def run(
        entries: tuple[bytes, ...], keys: dict[str, bytes], unsigned: frozenset[str]
    ) -> Iterator[Checked]:
        if workers <= 1 or len(entries) < PARALLEL_MIN_ENTRIES:
            yield verify_entries(entries, 0, keys, unsigned)
            return
        step = -(-len(entries) // (workers * 4))
        # spawn: the auditor's process may hold threads; forking them is unsafe
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [
                pool.submit(verify_entries, entries[s : s + step], s, keys, unsigned)
                for s in range(0, len(entries), step)
            ]
            for future in futures:
                yield future.result()

    return run
