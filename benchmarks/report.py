"""Write the "Benchmarks" section of docs/benchmarks.md from the results JSON (never by hand).

    python -m benchmarks.report                  # small-scale results into docs/benchmarks.md
    python -m benchmarks.report --scale full

Reads benchmarks/results/continual_<stream>_<scale>.json, overhead.json and
ner_conll2003_<scale>.json (when present) and replaces
everything between the `<!-- benchmarks:start -->` and `<!-- benchmarks:end -->`
markers of docs/benchmarks.md (the section is appended when the markers are absent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.continual import RESULTS
from benchmarks.streams import REPO

START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
STREAMS = ["clinc150", "banking77", "fpb"]


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x, spec: str = ",") -> str:
    return "-" if x is None else format(x, spec)


def stream_table(doc: dict) -> list[str]:
    s = doc["strategies"]
    joint = (s.get("joint") or {}).get("acc")
    each = (s.get("retrain_each") or {}).get("samples")
    m = doc.get("machine", {})
    load = f"load {m.get('load_avg_1m_at_start', '?')} → {m.get('load_avg_1m_at_end', '?')}"
    if m.get("jobs", 1) > 1:
        load += f"; {m['jobs']} strategies at a time, {m.get('torch_threads')} torch thread(s) each"
    partial = " — PARTIAL: stopped before every strategy ran" if doc.get("partial") else ""
    cpu = f"{m['cpu']} " if m.get("cpu") else ""
    precision = f", {m['autocast']}" if m.get("autocast") else ""
    lines = [f"**{doc['stream']}**{partial} ({doc['scale']}; {doc['date']}; {cpu}{m.get('cpus')} CPUs{precision}, "
             f"torch {m.get('torch')}, "
             f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}, {load}) — `{doc['command']}`", "",
             "| strategy | ACC | of joint | BWT | max forgetting | samples | of retrain_each | wall s | samples/s "
             "| peak MB | gate passed / failed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in s.items():
        of_joint = r["acc"] / joint if joint and r["acc"] is not None else None
        spent = None if r["samples"] is None else r["samples"] + (r.get("forward_rows") or 0)
        of_each = spent / each if each and spent is not None else None
        samples = _num(r["samples"]) + (f" + {_num(r['forward_rows'])} fwd" if r.get("forward_rows") else "")
        gate = "-" if r["promotions"] is None else f"{r['promotions']} / {r['rejections']}"
        wall = _num(r["wall_s"], ",.0f") + (" (est.)" if name == "retrain_each" and r["wall_s"] else "")
        lines.append(f"| {name} | {_pct(r['acc'])} | {_pct(of_joint, 0)} | {_pts(r['bwt'])} | "
                     f"{_forget(r['max_forgetting'])} | {samples} | {_pct(of_each, 0)} | {wall} | "
                     f"{_num(r['samples_per_s'] or None, ',.0f')} | {_num(r['peak_mem_mb'], ',.0f')} | {gate} |")
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why} |||||||||")
    return lines + [""] + provenance(doc)


def provenance(doc: dict) -> list[str]:
    """Strategies merged in from runs of their own (`--merge`): when, where and how."""
    runs = {name: d["run"] for name, d in doc.get("details", {}).items() if d.get("run")}
    first = doc.get("date") or min((r["date"] for r in runs.values()), default=None)  # the header's run
    lines = [f"- {doc['note']}"] if doc.get("note") else []
    for name, run in runs.items():
        if run["date"] != first:
            m = run["machine"]
            lines.append(f"- `{name}` was measured in a run of its own ({run['date']}; {m.get('cpu', '')} "
                         f"{m.get('cpus')} CPUs, {m.get('autocast')}, {m.get('torch_threads')} torch thread(s)): "
                         f"`{run['command']}`")
    return lines + [""] if lines else []


def _forget(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} pts"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f} pts"


def targets(clinc: dict | None, overhead: dict | None, docs: dict[str, dict] | None = None) -> list[str]:
    """The issues' targets, measured; 'not met' is reported, not tuned away."""
    rows = ["| target | measured | met |", "|---|---|---|"]
    if clinc:
        s = clinc["strategies"]
        r, joint, each = s.get("replay@5%"), s.get("joint"), s.get("retrain_each")
        if r and joint and each:
            ratio, cost = r["acc"] / joint["acc"], r["samples"] / each["samples"]
            rows += [f"| CLINC150: replay (defaults, 5% buffer) ACC ≥ 97% of joint | {_pct(ratio)} | "
                     f"{'yes' if ratio >= 0.97 else 'no'} |",
                     f"| … using ≤ 30% of retrain_each's samples | {_pct(cost)} | {'yes' if cost <= 0.30 else 'no'} |",
                     f"| … BWT no worse than -2 pts | {_pts(r['bwt'])} | {'yes' if r['bwt'] >= -0.02 else 'no'} |"]
        naive = s.get("naive")
        if naive and r:
            rows.append(f"| naive visibly worse than replay | ACC {_pct(naive['acc'])} vs {_pct(r['acc'])}, "
                        f"BWT {_pts(naive['bwt'])} | {'yes' if naive['acc'] < r['acc'] - 0.05 else 'no'} |")
        gated, plain = s.get("replay+gate"), s.get("replay")
        if gated and plain and gated.get("acc") is not None and plain.get("acc") is not None:
            gap = gated["acc"] - plain["acc"]
            rows.append(f"| the gate enforced costs ≤ 1 pt of ACC (`replay+gate` vs `replay`) | {_pts(gap)} "
                        f"({_pct(gated['acc'])} vs {_pct(plain['acc'])}) | {'yes' if gap >= -0.01 else 'no'} |")
    rows += learning_targets(docs or {})
    rows += overhead_targets(overhead)
    return rows + [""] if len(rows) > 2 else []


# issue 19: the shipped defaults against joint and naive in the same stream's results
LEARNING_TARGETS = {"clinc150": 0.99, "banking77": 0.99}


def shipped_strategy(params_path: Path = REPO / "params.yaml") -> str:
    """The strategy that runs what params.yaml ships for a sentence classifier, the gate
    enforced as in the flow: the class-statistics head, or fine-tuning with replay."""
    from tasks.core.config import load_params, stats_head_on

    return "stats+gate" if stats_head_on(load_params(params_path)) else "replay+gate"


def learning_targets(docs: dict[str, dict], shipped: str | None = None) -> list[str]:
    rows, shipped = [], shipped or shipped_strategy()
    for stream, share in LEARNING_TARGETS.items():
        s = (docs.get(stream) or {}).get("strategies", {})
        r, joint, naive = s.get(shipped), s.get("joint"), s.get("naive")
        if not (r and joint and naive and r.get("acc") is not None):
            continue
        # a row run forward only (the statistics head) is counted as a whole training sample
        spent = r["samples"] + (r.get("forward_rows") or 0)
        ratio, cost = r["acc"] / joint["acc"], spent / naive["samples"]
        rows += [f"| {stream}: shipped defaults (`{shipped}`) ACC ≥ {_pct(share, 0)} of joint | {_pct(ratio)} "
                 f"({_pct(r['acc'])} vs {_pct(joint['acc'])}) | {'yes' if ratio >= share else 'no'} |",
                 f"| … BWT ≥ −1 pt | {_pts(r['bwt'])} | {'yes' if r['bwt'] >= -0.01 else 'no'} |",
                 f"| … training samples ≤ 1.5× naive's | {cost:.2f}× ({_num(spent)} vs {_num(naive['samples'])}) | "
                 f"{'yes' if cost <= 1.5 else 'no'} |"]
    return rows


# issue 20: the platform's cost beside the bare fine-tune, by training rows in the delivery
OVERHEAD_TARGETS = {1500: 0.03, 13500: 0.01}


def overhead_targets(overhead: dict | None) -> list[str]:
    rows = []
    for size, run in ((overhead or {}).get("by_size") or {}).items():
        limit = OVERHEAD_TARGETS.get(int(size))
        if limit is not None:
            share = run["overhead_share"]
            rows.append(f"| platform overhead ≤ {_pct(limit, 0)} of the bare fine-tune, {int(size):,}-row delivery | "
                        f"{_pct(share)} (without evaluation {_pct(run['overhead_share_without_evaluation'])}) | "
                        f"{'yes' if share <= limit else 'no'} |")
    loop = (overhead or {}).get("trainer_vs_bare")
    if loop:
        rows.append(f"| trainer ≥ 95% of a bare PyTorch loop's samples/s | {_pct(loop['ratio'])} "
                    f"({_pct(loop['ratio_steps_only'])} without its dev loss and checkpoints) | "
                    f"{'yes' if loop['ratio'] >= 0.95 else 'no'} |")
    return rows


def overhead_table(doc: dict) -> list[str]:
    lines = [f"Overhead ({doc['date']}) — `{doc['command']}`", ""]
    flow = doc.get("flow_vs_bare")
    if flow:
        lines += [f"Whole `retrain` flow {flow['flow_wall_s']:.1f} s vs bare `train_candidate` "
                  f"{flow['bare_train_s']:.1f} s on the same {flow['batch_train_rows']:,}-row batch:", "",
                  "| stage | seconds | share of the flow |", "|---|---|---|"]
        # orchestration has no task run: its seconds are the flow's wall time outside every task
        lines += [f"| {k} | {flow['stage_s'].get(k, v * flow['flow_wall_s']):.2f} | {_pct(v)} |"
                  for k, v in flow["stage_share"].items()]
        lines.append("")
    for size, run in (doc.get("by_size") or {}).items():
        if not flow or int(size) != flow["batch_train_rows"]:  # the first size has the table above
            lines += [f"{int(size):,}-row delivery: flow {run['flow_wall_s']:.1f} s vs bare {run['bare_train_s']:.1f} s, "
                      f"overhead {_pct(run['overhead_share'])}; stages: "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in run["stage_s"].items()), ""]
    loop = doc.get("trainer_vs_bare")
    if loop:
        t, b = loop["trainer"], loop["bare"]
        lines += [f"Trainer vs a bare PyTorch loop (benchmarks/bare_loop.py) on the same {loop['rows']:,} rows and "
                  f"batches: {t['samples_per_s']} vs {b['samples_per_s']} samples/s ({_pct(loop['ratio'])}); the "
                  f"trainer's dev loss took {t['dev_loss_s']} s and its checkpoints {t['checkpoint_s']} s of "
                  f"{t['seconds']} s ({_pct(loop['ratio_steps_only'])} without them).", ""]
    lines += ["Stage costs by batch size (the drift column is Evidently's column tests without a production "
              "model; the embedding and quality signals sample at most `drift.max_embed_rows` rows, "
              "see benchmarks/results/drift_scaling.json):", "",
              "| batch rows | intake s | validation s | drift s |", "|---|---|---|---|"]
    lines += [f"| {r['rows']:,} | {r['intake_s']} | {r['validate_s']} | {r['drift_s']} |" for r in doc["stages"]]
    return lines + [""]


PATH_TITLES = {"stats": ("The class-statistics path", "bare s (forward passes)"),
               "ner": ("The NER path (a CoNLL-2003 tagger)", "bare s (fine-tune)")}


def stats_overhead(doc: dict) -> list[str]:
    """A path of benchmarks/overhead.py other than the default fine-tune (`--path stats`:
    the statistics head, one forward pass a row; `--path ner`: a tagger): the whole flow
    against its bare `train_candidate`, by delivery size."""
    title, bare = PATH_TITLES.get(doc.get("path"), PATH_TITLES["stats"])
    lines = [f"{title} ({doc['date']}; {doc['machine'].get('cpu')}, "
             f"{doc['machine'].get('autocast')}) — `{doc['command']}`", "",
             f"| delivery rows | flow s | {bare} | intake+validate s | drift s | exam s (both models) "
             "| gate s | promote s | orchestration s |", "|---|---|---|---|---|---|---|---|---|"]
    for size, run in (doc.get("by_size") or {}).items():
        s, wall = run["stage_s"], run["flow_wall_s"]
        lines.append(f"| {int(size):,} | {wall:.1f} | {run['bare_train_s']:.1f} | "
                     f"{s.get('intake', 0) + s.get('validate', 0) + s.get('split', 0):.1f} | {s.get('drift', 0):.1f} | "
                     f"{s.get('evaluate', 0):.1f} | {s.get('gate', 0):.1f} | "
                     f"{s.get('promote', 0) + s.get('record-promotion', 0):.1f} | "
                     f"{run['stage_share'].get('orchestration', 0) * wall:.1f} |")
    return lines + [""]


def drift_reference(doc: dict) -> list[str]:
    """benchmarks/drift_reference.py: the drift stage with and without the reference
    vectors stored at promotion."""
    m = doc["median_s"]
    return [f"Drift with the reference vectors a version stores at promotion ({doc['date']}; "
            f"{doc['machine'].get('cpu')}, {doc['machine'].get('autocast')}) — `{doc['command']}`: the whole drift "
            f"stage on a {doc['batch_rows']:,}-row batch, MiniLM production, median of "
            f"{len(doc['seconds']['stored'])} runs each way: {m['computed']:.2f} s embedding the "
            f"{doc['max_embed_rows']}-row reference sample, {m['stored']:.2f} s reading it "
            f"({1 - m['stored'] / m['computed']:.0%} less); storing it at promotion took {m['store_at_promotion']:.2f} s "
            "(a fine-tuned version; a statistics version has the vectors from its exam).", ""]


def ner_table(doc: dict) -> list[str]:
    """CoNLL-2003: the stream (and naive, without replay) stage by stage and joint
    training, entity-level F1 on test; issue 19's targets when all three ran."""
    m = doc.get("machine", {})
    partial = " — PARTIAL: stopped before every stage ran" if not doc.get("complete", True) else ""
    lines = [f"**CoNLL-2003 (NER)**{partial} ({doc['scale']}; {doc['date']}; {doc['train_sentences']:,} train / "
             f"{doc['test_sentences']:,} test sentences; {m.get('cpus')} CPUs, "
             f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}) — `{doc['command']}`", "",
             "| model | types annotated | train sentences (+ replayed) | train s | test micro F1 | macro F1 | "
             "F1 per type |", "|---|---|---|---|---|---|---|"]

    def per_type(test: dict) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in sorted(test["per_type_f1"].items()))

    for mode in ("stream", "naive"):
        for st in (doc.get(mode) or {}).get("stages", []):
            lines.append(f"| {mode} stage {st['stage']} (+{'+'.join(st['new_types'])}) | {'+'.join(st['types_so_far'])} | "
                         f"{st['train_sentences']:,} (+{st['replayed']:,}) | {st['train_seconds']:,.0f} | "
                         f"{st['test']['f1']:.3f} | {st['test']['macro_f1']:.3f} | {per_type(st['test'])} |")
    joint = doc.get("joint")
    if joint:
        lines.append(f"| joint | all four | {joint['train_sentences']:,} | {joint['train_seconds']:,.0f} | "
                     f"{joint['test']['f1']:.3f} | {joint['test']['macro_f1']:.3f} | {per_type(joint['test'])} |")
    lines += ner_targets(doc)
    lines += [""] + ([f"- {doc['note']}"] if doc.get("note") else []) + [f"- `{m}` was measured in an earlier run ({doc[m]['measured']['date']}): `{doc[m]['measured']['command']}`"
                     for m in ("stream", "naive", "joint") if (doc.get(m) or {}).get("measured")]
    ref = doc.get("reference", {})
    if ref:
        lines += ["", f"For scale: BERT-base, 110M parameters, all 14,041 training sentences: "
                      f"{ref['bert_base_test_f1']} test F1 ({ref['source']})."]
    return lines + [""]


def ner_targets(doc: dict) -> list[str]:
    """Issue 19 on CoNLL-2003: the stream's final F1 ≥ 98% of joint's, for ≤ 1.5× naive's
    training samples (when stream, naive and joint all ran and recorded samples)."""
    stream, naive = ((doc.get(m) or {}).get("stages") for m in ("stream", "naive"))
    joint = doc.get("joint")
    if not (stream and naive and joint) or "samples" not in joint:
        return []
    f1, ratio = stream[-1]["test"]["f1"], stream[-1]["test"]["f1"] / joint["test"]["f1"]
    spent, base = sum(s["samples"] for s in stream), sum(s["samples"] for s in naive)
    return ["", "| target | measured | met |", "|---|---|---|",
            f"| CoNLL-2003: stream micro F1 ≥ 98% of joint | {_pct(ratio)} ({f1:.3f} vs {joint['test']['f1']:.3f}; "
            f"naive {naive[-1]['test']['f1']:.3f}) | {'yes' if ratio >= 0.98 else 'no'} |",
            f"| … training samples ≤ 1.5× naive's | {spent / base:.2f}× ({_num(spent)} vs {_num(base)}; joint "
            f"{_num(joint['samples'])}) | {'yes' if spent <= 1.5 * base else 'no'} |"]


def section(results: Path, scale: str) -> str:
    docs = {n: json.loads(p.read_text()) for n in STREAMS if (p := results / f"continual_{n}_{scale}.json").exists()}
    # the overhead benchmark has no scale: its section is the small one's
    has_overhead = scale == "small" and (results / "overhead.json").exists()
    overhead = json.loads((results / "overhead.json").read_text()) if has_overhead else None
    start, _ = markers(scale)
    lines = [start, "## Benchmarks" + ("" if scale == "small" else f" ({scale} scale)"), "",
             f"Generated by `python -m benchmarks.report` from `benchmarks/results/` ({scale} scale; "
             "see benchmarks/README.md for definitions). ACC: final mean accuracy over every batch's "
             "held-out rows; BWT and forgetting in accuracy points (negative BWT = forgetting); samples: "
             "training rows processed, replay included (+ fwd: rows only run forward, by the class-statistics "
             "head; counted as whole samples in the cost columns and targets). Gate: the flow's gate judged every candidate; "
             "only the `+gate` strategies enforce it (a failed candidate is discarded and production stays), the "
             "others count its verdicts and always advance, so their ACC measures the learning method.", ""]
    if not docs and not overhead:
        lines += ["No results at this scale yet: run `make bench`.", ""]
    lines += targets(docs.get("clinc150"), overhead, docs)
    for name, doc in docs.items():
        lines += ([f"**{name}**: skipped — {doc['skipped_stream']}", ""] if doc.get("skipped_stream")
                  else stream_table(doc))
    if overhead:
        lines += overhead_table(overhead)
    for name in ("overhead_stats.json", "overhead_ner.json"):
        if has_overhead and (results / name).exists():
            lines += stats_overhead(json.loads((results / name).read_text()))
    if has_overhead and (results / "drift_reference.json").exists():
        lines += drift_reference(json.loads((results / "drift_reference.json").read_text()))
    ner = results / f"ner_conll2003_{scale}.json"
    if ner.exists():
        lines += ner_table(json.loads(ner.read_text()))
    return "\n".join(lines + [markers(scale)[1]])


def markers(scale: str) -> tuple[str, str]:
    """Each scale has its own generated section; small keeps the original markers."""
    return (START, END) if scale == "small" else (f"<!-- benchmarks:{scale}:start -->", f"<!-- benchmarks:{scale}:end -->")


def update_readme(readme: Path, text: str, scale: str = "small") -> None:
    start, end = markers(scale)
    body = readme.read_text()
    if start in body and end in body:
        head, rest = body.split(start, 1)
        body = head + text + rest.split(end, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n" + text + "\n"
    readme.write_text(body)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--readme", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    update_readme(args.readme, section(args.results, args.scale), args.scale)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
