"""A distributed scan's scaling: one workload scanned by the ranks of a torchrun job, timed.

    torchrun --nproc-per-node N bench/scale_out.py --workload llama3-8b --folder /tmp/llama3-8b-model --out DIR [--rounds 5]
    torchrun --nproc-per-node N bench/scale_out.py --workload deepseek-v2-moe --out DIR
    python3 bench/scale_out.py --compare DIR        # the table, and 1 rank against N, file by file

llama3-8b is read from a checkpoint on disk (written first if missing, by rank 0); deepseek-v2-moe
(../shared/DESIGN.md section 4, all 59 MoE layers) is generated on each rank's GPU as it is read,
so each rank makes only the matrices of its share. The process group is started first, and one
untimed scan of one layer's shapes, on each rank alone, warms every rank up (for llama3-8b read
from a one-layer checkpoint beside the model, so that it takes the timed scan's path from disk
through pinned staging; generated for the others), and a second one, shared by the ranks, warms
the scan's collectives; the timed part is scan() itself: opening the
source, planning, computing each share, and gathering the rows. With --rounds N the timed scan
runs N times and the round of median time is reported (each round's time is in the JSON, and a
line says so if the rounds' rows differ).
Rank 0 writes the reference's files into DIR/<workload>-<N>ranks/ and the times (each rank's
matrices, busy seconds, read and compute seconds, peak GPU memory, its warm-up) into
DIR/<workload>-<N>ranks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_info import run_info  # noqa: E402

import spectrum_fast  # noqa: E402

# llama3-8b-generated: the 8B model's 224 matrices generated on the GPU as they are read (no files):
# the 8B compute without the checkpoint reads, to tell the two apart.
WORKLOADS = ("llama3-8b", "llama3-8b-generated", "deepseek-v2-moe")


def source_of(workload: str, folder: Path | None):
    if workload == "llama3-8b":
        return folder
    from workloads import GeneratedSource, deepseek_v2_moe_layout, llama3_8b_layout

    if workload == "llama3-8b-generated":
        return GeneratedSource(llama3_8b_layout(), "llama3-8b-generated", generate_on="cuda")
    return GeneratedSource(deepseek_v2_moe_layout(), "deepseek-v2-moe", generate_on="cuda")


def warm_up_source(workload: str, folder: Path | None):
    """One layer's shapes, read as the timed scan reads: every kernel, graph, workspace and first
    page-locking the timed scan needs is made once per process before it (they cost each process
    the same, whatever its share)."""
    from workloads import GeneratedSource, deepseek_v2_moe_layout, llama3_8b_layout, llama3_8b_warm_up_folder

    if workload == "llama3-8b":
        return llama3_8b_warm_up_folder(folder)
    if workload == "llama3-8b-generated":
        layout = llama3_8b_layout(layers=1)
    else:
        layout = deepseek_v2_moe_layout(layers=1, experts=8)
    return GeneratedSource(layout, "warm-up", generate_on="cuda")


def run(args) -> None:
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    if args.workload == "llama3-8b" and int(os.environ["RANK"]) == 0 and not (args.folder / "config.json").exists():
        from workloads import write_llama3_8b_model

        started = time.perf_counter()
        write_llama3_8b_model(args.folder)
        print(f"wrote {args.folder} in {time.perf_counter() - started:.1f} s", flush=True)
    if args.workload == "llama3-8b" and int(os.environ["RANK"]) == 0:
        warm_up_source(args.workload, args.folder)  # its checkpoint, written before the barrier
    started = time.perf_counter()
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    init_s = time.perf_counter() - started
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.barrier()  # rank 0 may have been writing the checkpoint
    options = dict(progress=False, cache=False, distributed=True)
    started = time.perf_counter()
    spectrum_fast.scan(warm_up_source(args.workload, args.folder), progress=False, cache=False, distributed=False)  # every shape here
    # ... and once as a job: the scan's collectives (object all-gathers and broadcasts over NCCL)
    # are first used here, not in the timed scan. Shared, each rank meets only some shapes, hence both.
    spectrum_fast.scan(warm_up_source(args.workload, args.folder), **options)
    warm_up_s = time.perf_counter() - started
    rounds = []  # (slowest rank's seconds, every rank's, the result), one per timed scan
    for _ in range(args.rounds):
        dist.barrier()
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = spectrum_fast.scan(source_of(args.workload, args.folder), **options)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        times = [None] * world
        dist.all_gather_object(times, seconds)
        rounds.append((max(times), times, result))
    warm_ups = [None] * world
    dist.all_gather_object(warm_ups, warm_up_s)
    # The round of median time (the lower of the two middle ones for an even count) stands for the
    # run: one scan's time swings by several percent from scan to scan and launch to launch.
    median = sorted(range(len(rounds)), key=lambda i: rounds[i][0])[(len(rounds) - 1) // 2]
    _, times, result = rounds[median]
    if rank == 0:
        same = all(_row_values(r[2]) == _row_values(result) for r in rounds)
        if not same:
            print(f"{args.workload}: the {len(rounds)} rounds' rows are not all the same", flush=True)
        name = f"{args.workload}-{world}ranks"
        files = args.out / name
        files.mkdir(parents=True, exist_ok=True)
        result.to_spectrum_json(files)
        result.to_yaml(files, 50)
        record = {"workload": args.workload, "ranks": world, "matrices": len(result.rows),
                  "scan_seconds": max(times), "scan_seconds_by_rank": times,
                  "scan_seconds_by_round": [r[0] for r in rounds], "rounds_identical": same,
                  "init_process_group_seconds": init_s,
                  "warm_up_seconds_by_rank": warm_ups,
                  "per_rank": result.ranks, "run_info": run_info(torch.device("cuda"))}
        print(f"{args.workload}, {world} rank(s): {len(result.rows):,} matrices in {max(times):.2f} s"
              + (f" (median of {len(rounds)} scans: " + ", ".join(f"{r[0]:.2f}" for r in rounds) + ")"
                 if len(rounds) > 1 else ""), flush=True)
        for r in result.ranks:
            r.update({k: r[k] or 0.0 for k in ("read_seconds", "compute_seconds", "read_wait_seconds")})
            print(f"  rank {r['rank']} {r['device']}: {r['matrices']:,} matrices, busy {r['busy_seconds']:.2f} s, "
                  f"read {r['read_seconds']:.2f} s, compute {r['compute_seconds']:.2f} s (waited "
                  f"{r['read_wait_seconds']:.2f} s for reads), peak GPU {r['peak_gpu_bytes'] / 2**20:.0f} MiB",
                  flush=True)
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))
    dist.destroy_process_group()


def _row_values(result) -> list[str]:
    """Each row's numbers as text (repr: a NaN equals a NaN), to tell whether two scans agree."""
    return [repr((r.name, r.snr, r.sigma_max, r.sigma, r.threshold, r.n_signal, r.status)) for r in result.rows]


def compare(out: Path) -> None:
    """The table of every workload's runs in ``out``, and each N-rank run's files against 1 rank's."""
    print("| workload | ranks | matrices | scan s | speedup | per rank: matrices, busy s, read s, compute s, "
          "waited for reads s, peak GPU MiB | files identical to 1 rank |")
    print("|---|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        # exactly <workload>-<N>ranks.json: "llama3-8b-*" would also take llama3-8b-generated's runs
        runs = (p for p in out.glob(f"{workload}-*ranks.json") if p.name[len(workload) + 1:-len("ranks.json")].isdigit())
        records = sorted((json.loads(p.read_text()) for p in runs), key=lambda r: r["ranks"])
        if not records:
            continue
        base = next((r for r in records if r["ranks"] == 1), None)
        for rec in records:
            per_rank = "; ".join(f"{r['matrices']:,}, {r['busy_seconds']:.2f}, {r['read_seconds']:.2f}, "
                                 f"{r['compute_seconds']:.2f}, {r['read_wait_seconds']:.2f}, "
                                 f"{r['peak_gpu_bytes'] / 2**20:.0f}" for r in rec["per_rank"])
            speedup = f"{base['scan_seconds'] / rec['scan_seconds']:.2f}x" if base else "-"
            same = "-"
            if base and rec is not base:
                here, there = out / f"{workload}-{rec['ranks']}ranks", out / f"{workload}-1ranks"
                names = sorted(p.name for p in there.iterdir())
                same = "yes" if all((here / n).read_bytes() == (there / n).read_bytes() for n in names) else \
                    _difference(here, there, names)
            by_round = rec.get("scan_seconds_by_round", [])
            seconds = f"{rec['scan_seconds']:.2f}" + (f" (median of {len(by_round)}: {min(by_round):.2f}-{max(by_round):.2f})"
                                                       if len(by_round) > 1 else "")
            print(f"| {workload} | {rec['ranks']} | {rec['matrices']:,} | {seconds} | {speedup} | "
                  f"{per_rank} | {same} |")


def _difference(here: Path, there: Path, names: list[str]) -> str:
    """How two runs' results differ: the largest relative SNR difference, and whether the YAMLs agree."""
    main = next(n for n in names if n.endswith(".json") and not n.endswith("_sorted.json"))
    a, b = json.loads((here / main).read_text()), json.loads((there / main).read_text())
    worst = max(abs(a[k]["snr"] - b[k]["snr"]) / max(abs(b[k]["snr"]), 1e-300) for k in b)
    yamls = [n for n in names if n.endswith(".yaml")]
    same_yaml = all((here / n).read_bytes() == (there / n).read_bytes() for n in yamls)
    return f"no: max rel. SNR difference {worst:.1e}; YAML {'identical' if same_yaml else 'DIFFERENT'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=WORKLOADS)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/llama3-8b-model"))
    ap.add_argument("--out", type=Path, default=Path("scale_out"))
    ap.add_argument("--rounds", type=int, default=1, help="timed scans after the warm-up; the median one is reported")
    ap.add_argument("--compare", type=Path, default=None, metavar="DIR", help="print the table of the runs in DIR")
    args = ap.parse_args()
    if args.compare is not None:
        compare(args.compare)
    elif args.workload is None:
        ap.error("give --workload (under torchrun) or --compare DIR")
    else:
        run(args)


if __name__ == "__main__":
    main()
