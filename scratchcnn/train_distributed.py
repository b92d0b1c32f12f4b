"""``python -m scratchcnn.train --distributed``: the training CLI on P MPI ranks.

    mpiexec -n 2 python -m mpi4py -m scratchcnn.train --distributed --threads 1

The run is the one-process run, bit for bit (``scratchcnn.distributed``):
every rank loads the data, builds the same model, draws the same batches and
trains its share of each; only rank 0 writes the run folder and prints. The
ranks agree on when to stop (Ctrl-C, SIGTERM, SIGUSR1 on any rank stops all
after the same batch) and check after every epoch that their weights are
still equal. Run it under ``python -m mpi4py``: an exception on one rank then
ends the whole job instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import argparse
import signal

from scratchcnn.train import StopRequested, Trainer, fail


class DistributedTrainer(Trainer):
    """A ``Trainer`` whose step, evaluation and decisions span every rank of ``comm``."""

    def __init__(self, args: argparse.Namespace, comm) -> None:
        self.comm = comm
        self.writer = comm.rank == 0
        super().__init__(args)
        self._stepper = None
        self._comm_before = 0.0

    def run(self) -> int:
        from scratchcnn import train
        from scratchcnn.distributed import DistributedError

        try:
            if self.comm.rank != 0:  # rank 0 loads (and downloads, if needed) first
                self.comm.allgather_obj(None)
            return super().run()
        except DistributedError as e:  # every rank raises the same: rank 0 says it
            if self.comm.rank == 0:
                train.WHO = ""
                fail(str(e))
            raise SystemExit(1) from None

    def _data_ready(self) -> None:
        if self.comm.rank == 0:
            self.comm.allgather_obj(None)

    def _model_ready(self) -> None:
        from scratchcnn.distributed import DataParallelStep, check_ranks_agree, rank_facts

        check_ranks_agree(self.comm, rank_facts(self.model))
        self._stepper = DataParallelStep(self.model, self.loss, self.opt, self.comm)

    def _stop_requested(self) -> StopRequested:
        return StopRequested((signal.SIGINT, signal.SIGTERM, signal.SIGUSR1),
                             quiet=not self.writer)

    def _step(self, x, y, stop_requested: bool):
        return self._stepper(x, y, stop_requested)

    def _agree(self, flag: bool) -> bool:
        return any(self.comm.allgather_obj(bool(flag)))

    def _evaluate_batches(self, model, loss, batches) -> tuple[float, float]:
        from scratchcnn.distributed import evaluate_sharded

        return evaluate_sharded(model, loss, batches, self.comm)

    def _config_extra(self) -> dict:
        from scratchcnn.distributed import sample_unit, shares

        n = self.settings["batch_size"]
        unit = sample_unit(self.model, n, tuple(self.train_x.shape[1:]))
        return {"distributed": {
            "world_size": self.comm.size, "mpi_library": self.comm.library,
            "sample_unit": unit, "shares_of_a_full_batch": shares(n, unit, self.comm.size),
            "ranks_holding_data": min(self.comm.size, max(1, n // unit)),
        }}

    def _row_extra(self) -> dict:
        spent = self._stepper.comm_seconds - self._comm_before
        self._comm_before = self._stepper.comm_seconds
        return {"comm_seconds": spent, "world_size": self.comm.size}

    def _epoch_done(self, epoch: int) -> None:
        from scratchcnn.distributed import check_in_step

        check_in_step(self.comm, self.model, self.opt, epoch)


def distributed_trainer(args: argparse.Namespace) -> DistributedTrainer:
    """The CLI's ``--distributed`` path: the MPI communicator and this rank's trainer."""
    try:
        from scratchcnn.comm import MPIComm

        comm = MPIComm()
    except ImportError:
        fail("--distributed needs mpi4py and an MPI runtime: pip install '.[mpi]', then "
             "mpiexec -n 2 python -m mpi4py -m scratchcnn.train --distributed ...")
    from scratchcnn import train

    if comm.size > 1:
        train.WHO = f"rank {comm.rank}: "
    return DistributedTrainer(args, comm)
