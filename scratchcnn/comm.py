"""Communicators: how data-parallel ranks exchange bytes.

The data-parallel step (``scratchcnn.distributed``) needs only two collective
operations, and neither adds a float: MPI moves bytes, the project's kernels do
every addition, in the one-process order.

- ``allgatherv(buf, counts)``: every rank contributes ``counts[rank]`` bytes and
  receives all ranks' bytes, concatenated in rank order.
- ``allgather_obj(obj)``: a small picklable object from every rank, in rank order
  (start-up checks, hashes, evaluation results).

``MPIComm`` runs them on MPI through mpi4py (``MPI.COMM_WORLD.Allgatherv`` and
``allgather``). ``ThreadComm.group(P)`` gives P communicators for P threads of
one process, so the ordinary test suite runs the same step for P = 1...4
without MPI.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Communicator(ABC):
    """``rank`` in ``range(size)``; ``library`` names the transport (for config.json)."""

    rank: int
    size: int
    library: str

    @abstractmethod
    def allgatherv(self, buf: np.ndarray, counts: list[int]) -> np.ndarray:
        """All ranks' byte buffers (uint8), concatenated in rank order."""

    @abstractmethod
    def allgather_obj(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""


class MPIComm(Communicator):
    """MPI.COMM_WORLD through mpi4py (imported here, on first use only)."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.library = MPI.Get_library_version().strip().splitlines()[0].strip()

    def allgatherv(self, buf: np.ndarray, counts: list[int]) -> np.ndarray:
        out = np.empty(sum(counts), np.uint8)
        displs = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64).tolist()
        self._comm.Allgatherv(np.ascontiguousarray(buf, np.uint8),
                              [out, (list(counts), displs), self._mpi.BYTE])
        return out

    def allgather_obj(self, obj: Any) -> list[Any]:
        return self._comm.allgather(obj)


class _Shared:
    def __init__(self, size: int) -> None:
        self.slots: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=120)


class ThreadComm(Communicator):
    """P ranks as P threads of one process (for tests): same results as MPI, no MPI."""

    library = "in-process threads (scratchcnn.comm.ThreadComm)"

    def __init__(self, rank: int, shared: _Shared) -> None:
        self.rank, self.size, self._shared = rank, len(shared.slots), shared

    @classmethod
    def group(cls, size: int) -> list[ThreadComm]:
        """``size`` communicators that talk to each other; give one to each thread."""
        shared = _Shared(size)
        return [cls(r, shared) for r in range(size)]

    def _exchange(self, item: Any) -> list[Any]:
        sh = self._shared
        sh.slots[self.rank] = item
        sh.barrier.wait()
        items = list(sh.slots)
        sh.barrier.wait()  # nobody overwrites a slot before everyone has read them all
        return items

    def allgatherv(self, buf: np.ndarray, counts: list[int]) -> np.ndarray:
        buf = np.ascontiguousarray(buf, np.uint8)
        if buf.size != counts[self.rank]:
            raise ValueError(f"rank {self.rank}: {buf.size} bytes, counts say "
                             f"{counts[self.rank]}")
        return np.concatenate([b.copy() for b in self._exchange(buf)])

    def allgather_obj(self, obj: Any) -> list[Any]:
        return self._exchange(obj)
