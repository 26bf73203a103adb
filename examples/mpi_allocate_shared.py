"""One array per node in an MPI job: every rank of a node works on the same memory, no copies.

    mpirun -n 4 python examples/mpi_allocate_shared.py      # or plain `python ...`: a job of one rank

``ndshm.mpi.allocate_shared`` makes one segment per node (its ranks share it), each rank fills its
own rows in place, and after a node barrier every rank reads every row of its node. Between nodes
nothing is shared: MPI moves what must travel (here one number per node, an allreduce). The array
is freed collectively at the end of the ``with`` block (or with ``win.free()``).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import ndshm
import ndshm.mpi

ROWS_PER_RANK, COLS = 250, 1000


def main() -> dict:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    win = ndshm.mpi.allocate_shared(comm, (size * ROWS_PER_RANK, COLS), np.float64)
    a, node = win.array, win.comm                        # the node's array, the ranks that share it
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    a[mine] = rank + 1                                   # write in place: no send, no copy
    node.Barrier()                                       # every rank of this node has written
    local_ranks = node.allgather(rank)                   # the world ranks on this node
    node_sum = sum(float(a[r * ROWS_PER_RANK:(r + 1) * ROWS_PER_RANK].sum()) for r in local_ranks)
    expected_node_sum = sum((r + 1) * ROWS_PER_RANK * COLS for r in local_ranks)
    # Across nodes, only what must travel goes through MPI: one number per node leader.
    leaders = comm.Split(0 if win.leader else MPI.UNDEFINED, rank)
    total = leaders.allreduce(node_sum) if win.leader else None
    if win.leader:
        leaders.Free()
    total = comm.bcast(total, root=0)
    facts = {
        "rank": rank, "ranks": size, "node_ranks": node.Get_size(), "segment": win.name,
        "same_segment": ndshm.segment_of(a).name == win.name,
        "node_sum_ok": node_sum == expected_node_sum,
        "total_ok": total == sum((r + 1) * ROWS_PER_RANK * COLS for r in range(size)),
    }
    del a
    win.free()                                           # collective: the leader removes the name
    facts["freed"] = not ndshm.exists(facts["segment"])
    return facts


if __name__ == "__main__":
    f = main()
    if f["rank"] == 0:
        print(f"{f['ranks']} rank(s), {f['node_ranks']} on this node, sharing segment {f['segment']}: "
              f"every row read in place {'correctly' if f['node_sum_ok'] else 'WRONG'}, "
              f"total across nodes {'correct' if f['total_ok'] else 'WRONG'}, freed: {f['freed']}")
