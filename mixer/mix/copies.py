"""Whether a dataset may have been copied into another process (a DataLoader worker).

A DataLoader with workers runs each worker on its own copy of the dataset, made when the worker
process starts: forked (the parent's memory) or pickled (spawn, forkserver). A weight change on
the parent's copy after that never reaches the workers, which keep producing batches with the
old weights, and their states (which torchdata saves) lack the change. `CopyGuard` notices,
in the parent and before the copy exists, every moment a copy can be made: a fork of the process
(`os.register_at_fork`, which runs in the parent before the child exists) and a pickle made
while a process is being started (`multiprocessing`'s spawning context). It is conservative:
any fork while the dataset lives counts, even one that never touches it.
"""

from __future__ import annotations

import os
import weakref
from multiprocessing.context import get_spawning_popen

_GUARDS: weakref.WeakSet[CopyGuard] = weakref.WeakSet()


class CopyGuard:
    """`copied` becomes True once the owner may live on in another process, and stays so."""

    def __init__(self) -> None:
        self.copied = False
        _GUARDS.add(self)

    def __getstate__(self) -> dict[str, bool]:
        if get_spawning_popen() is not None:  # pickled for a process being started
            self.copied = True
        return {"copied": False}  # the copy itself is the only one of its kind

    def __setstate__(self, state: dict[str, bool]) -> None:
        self.copied = state["copied"]
        _GUARDS.add(self)


def _before_fork() -> None:
    for guard in list(_GUARDS):
        guard.copied = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)
