"""How evenly a distributed scan's planner (spectrum_fast/partition.py) shares the benchmark
workloads (../shared/DESIGN.md section 4) among 2, 4 and 8 ranks: the predicted cost of each rank's
share, from the tensors' names, shapes and dtypes alone (what a safetensors header holds), and
max / mean over the ranks. The scan shares whole batches of the plan a scan on ``--device`` makes
(a GPU's, where the scan runs; the CPU's plan packs more matrices per batch). No weights needed.

    python3 bench/partition_balance.py [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402
from workloads import deepseek_v2_moe_layout, llama3_8b_layout, llama3_70b_layout  # noqa: E402

from spectrum_fast.partition import imbalance, share_costs, split_batches  # noqa: E402
from spectrum_fast.scan import _plan_batches, resolve_device  # noqa: E402
from spectrum_fast.sources import TensorInfo  # noqa: E402
from spectrum_fast.targets import plan_tasks  # noqa: E402

WORKLOADS = {
    "llama3-8b": llama3_8b_layout(),
    "llama3-70b": llama3_70b_layout(),
    "deepseek-v2-moe": deepseek_v2_moe_layout(),
}
RANKS = (2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also write partition_balance.json here")
    ap.add_argument("--device", default=None, help="whose batch plan (default: cuda when available)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    print(run_info(dev))
    print(f"\n| workload | matrices | batches ({dev.type} plan) | predicted 1 rank s | ranks | matrices per rank | "
          f"predicted per rank s (min - max) | max / mean |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for name, layout in WORKLOADS.items():
        infos = [TensorInfo(tensor, shape, "bfloat16", True) for tensor, shape in layout]
        tasks, _ = plan_tasks(infos, "auto", False)
        total = share_costs([tasks])[0]
        batches = _plan_batches(tasks, dev, precision="float64", method="exact", eigen_route="auto",
                                max_gpu_memory=None, max_batch_bytes=None)
        for ranks in RANKS:
            shares = [[t for b in share for t in b.tasks] for share in split_batches(batches, ranks)]
            costs = share_costs(shares)
            counts = [len(s) for s in shares]
            ratio = imbalance(costs)
            results.append({"workload": name, "matrices": len(tasks), "batches": len(batches), "ranks": ranks,
                            "device": str(dev), "costs": costs,
                            "counts": counts, "max_over_mean": ratio})
            print(f"| {name} | {len(tasks):,} | {len(batches):,} | {total:.1f} | {ranks} | {min(counts):,} - {max(counts):,} | "
                  f"{min(costs):.2f} - {max(costs):.2f} | {ratio:.4f} |")
    print()
    for name in WORKLOADS:  # the scale-out issue bounds llama3-70b and deepseek-v2-moe
        worst = max(r["max_over_mean"] for r in results if r["workload"] == name)
        print(f"{name}: worst max / mean {worst:.4f} ({'within' if worst <= 1.05 else 'ABOVE'} 1.05)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "partition_balance.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
