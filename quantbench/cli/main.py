"""`quantbench` command line: run, report, compare, track, trend, parity, formats, devices, estimate.

Every subcommand's arguments are wired here, and one handler (main) turns bad input into one line
on stderr naming the problem and its fix, and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quantbench.core.errors import UserError

DEFAULT_SUITE = "suites/default.toml"
DEFAULT_HISTORY = "results/history"  # `track` and `compare --baseline auto`


def _suite(args):
    """Returns the suite of a `run`: the file (or the defaults), then --set, then the flags; a flag
    and a --set of the same key merge, the flag winning (said in one line when they differ)."""
    from quantbench.core.suite import Suite, load_suite, parse_sets

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


def _build_envs(suite) -> list[str]:
    """Builds the backend environments the suite's formats run in and that are not built yet;
    returns their names (a format's own environment: quantbench/core/envs.py)."""
    from quantbench.core import envs
    from quantbench.core.formats import get_format

    fmts = [get_format(f) for s in suite.per_model() for f in s.formats]
    need = sorted({f.env for f in fmts if f.env and envs.python(f.env) is None})
    for name in need:
        envs.build(name)
    return need


def cmd_run(args) -> int:
    from quantbench.measure import runner

    suite = _suite(args)
    out = Path(args.out or f"results/{suite.name}.jsonl")
    if args.report:  # checked before measuring: a run must not end in an unwritable report path
        where = Path(args.report).parent
        probe = next((p for p in (where, *where.parents) if p.exists()), Path("."))
        if not os.access(probe, os.W_OK) or Path(args.report).is_dir():
            raise UserError(f"--report '{args.report}' cannot be written (not a writable file path); "
                            "pick another path (nothing was measured)")

    def progressive_report():  # the report so far, re-rendered after each variant
        from quantbench.report.render import write_report

        try:
            write_report([str(out)], args.report)
        except Exception as e:  # a report that cannot render yet must not stop the measuring
            print(f"note: report not updated yet ({type(e).__name__}: {e})".splitlines()[0], file=sys.stderr)

    if args.build_envs:
        _build_envs(suite)
    after = progressive_report if args.report else None
    if args.executor == "ray":
        from quantbench.measure import fleet

        fleet.run(suite, out, args.ray_address, resume=args.resume, after_variant=after)
    elif args.ray_address:
        raise UserError(f"--ray-address {args.ray_address} needs --executor ray; add it, or drop --ray-address")
    else:
        runner.run(suite, out, resume=args.resume, after_variant=after)
    from quantbench.core.records import read_results
    from quantbench.report.render import render_summary

    print("\n" + render_summary(read_results(out)))
    print(f"records: {out}")
    if args.report:
        from quantbench.report.render import write_report

        for p in write_report([str(out)], args.report):
            print(f"report: {p}")
    if args.history:
        from quantbench.track import history

        history.print_tracked(history.track([out], args.history))
    return 0


def cmd_formats(args) -> int:
    from quantbench.core.formats import COMPILABLE_BACKENDS, COMPILED, FORMATS, GGUF_EXTRA_BPW

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


def cmd_report(args) -> int:
    """Writes the report files and prints their paths."""
    from quantbench.report.render import write_report

    for path in write_report(args.results, args.out, args.title):
        print(path)
    return 0


def _compare_paths(args) -> tuple[str | None, str]:
    """Returns (base, new) paths from the arguments; base None when auto finds no baseline."""
    from quantbench.track.compare import load

    if args.baseline is None:
        if args.base is None or args.new is None:
            raise UserError("compare needs BASE and NEW results files, or --baseline auto "
                            "--history DIR NEW")
        return args.base, args.new
    if args.base is None or args.new is not None:
        raise UserError("with --baseline auto give NEW alone (the baseline comes from --history)")
    from quantbench.track.history import baseline_for

    run = baseline_for(args.history or DEFAULT_HISTORY, load(args.base))
    if run is not None:
        print(f"baseline: {run.path}", file=sys.stderr)
    return (str(run.path) if run else None), args.base


def cmd_compare(args) -> int:
    """Prints the comparison; returns 0 clean (or no baseline yet), 1 regression."""
    from quantbench.track.compare import compare, load

    base, new = _compare_paths(args)
    if base is None:
        print(f"note: no baseline: {args.history or DEFAULT_HISTORY} has no earlier run of this machine and suite "
              f"({new}); nothing compared. Track runs with `quantbench track` or "
              "`quantbench run --history`", file=sys.stderr)
        return 0
    history_dir = args.history or (DEFAULT_HISTORY if args.baseline else None)
    result = compare(load(base), load(new), args.fail, args.alpha, labels=(str(base), str(new)),
                     strict_machine=args.strict_machine, history_dir=history_dir)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    md = result.markdown()
    print(md, end="")
    if args.markdown_out:
        Path(args.markdown_out).write_text(md)
    for line in result.notes:
        print(f"note: {line}", file=sys.stderr)
    for line in result.regressions:
        print(f"REGRESSION: {line}", file=sys.stderr)
    print(f"{len(result.regressions)} regression(s)" if result.regressions else "no regressions",
          file=sys.stderr)
    return 1 if result.regressions else 0


def cmd_track(args) -> int:
    from quantbench.track import history

    history.print_tracked(history.track(args.results, args.history))
    return 0


def cmd_trend(args) -> int:
    from quantbench.track import trend

    t = trend.analyse(args.history, args.fail, args.alpha)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(trend.render_html(t, args.history), encoding="utf-8")
    for key, gate in trend.learnt(t):
        print(f"gate: {key[1]}/{key[2]}/{key[3]} {key[4]} {key[5]} {gate.label()}")
    for s in t.steps:
        print(f"step: {s.line()}")
    print(f"{len(t.steps)} step(s) in {len(t.runs)} runs; trend: {out}")
    return 0


def _compare_parser(sub) -> None:
    from quantbench.track.compare import ALPHA, default_gates

    p = sub.add_parser("compare", help="regression gate: compare two results files")
    p.add_argument("base", nargs="?", help="baseline results (.jsonl, or pytest-benchmark .json)")
    p.add_argument("new", nargs="?", help="results to judge")
    p.add_argument("--baseline", metavar="auto", choices=["auto"],
                   help="auto: the baseline is the latest earlier run in --history on the same "
                        "machine with the same suite hash; then give NEW alone")
    p.add_argument("--history", metavar="DIR",
                   help=f"run history: the baseline for --baseline auto (default {DEFAULT_HISTORY}), "
                        "and the noise that raises a default gate to each metric's learnt floor")
    p.add_argument("--strict-machine", action="store_true",
                   help="exit 2 when base and new ran on different machines (default: a warning)")
    p.add_argument("--fail", nargs="+", action="extend", metavar="METRIC:THRESHOLD",
                   help="override a default gate, e.g. decode_tok_s:-5%% ppl:+0.5%% top1_agree:-0.5pp; "
                        "defaults: " + " ".join(map(str, default_gates().values())).replace("%", "%%"))
    p.add_argument("--alpha", type=float, default=ALPHA, help="significance for timing (default %(default)s)")
    p.add_argument("--markdown-out", metavar="FILE", help="also write the markdown table here")
    p.set_defaults(func=cmd_compare)


def _estimate_parser(subparsers) -> None:
    from quantbench.arith import formulas
    from quantbench.cli import arith as cli_arith

    p = subparsers.add_parser(
        "estimate", help="predict weights, KV cache and speed-of-light from a config (no GPU)",
        description="Roofline estimate for one model × format × device. Tensor parallel over "
                    "--devices N splits weights and KV N ways; communication is not counted.")
    p.add_argument("--model", required=True,
                   help="model dir, config.json, hub id, or shape:NAME (e.g. shape:llama-3-8b, "
                        "shape:qwen3-30b-a3b@layers=4 for the first 4 layers)")
    p.add_argument("--format", help="a format name (see `quantbench formats`); default: the "
                                    "checkpoint's stored format (quantization_config), else bf16")
    p.add_argument("--device", required=True, help="a name from `quantbench devices`, or local")
    p.add_argument("--seq-len", type=int, default=512, help="prompt / context tokens (default 512)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    p.add_argument("--devices", type=int, default=1, help="tensor-parallel devices (default 1)")
    p.add_argument("--kv-type", choices=list(formulas.KV_TYPE_BITS),
                   help="KV cache element type (q8_0 8.5 bits, q4_0 4.5 bits with block "
                        "scales); default: the format's activation dtype")
    p.add_argument("--kv-layout", choices=formulas.KV_LAYOUTS,
                   help="MLA models: cache the latent (llama.cpp, vLLM) or per-head K/V "
                        "(transformers); default: by the format's backend")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cli_arith.cmd_estimate)


def _devices_parser(subparsers) -> None:
    from quantbench.cli import arith as cli_arith

    p = subparsers.add_parser("devices", help="list the spec-sheet device table")
    p.add_argument("--json", action="store_true", help="print one JSON object per device")
    p.add_argument("--calibrate", metavar="DEVICE", nargs="?", const="cpu",
                   help="re-measure this machine (cpu or cuda) and replace the cached calibration")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads to calibrate at, as the suite's `threads` (default: torch's count)")
    p.set_defaults(func=cli_arith.cmd_devices)


def cmd_parity(args) -> int:
    """Runs quantbench A/B/A/B against llama-bench, llama-perplexity and a bare torch loop; writes the
    parity table (markdown) and the report with a parity section. Exit 1 when a target is missed."""
    import pandas as pd

    from quantbench import parity
    from quantbench.report.render import write_report

    t, first = parity.run(args.suite, args.rounds, args.out_dir)
    if t.empty:
        raise UserError("parity measured nothing (every variant failed or was skipped); see the output above")
    md = parity.parity_markdown(t) + "\n" + parity.PARITY_NOTE + "\n"
    html_path = Path(args.out)
    paths = write_report([str(p) for p in first], str(html_path),
                         "quantbench parity: " + Path(args.suite).stem,
                         sections=[parity.parity_section(t)])
    md_path = html_path.with_name(html_path.stem + "-table.md")
    md_path.write_text(md, encoding="utf-8")
    print(md)
    print("wrote " + ", ".join([str(md_path), *paths]))
    missed = t[~t["ok"]]
    if len(missed):
        print(f"parity: {len(missed)} of {len(t)} targets missed: " + "; ".join(
            f"{r.format} {r.metric} {r.ratio:.3f} (target {r.target}: {r.verdict})" for r in missed.itertuples()),
            file=sys.stderr)
        return 1
    print(f"parity: all {len(t)} targets met")
    return 0 if pd.notna(t["ratio"]).all() else 1


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
    r.add_argument("--build-envs", action="store_true",
                   help="first build the backend environments the suite's formats need (quantbench env "
                        "build NAME for each one not built; ~40 s each); without it, such formats are skipped")
    r.add_argument("--history", metavar="DIR", help="also add the run to this history (quantbench track)")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: variants one by one on this machine (default); ray: one Ray task per "
                        "variant on a cluster (docs/fleet.md; pip install 'quantbench[fleet]')")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join (HOST:PORT, auto, ray://HOST:PORT); default $RAY_ADDRESS, "
                        "else a new local one-node cluster")
    r.set_defaults(func=cmd_run)
    f = sub.add_parser("formats", help="list the formats table")
    f.set_defaults(func=cmd_formats)
    sp = sub.add_parser("report", help="render results as HTML (+ markdown and CSV beside it)")
    sp.add_argument("results", nargs="+", help="JSONL result files or directories of them")
    sp.add_argument("-o", "--out", default="reports/report.html", help="HTML path; .md/.csv go beside it")
    sp.add_argument("--title", default="", help="report title (default: the model names)")
    sp.set_defaults(func=cmd_report)
    _compare_parser(sub)
    tp = sub.add_parser("track", help="add results files to a per-machine run history")
    tp.add_argument("results", nargs="+", help="results JSONL files to add")
    tp.add_argument("--history", default=DEFAULT_HISTORY, metavar="DIR",
                    help="history directory (default %(default)s)")
    tp.set_defaults(func=cmd_track)
    from quantbench.track.compare import ALPHA

    tr = sub.add_parser("trend", help="metrics over a run history, with change points")
    tr.add_argument("history", help="history directory (quantbench track / run --history)")
    tr.add_argument("-o", "--out", default="reports/trend.html", help="HTML file (default %(default)s)")
    tr.add_argument("--fail", nargs="+", action="extend", metavar="METRIC:THRESHOLD",
                    help="gates a step must cross, as in compare (default: compare's defaults)")
    tr.add_argument("--alpha", type=float, default=ALPHA, help="significance for timing steps (default %(default)s)")
    tr.set_defaults(func=cmd_trend)
    pa = sub.add_parser("parity", help="quantbench against llama-bench, llama-perplexity and a bare "
                                        "torch loop, A/B/A/B (nox -s parity)")
    pa.add_argument("--suite", default="suites/parity.toml", help="suite TOML (default %(default)s)")
    pa.add_argument("--rounds", type=int, default=3, help="A/B rounds (default %(default)s)")
    pa.add_argument("--out-dir", default="results/parity", help="records and measures (default %(default)s)")
    pa.add_argument("-o", "--out", default="reports/parity.html",
                    help="report with the parity section (default %(default)s); the table goes beside it")
    pa.set_defaults(func=cmd_parity)
    ev = sub.add_parser("env", help="list or build the backend environments (own venvs) some formats run in")
    ev.add_argument("action", choices=["list", "build"])
    ev.add_argument("name", nargs="?", help="environment to build (see `quantbench env list`)")
    ev.set_defaults(func=cmd_env)
    _estimate_parser(sub)
    _devices_parser(sub)
    return p


def cmd_env(args) -> int:
    """Lists the backend environments with their formats and state, or builds one."""
    from quantbench.core import envs
    from quantbench.core.formats import FORMATS

    if args.action == "build":
        if not args.name:
            raise UserError("quantbench env build NAME: name one of `quantbench env list`")
        print(envs.build(args.name))
        return 0
    for name, env in envs.ENVS.items():
        fmts = ", ".join(f.name for f in FORMATS.values() if f.env == name)
        state = envs.python(name) or f"not built: {envs.build_command(name)}"
        print(f"{name:<20} {fmts:<30} {state}\n    {env.why}")
    if not envs.ENVS:
        print("no backend environments: every format runs in the main one")
    return 0


def main(argv=None) -> int:
    from quantbench.measure.worker import quiet_import_chatter

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
