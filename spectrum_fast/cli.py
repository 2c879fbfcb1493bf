"""The ``spectrum-fast`` command: scan, types, yaml, report, compare, doctor.

Errors in the user's input print one line (``spectrum-fast: error: ...``) and exit 2; nothing is
half-written, since every file goes to a temporary name first.

Under torchrun (``torchrun --nproc-per-node N -m spectrum_fast scan ...``) the ranks share the scan
(distributed.py) and rank 0 alone writes and prints; another rank prints only an error of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

from .errors import SpectrumFastError
from .naming import percent_label


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="model folder, .safetensors or .bin file")
    p.add_argument("--demo", action="store_true", help="use the embedded demo model (all-MiniLM-L6-v2)")
    p.add_argument("--types", nargs="+", default=["auto"], metavar="TYPE",
                   help="auto (default: >=2-D weights in numbered blocks), all, or type names / regexes")
    p.add_argument("--pool-experts", action="store_true", help="one type for all experts: mlp.experts.*.down_proj")


def _add_axolotl(p: argparse.ArgumentParser) -> None:
    p.add_argument("--axolotl", action="store_true",
                   help="also write OUT/model_snr_results/snr_results_<model>.json, the file Axolotl's Spectrum "
                        "plugin reads (run Axolotl from OUT)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spectrum-fast", description="Spectrum's layer selection, fast and exact.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("scan", help="compute the SNR of every matrix and write JSON + YAML")
    _add_source(p)
    p.add_argument("--top-percent", type=float, nargs="+", default=[50.0], metavar="P",
                   help="write one YAML per percentage (default 50)")
    p.add_argument("--out", default=".", help="output folder (default: here)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--max-gpu-memory", type=float, default=None, metavar="GIB",
                   help="GPU memory the scan may use, in GiB (default 2)")
    p.add_argument("--precision", choices=["float64", "float32"], default="float64",
                   help="float64 (default, exact) or float32 (for GPUs with slow float64; errors grow with the spikes, see README)")
    p.add_argument("--method", choices=["exact", "fast"], default="exact",
                   help="exact (default: every singular value) or fast (experimental: the top values by subspace "
                        "iteration, the count above the edge by inertia, the Marchenko-Pastur law for the rest; "
                        "rows are estimates)")
    p.add_argument("--estimator", choices=["spectrum", "gavish-donoho", "mp-fit", "mp-moments"], default=None,
                   help="noise scale behind the edge: spectrum (IQR/1.349, the reference's; default for exact), "
                        "gavish-donoho, mp-fit or mp-moments (fast mode's)")
    p.add_argument("--model-name", default=None, help="names the files (default: hub id in config.json or folder)")
    _add_axolotl(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the result cache and resume journal "
                        "($SPECTRUM_FAST_CACHE, default ~/.cache/spectrum_fast)")
    p.add_argument("--keep-spectra", action="store_true",
                   help="also write every matrix's singular values and row details to "
                        "snr_results_<model>_spectra.safetensors, for `report` (computes every matrix: the cache "
                        "keeps rows only)")

    p = sub.add_parser("types", help="list the weight types of a model, with counts and shapes")
    _add_source(p)

    p = sub.add_parser("yaml", help="write spectrum.py's YAML from a snr_results JSON (either layout)")
    p.add_argument("json", help="snr_results_<model>.json")
    p.add_argument("--top-percent", type=float, nargs="+", required=True, metavar="P")
    p.add_argument("--out", default=".", help="output folder (default: here)")
    _add_axolotl(p)

    p = sub.add_parser("report", help="one self-contained HTML page (and PNGs) of a result: heatmaps, selection, "
                                      "spectra, top and bottom modules, trainable share")
    p.add_argument("results", help="snr_results_<model>.json (with its _spectra.safetensors beside it for the "
                                   "spectra and parameter shares) or the _spectra.safetensors file")
    p.add_argument("--top-percent", type=float, default=50.0, metavar="P", help="the selection shown (default 50)")
    p.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    p.add_argument("--png", default=None, metavar="DIR", help="also write each figure as a PNG into DIR")
    p.add_argument("--matrices", nargs="+", default=None, metavar="NAME",
                   help="the matrices whose spectra are drawn (default: each type's highest and lowest SNR)")

    p = sub.add_parser("compare", help="two results: per-type rank correlation, selection overlap, a scatter plot")
    p.add_argument("a", help="a result JSON (either layout; a published Spectrum file too)")
    p.add_argument("b", help="the result to compare it with")
    p.add_argument("--top-percent", type=float, nargs="+", default=[10.0, 25.0, 50.0, 75.0], metavar="P",
                   help="the percentages whose selections are compared (default 10 25 50 75)")
    p.add_argument("--out", default="compare.html", help="the HTML file (default compare.html)")
    p.add_argument("--png", default=None, metavar="DIR", help="also write the scatter plot as a PNG into DIR")

    p = sub.add_parser("doctor", help="what is installed and built, and what each operation will use")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: what a scan would pick)")
    return parser


def _source(args) -> object:
    from .demo import demo_model_folder

    if args.demo:
        return demo_model_folder()
    if not args.source:
        raise SpectrumFastError("no SOURCE given: pass a model folder or file, or --demo")
    return args.source


def _output_folder(path: str) -> Path:
    """Check and create ``--out`` before any work, so a bad path fails in a second, not after a scan."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SpectrumFastError(f"--out {out}: exists and is not a folder: give a folder (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpectrumFastError(f"--out {out}: cannot create this folder ({e.strerror or e})") from None
    return out


def _one_line(e: BaseException) -> str:
    """Messages quoted from torch or safetensors can span lines: the CLI promises one."""
    return " ".join(str(e).split())


def _write_axolotl(result, out: Path, percents: list[float]) -> list[str]:
    """The plugin's file, and the lines of Axolotl's config that make it read this file."""
    path = result.to_axolotl(out)
    fractions = [f"{p / 100:g}" for p in percents]
    others = f" (or {', '.join(fractions[1:])})" if len(fractions) > 1 else ""
    lines = [f"wrote {path}",
             f"Axolotl: run it from {out} with `plugins: [axolotl.integrations.spectrum.SpectrumPlugin]`, "
             f"`spectrum_model_name: {result.model_name}`, `spectrum_top_fraction: {fractions[0]}`{others}"]
    counts = Counter(r.type for r in result.rows)
    for p in percents:
        # The plugin keeps int(count * fraction): float rounding can make that one less than int(count * p / 100).
        short = [t for t, c in counts.items() if int(c * (p / 100)) != int(c * p / 100)]
        if short:
            lines.append(f"note: at spectrum_top_fraction {p / 100:g} Axolotl keeps one matrix fewer than the "
                         f"{percent_label(p)}% YAML in {len(short)} types ({', '.join(short[:3])}"
                         f"{' ...' if len(short) > 3 else ''}): float rounding of count * fraction")
    return lines


def _types(args):
    return args.types[0] if args.types in (["auto"], ["all"]) else args.types


def _cmd_scan(args) -> int:
    from .scan import scan
    from .selection import check_top_percent

    percents = [check_top_percent(p) for p in args.top_percent]
    from .demo import DEMO_MODEL_NAME

    model_name = args.model_name or (DEMO_MODEL_NAME if args.demo else None)
    source = _source(args)
    out = _output_folder(args.out)
    result = scan(source, types=_types(args), device=args.device, progress=not args.no_progress,
                  precision=args.precision, pool_experts=args.pool_experts, model_name=model_name,
                  max_gpu_memory=None if args.max_gpu_memory is None else int(args.max_gpu_memory * 2**30),
                  method=args.method, estimator=args.estimator, cache=not args.no_cache,
                  keep_spectra=args.keep_spectra)
    if _rank() != 0:
        return 0  # rank 0 writes the files and says what was done
    written = list(result.to_spectrum_json(out))
    written += [result.to_yaml(out, p) for p in percents]
    if args.keep_spectra:
        written.append(result.to_spectra(out))
    print(result.summary(tuple(percents)))
    gpu = f", peak GPU {result.peak_gpu_bytes / 2**20:.0f} MiB" if result.peak_gpu_bytes is not None else ""
    host = f", peak host {result.peak_host_bytes / 2**20:.0f} MiB" if result.peak_host_bytes is not None else ""
    how = result.precision if result.method == "exact" else "fast mode: estimates"
    if result.estimator != "spectrum":
        how += f", sigma by {result.estimator}"
    if result.ranks:
        ranks = len(result.ranks)
        print(f"\n{len(result.rows)} matrices in {result.seconds:.2f} s on {ranks} rank{'s' if ranks > 1 else ''} "
              f"({how})")
        for r in result.ranks:
            peak = f", peak GPU {r['peak_gpu_bytes'] / 2**20:.0f} MiB" if r["peak_gpu_bytes"] is not None else ""
            print(f"  rank {r['rank']} ({r['host']}, {r['device']}): {r['matrices']} matrices, busy "
                  f"{r['busy_seconds']:.2f} s (predicted {r['predicted_seconds']:.3g} s on an H100){peak}")
    else:
        print(f"\n{len(result.rows)} matrices in {result.seconds:.2f} s on {result.device} ({how}){gpu}{host}")
    waited = result.read_wait_seconds  # on a CPU scan reads are in line, so only a GPU scan waits
    if str(result.device).startswith("cuda") and waited is not None and waited > 0.1 * result.seconds:
        print(f"the GPU waited {waited:.1f} s for reads: the disk, not the analysis, "
              f"set this scan's pace")
    reused = _reused_line(result)
    if reused:
        print(reused)
    for name, why in result.skipped[:10]:
        print(f"skipped {name}: {why}")
    for path in written:
        print(f"wrote {path}")
    if args.axolotl:
        print("\n".join(_write_axolotl(result, out, percents)))
    return 0


def _reused_line(result) -> str | None:
    """What the scan took from the cache or an interrupted scan's journal instead of computing."""
    from .cache import cache_folder

    n = len(result.rows)
    if result.from_cache and not result.resumed_rows:
        return f"all {n} matrices from the cache ({cache_folder()}): nothing computed; --no-cache computes them again"
    parts = []
    if result.resumed_rows:
        parts.append(f"resumed {result.resumed_rows} of {n} matrices from an interrupted scan")
    if result.cached_rows:
        parts.append(f"{result.cached_rows} of {n} matrices from the cache")
    if not parts:
        return None
    computed = n - result.resumed_rows - result.cached_rows
    return "; ".join(parts) + f" ({cache_folder()}); {computed} computed"


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    from .distributed import launched_by_torchrun

    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def _error_line(e: BaseException) -> str | None:
    """The line this process prints for an error, or None: under torchrun, another rank's failure
    is said once, by rank 0, and a rank other than 0 names itself."""
    from .distributed import RankFailure

    if _rank() != 0 and isinstance(e, RankFailure) and not e.own:
        return None
    return f"spectrum-fast: error: {_where()}{_one_line(e)}"


def _where() -> str:
    """"[rank r] " on a torchrun rank other than 0, whose lines mix with rank 0's."""
    rank = _rank()
    return f"[rank {rank}] " if rank != 0 else ""


def _rank_lost(e: RuntimeError) -> bool:
    """A collective failed under torchrun because a peer went away (gloo's closed connection, a
    c10d store or NCCL error): another rank died while this one talked to it."""
    from .distributed import launched_by_torchrun

    if not launched_by_torchrun():
        return False
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    return (dist_error is not None and isinstance(e, dist_error)) or \
        any(word in str(e) for word in ("gloo", "NCCL", "c10d", "Connection closed by peer", "Connection reset"))


def _interrupted_message(args) -> str:
    from .cache import cache_disabled_by_env, cache_folder

    plain = "spectrum-fast: interrupted; no output was written for the unfinished scan"
    if args.command != "scan" or args.no_cache or cache_disabled_by_env():
        return plain
    try:
        folder = cache_folder()
    except RuntimeError:  # no home folder: the scan warned that it ran without the cache
        return plain
    return (f"spectrum-fast: interrupted; no output was written; the matrices finished so far are kept in "
            f"{folder}: run the same command again to resume")


def _say(line: str) -> None:
    """One line to stderr in one write: under torchrun several ranks share the stream, and a line
    written in pieces (print writes the newline apart) can be cut by another rank's."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a corrupt cache entry, torch's) as one line each, like the errors."""
    (sys.stderr if file is None else file).write(f"spectrum-fast: warning: {_one_line(message)}\n")


def _cmd_types(args) -> int:
    from .demo import DEMO_MODEL_NAME
    from .sources import open_source
    from .targets import describe_types, plan_tasks, require_some

    src = open_source(_source(args), DEMO_MODEL_NAME if args.demo else None)
    try:
        infos = src.tensors()
        tasks, skipped = plan_tasks(infos, _types(args), args.pool_experts)
        require_some(tasks, infos, _types(args), src.label)
        print(f"{'type':<48} {'count':>6}  shapes")
        for type_name, count, shapes in describe_types(tasks):
            print(f"{type_name:<48} {count:>6}  " + ", ".join(f"{n}x{m}" for n, m in shapes))
        print(f"\n{len(tasks)} matrices of {src.model_name}")
        for name, why in skipped[:10]:
            print(f"skipped {name}: {why}")
    finally:
        src.close()
    return 0


def _cmd_yaml(args) -> int:
    from .results import load_results
    from .selection import check_top_percent

    percents = [check_top_percent(p) for p in args.top_percent]
    result = load_results(args.json)
    out = _output_folder(args.out)
    for p in percents:
        print(f"wrote {result.to_yaml(out, p, reference_names=True)}")
    if args.axolotl:
        print("\n".join(_write_axolotl(result, out, percents)))
    return 0


def _png_folder(path: str | None) -> Path | None:
    return None if path is None else _output_folder(path)


def _output_file(path: str) -> Path:
    """Check ``--out FILE`` before any work: its folder must exist or be creatable, and it must not be a folder."""
    out = Path(path)
    if out.is_dir():
        raise SpectrumFastError(f"--out {out}: is a folder: give a file name (e.g. {out / 'report.html'})")
    _output_folder(str(out.parent) if str(out.parent) else ".")
    return out


def _cmd_report(args) -> int:
    from .report import write_report
    from .selection import check_top_percent

    percent = check_top_percent(args.top_percent)
    out, png_dir = _output_file(args.out), _png_folder(args.png)
    for path in write_report(args.results, out, percent, png_dir, args.matrices):
        print(f"wrote {path}")
    return 0


def _cmd_compare(args) -> int:
    from .report import write_comparison
    from .selection import check_top_percent

    percents = [check_top_percent(p) for p in args.top_percent]
    out, png_dir = _output_file(args.out), _png_folder(args.png)
    comparison, written = write_comparison(args.a, args.b, out, percents, png_dir)
    print(comparison.table())
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_doctor(args) -> int:
    from .doctor import report

    print("\n".join(report(args.device)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        command = {"scan": _cmd_scan, "types": _cmd_types, "yaml": _cmd_yaml, "report": _cmd_report,
                   "compare": _cmd_compare, "doctor": _cmd_doctor}[args.command]
        with warnings.catch_warnings():  # restores showwarning when main() returns (tests call it in-process)
            warnings.showwarning = _warning_line
            return command(args)
    except SpectrumFastError as e:
        line = _error_line(e)
        if line:
            _say(line)
        return 2
    except BrokenPipeError:  # stdout piped into `head` and closed: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1
    except OSError as e:  # a file or folder the OS refuses (permissions, disk full): one line too
        _say(_error_line(e))
        return 2
    except KeyboardInterrupt:
        _say(_interrupted_message(args))
        return 130
    except MemoryError:
        _say(f"spectrum-fast: error: {_where()}out of host memory: close other programs or scan a smaller model")
        return 3
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            _say(f"spectrum-fast: error: {_where()}out of GPU memory: free the GPU or use --device cpu")
            return 3
        if _rank_lost(e):
            _say(f"spectrum-fast: error: lost contact with another rank ({_one_line(e)[:200]}): no output was "
                 f"written; torchrun's report names the rank")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
