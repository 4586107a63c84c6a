"""The report's machine comparison: the same variant and workload across machines, each with its
own roofline (pivot.machine_comparison), and its small HTML section."""
from quantbench.report import pivot, render


def rec(machine: str, workload: str, tok_s: float, predicted: float | None, ts: str = "2026-01-01T00:00:00Z",
        status: str = "ok", fmt: str = "gguf-q4_k_m", device: str = "cpu") -> dict:
    metric = "decode_tok_s" if workload.startswith("tg") else "prefill_tok_s"
    r = {"model": "tiny", "format": fmt, "device": device, "workload": workload, "status": status,
         "timestamp": ts, metric: tok_s, f"{metric}_predicted": predicted}
    r.update({"node_kind": machine} if machine.startswith("qb-kind:") else {"env.host": machine})
    return r


def test_each_machine_its_measured_predicted_and_sol():
    recs = [rec("qb-kind:amx", "tg128", 50.0, 100.0, ts="2026-01-01T00:00:00Z"),
            rec("qb-kind:amx", "tg128", 60.0, 100.0, ts="2026-01-02T00:00:00Z"),  # a rerun supersedes
            rec("laptop", "tg128", 20.0, 80.0),
            rec("laptop", "tg128", 99.0, 80.0, status="failed"),  # not a measurement
            rec("qb-kind:amx", "pp512", 900.0, None),  # no roofline on this machine: no SoL
            rec("laptop", "pp512", 300.0, 600.0),
            rec("laptop", "ppl256", 1.0, 1.0),  # quality is not a machine figure
            rec("qb-kind:amx", "tg16", 70.0, 100.0)]  # on one machine only: nothing to compare
    rows = pivot.machine_comparison(recs)
    got = [(r["workload"], r["machine"], r["metric"], r["measured"], r["predicted"], r["sol_frac"]) for r in rows]
    assert got == [("pp512", "laptop", "prefill_tok_s", 300.0, 600.0, 0.5),
                   ("pp512", "qb-kind:amx", "prefill_tok_s", 900.0, None, None),
                   ("tg128", "laptop", "decode_tok_s", 20.0, 80.0, 0.25),
                   ("tg128", "qb-kind:amx", "decode_tok_s", 60.0, 100.0, 0.6)]


def test_a_cpu_box_against_a_gpu_compares_across_devices():
    rows = pivot.machine_comparison([rec("qb-kind:amx", "tg128", 30.0, 60.0),
                                     rec("accelerator_type:L4", "tg128", 300.0, 400.0, device="cuda")])
    assert [(r["machine"], r["device"], r["sol_frac"]) for r in rows] == [
        ("accelerator_type:L4", "cuda", 0.75), ("qb-kind:amx", "cpu", 0.5)]


def test_one_machine_has_no_comparison_section():
    assert pivot.machine_comparison([rec("laptop", "tg128", 20.0, 80.0)]) == []
    assert render.machine_section([]) is None


def test_the_section_shows_each_machine_row():
    from quantbench.report import tables

    rows = pivot.machine_comparison([rec("qb-kind:amx", "tg128", 60.0, 100.0), rec("laptop", "tg128", 20.0, 80.0)])
    section = render.machine_section(rows)
    assert section.title == "Machines compared"
    md = tables.markdown(section).splitlines()
    assert md[-2:] == ["| tiny | gguf-q4_k_m | tg128 | laptop | cpu | 20.0 | 80.0 | 25% |",
                       "| tiny | gguf-q4_k_m | tg128 | qb-kind:amx | cpu | 60.0 | 100.0 | 60% |"]


def test_node_kinds_on_one_host_stay_apart_in_the_variants_table():
    import pandas as pd

    recs = [{**rec(kind, "tg128", tok_s, 100.0), "env.host": "box"} for kind, tok_s in
            (("qb-kind:a", 60.0), ("qb-kind:b", 30.0))]
    p = pivot.pivot(pd.DataFrame(recs))
    assert sorted(zip(p["host"], p["decode_tok_s"], strict=True)) == [("box [qb-kind:a]", 60.0),
                                                                     ("box [qb-kind:b]", 30.0)]
