"""`quantbench` command line: run, report, compare, formats, devices, estimate.

Bad input is one line on stderr naming the problem and its fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quantbench.errors import UserError

DEFAULT_SUITE = "suites/default.toml"


def _suite(args):
    """Returns the suite of a `run`: the file (or the defaults), then --set, then the flags; a flag
    and a --set of the same key merge, the flag winning (said in one line when they differ)."""
    from quantbench.suite import Suite, load_suite, parse_sets

    suite = load_suite(args.suite) if args.suite else Suite()
    sets = parse_sets(args.set or [])
    flags = {("model", "--model"): args.model, ("devices", "--device"): args.device,
             ("formats", "--formats"): args.formats, ("threads", "--threads"): args.threads}
    for (k, flag), v in flags.items():
        if v is None:
            continue
        v = tuple(v) if isinstance(v, list) else v
        if k in sets and sets[k] != v:
            print(f"note: {flag} overrides --set {k}={sets[k]!r}", file=sys.stderr)
        sets[k] = v
    return suite.with_overrides(**sets)


def cmd_run(args) -> int:
    from quantbench import runner

    suite = _suite(args)
    out = Path(args.out or f"results/{suite.name}.jsonl")
    if args.report:  # checked before measuring: a run must not end in an unwritable report path
        where = Path(args.report).parent
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        if not os.access(probe, os.W_OK) or Path(args.report).is_dir():
            raise UserError(f"--report '{args.report}' cannot be written (not a writable file path); "
                            "pick another path (nothing was measured)")
    runner.run(suite, out, resume=args.resume)
    from quantbench.records import read_results
    from quantbench.report import render_summary

    print("\n" + render_summary(read_results(out)))
    print(f"records: {out}")
    if args.report:
        from quantbench.report import write_report

        for p in write_report([str(out)], args.report):
            print(f"report: {p}")
    return 0


def cmd_formats(args) -> int:
    from quantbench.formats import COMPILABLE_BACKENDS, COMPILED, FORMATS, GGUF_EXTRA_BPW

    print(f"{'format':<13} {'library':<17} {'bits/w':>6}  {'devices':<9} stores / caveat")
    for f in FORMATS.values():
        if f.backend == "dummy":
            continue
        extra = f" ({f.caveat})" if f.caveat else ""
        print(f"{f.name:<13} {f.library:<17} {f.bits_per_weight:>6.3g}  {'/'.join(f.devices):<9} "
              f"{f.stores}{extra}")
    print(f"\nalso: gguf-<type> for any of {', '.join(t.lower() for t in GGUF_EXTRA_BPW)}; "
          f"<format>{COMPILED} (static KV cache + torch.compile decode) for the "
          f"{'/'.join(COMPILABLE_BACKENDS)} formats")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a suite and append records to a JSONL file")
    r.add_argument("--suite", help=f"suite TOML file (default: built-in, as {DEFAULT_SUITE})")
    r.add_argument("--model", help="embedded:smollm2-135m, tiny, a local dir, .gguf or hub id")
    r.add_argument("--device", action="append", help="cpu, cuda or cuda:N (repeatable)")
    r.add_argument("--formats", type=lambda s: s.split(","), help="comma-separated format names")
    r.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any suite key, e.g. --set n_ctx=256 --set gptq_kernel=gptq_triton")
    r.add_argument("--out", help="results JSONL (default results/SUITE.jsonl)")
    r.add_argument("--resume", action="store_true", help="skip variants already ok in --out")
    r.add_argument("--report", help="also write an HTML report here")
    r.set_defaults(func=cmd_run)
    f = sub.add_parser("formats", help="list the formats table")
    f.set_defaults(func=cmd_formats)
    from quantbench import cli_arith, compare, report

    report.add_report_parser(sub)
    compare.add_compare_parser(sub)
    cli_arith.add_estimate_parser(sub)
    cli_arith.add_devices_parser(sub)
    return p


def main(argv=None) -> int:
    from quantbench.worker import quiet_import_chatter

    quiet_import_chatter()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept; rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
