"""The CLI under torchrun, with faults for tests/test_distributed.py to inject into one rank:

- ``{rank}`` in an argument is replaced by this process's rank (one node's copy of the model can
  differ from the others': a shard missing, other weights);
- SPECTRUM_FAST_TEST_KILL_RANK=r: rank r kills itself with SIGKILL (as the OOM killer would) after
  SPECTRUM_FAST_TEST_KILL_AFTER finished batches (default 1), once they are journaled;
- SPECTRUM_FAST_TEST_FAIL_RANK=r: rank r raises torch's out-of-memory error instead.

Run as ``torchrun --nproc-per-node N tests/torchrun_scan.py scan SOURCE ...``.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from spectrum_fast.cli import main

scan_module = importlib.import_module("spectrum_fast.scan")  # the module (the package's ``scan`` is the function)

rank = int(os.environ["RANK"])
kill_rank = os.environ.get("SPECTRUM_FAST_TEST_KILL_RANK")
fail_rank = os.environ.get("SPECTRUM_FAST_TEST_FAIL_RANK")
if rank in {int(r) for r in (kill_rank, fail_rank) if r is not None}:
    after = int(os.environ.get("SPECTRUM_FAST_TEST_KILL_AFTER", "1"))
    run_batches = scan_module.run_batches

    def run_then_die(src, batches, dev, precision, *, on_batch, **kwargs):
        finished = []

        def counted(batch):
            on_batch(batch)  # journals the batch
            finished.append(batch)
            if len(finished) >= after:
                if fail_rank is not None:
                    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
                os.kill(os.getpid(), signal.SIGKILL)

        return run_batches(src, batches, dev, precision, on_batch=counted, **kwargs)

    scan_module.run_batches = run_then_die

sys.exit(main([arg.replace("{rank}", str(rank)) for arg in sys.argv[1:]]))
