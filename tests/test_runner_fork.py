"""The pipeline's process may use CUDA: it is forked from a process that has asked CUDA
nothing. Seen on an H200: a fork server that had imported diffusers (which asks how many
devices there are at import) made every runner fail with "Cannot re-initialize CUDA in
forked subprocess". torch's CUDA builds mark a process forked after that even where there
is no GPU, so the CPU sees it too."""

from __future__ import annotations

import multiprocessing.connection

import pytest
import torch

from dreamforge.runners import process


def _send_whether_in_bad_fork(conn: multiprocessing.connection.Connection) -> None:
    conn.send(torch._C._cuda_isInBadFork())


@pytest.mark.skipif(
    not hasattr(torch._C, "_cuda_isInBadFork"), reason="a torch without CUDA has no such mark"
)
def test_a_runner_process_may_use_cuda() -> None:
    parent, child = process._CHILDREN.Pipe()
    forked = process._CHILDREN.Process(target=_send_whether_in_bad_fork, args=(child,))
    forked.start()
    try:
        assert parent.poll(120), "the forked process said nothing"
        assert parent.recv() is False, f"preloading {process.PRELOADED} poisons CUDA"
    finally:
        forked.join(30)
