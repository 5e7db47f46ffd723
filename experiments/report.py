#!/usr/bin/env python
"""Markdown tables in the paper's layout from one or more run folders.

    python experiments/report.py runs/crema_d runs/ravdess --paper experiments/paper_tables.json --out report.md

A run folder is what experiments/run.py (or sweep.py) writes: config.json and results.json (a list
of records with dataset, direction, method, seed, val_acc, test_acc, teacher_test_acc, ...;
accuracies are fractions). Rows are methods (and a "teacher" row from teacher_test_acc, one value
per (dataset, direction, seed)), columns are dataset/direction ("CREMA-D A→V"), cells are
mean ± std over seeds in % (sample std, ddof=1; none for one seed) with the number of seeds.

One table per regime: the unpaired regime (record key ``unpaired``, else the config's, else
"paired"/"easy" from the config's ``pairing``), the train subsample ratio (``subsample``, default
1.0) and the backbone. Records that carry ``lambda_fa`` / ``lambda_la`` (sweep.py) get their own
rows. The same (regime, dataset, direction, method, seed) found twice keeps the first folder's
record and says so.

Runs of the two protocols (``--protocol clean|authors``, docs/protocol.md; the record's or the
config's ``protocol``, "clean" for runs that predate it) are put side by side: each column is then
a dataset/direction/protocol, e.g. "Synthetic A→V (authors)" beside "(clean)", so that

    python experiments/report.py runs/demo_clean runs/demo_authors

compares the same dataset under both. Columns whose runs selected their epochs on the test split
(``authors``) are marked with a dagger and a note.

With --paper FILE (experiments/paper_tables.json: Tables 1, 2 and 6 typed in from the paper),
every column gets a "paper" column beside it holding the paper's value for the same method,
dataset, direction and regime ("–" where the paper has none). ce and the teacher do not use the
teacher stream, so their paper values of the main unpaired setting also stand for the paired one.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucmkd_jax import cli  # noqa: E402
from ucmkd_jax.results import DIRECTION_NAMES, format_mean_std, read_json  # noqa: E402

DATASET_NAMES = {"ave": "AVE", "ravdess": "RAVDESS", "crema_d": "CREMA-D", "vggsound": "VGGSound",
                 "synthetic": "Synthetic", "arrays": "arrays"}
ROW_ORDER = ("teacher", "ce", "feature_kd", "vanilla_kd", "c2kd", "dkd", "rkd", "rld", "fitnet", "reviewkd",
             "norm", "sumall", "ucmkd_fa_only", "ucmkd_la_only", "ucmkd")
REGIME_KEYS = ("unpaired", "subsample", "backbone")
TEACHER_FREE = ("teacher", "ce")  # results do not depend on how the teacher stream is drawn
DASH = "–"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (each with config.json and results.json)")
    p.add_argument("--paper", default=None, help="paper values, e.g. experiments/paper_tables.json")
    p.add_argument("--metric", default="test_acc", choices=["test_acc", "val_acc"])
    p.add_argument("--out", default=None, help="write the report here too (Markdown)")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help="show the traceback of an error (default: one line)")
    return p.parse_args(argv)


def regime(record: dict, cfg: dict) -> tuple:
    """(unpaired, subsample, backbone) of a record of a run with config ``cfg``."""
    unpaired = record.get("unpaired") or cfg.get("unpaired") or (
        "paired" if cfg.get("pairing") == "paired" else "easy")
    subsample = record.get("subsample") or cfg.get("subsample") or 1.0
    backbone = (cfg.get("model") or {}).get("backbone", "resnet18")
    return str(unpaired), float(subsample), str(backbone)


def row_key(record: dict) -> tuple:
    """(method, lambda_fa, lambda_la): the lambdas only when the record carries them (sweeps)."""
    return record["method"], record.get("lambda_fa"), record.get("lambda_la")


def load_runs(folders):
    """Returns (rows, notes): rows = [(regime, record)] without duplicates, notes = what was dropped."""
    seen, rows, notes = {}, [], []
    for folder in folders:
        res_path, cfg_path = os.path.join(folder, "results.json"), os.path.join(folder, "config.json")
        for path in (res_path, cfg_path):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{folder} is not a run folder: {path} is missing")
        cfg = read_json(cfg_path, "the run's config")
        records = read_json(res_path, "the run's records")
        for r in records:
            r = dict(r, protocol=r.get("protocol") or cfg.get("protocol") or "clean")
            reg = regime(r, cfg)
            key = (reg, r["dataset"], r["direction"], r["protocol"], row_key(r), r["seed"])
            if key in seen:
                notes.append(f"duplicate {r['dataset']} {r['direction']} {r['method']} seed {r['seed']} "
                             f"({_regime_label(reg)}) in {folder}: kept the one from {seen[key]}")
                continue
            seen[key] = folder
            rows.append((reg, r))
    return rows, notes


def _matches(setting: dict, reg: tuple, method: str) -> bool:
    unpaired, subsample, backbone = reg
    if float(setting.get("subsample", 1.0)) != subsample or setting.get("backbone", "resnet18") != backbone:
        return False
    theirs = setting.get("unpaired", "easy")
    return theirs == unpaired or (method in TEACHER_FREE and {theirs, unpaired} <= {"easy", "paired"})


def paper_value(paper: dict, method: str, dataset: str, direction: str, reg: tuple):
    """(value as printed, table name) of the first paper table with this cell, or None."""
    for table in paper["tables"]:
        for row in table["rows"]:
            if row["method"] != method:
                continue
            setting = dict(table["setting"], **{k: row[k] for k in REGIME_KEYS if k in row})
            value = row["values"].get(f"{dataset}/{direction}")
            if value is not None and _matches(setting, reg, method):
                return value, table["table"]
    return None


def _order(key):
    method, a, b = key
    rank = ROW_ORDER.index(method) if method in ROW_ORDER else ROW_ORDER.index("ucmkd") - 0.5  # unknown: before ucmkd
    return rank, method, -1 if a is None else a, -1 if b is None else b


def _label(key):
    method, a, b = key
    if a is None and b is None:
        return method
    return f"{method} (λ_FA={a:g}, λ_LA={b:g})" if a is not None and b is not None else f"{method} ({a}, {b})"


def _regime_label(reg):
    unpaired, subsample, backbone = reg
    return f"unpaired={unpaired} · subsample={subsample:g} · backbone={backbone}"


def _col_order(col):
    d, r, proto = col
    ds = list(DATASET_NAMES)
    return (ds.index(d) if d in ds else len(ds), d, ["a2v", "v2a"].index(r) if r in ("a2v", "v2a") else 2, r,
            0 if proto == "clean" else 1, proto)


def tables(rows, metric: str = "test_acc", paper: dict | None = None) -> str:
    """The Markdown report of ``rows`` (from ``load_runs``)."""
    teacher_metric = "teacher_test_acc" if metric == "test_acc" else "teacher_val_acc"
    what = "test" if metric == "test_acc" else "validation"
    out = []
    for reg in sorted({reg for reg, _ in rows}):
        recs = [r for g, r in rows if g == reg]
        cols = sorted({(r["dataset"], r["direction"], r["protocol"]) for r in recs}, key=_col_order)
        both = len({c[2] for c in cols}) > 1
        on_test = {(r["dataset"], r["direction"], r["protocol"]) for r in recs if r.get("model_selection") == "test"}
        cells = OrderedDict()
        teachers = {}
        for r in recs:
            col = (r["dataset"], r["direction"], r["protocol"])
            cells.setdefault(row_key(r), {}).setdefault(col, []).append(r.get(metric))
            if r.get(teacher_metric) is not None:  # one teacher per (dataset, direction, protocol, seed)
                teachers.setdefault(col, {}).setdefault(r["seed"], r[teacher_metric])
        if teachers:
            cells[("teacher", None, None)] = {c: list(v.values()) for c, v in teachers.items()}
        header = ["method"]
        for d, r, proto in cols:
            name = f"{DATASET_NAMES.get(d, d)} {DIRECTION_NAMES.get(r, r)}"
            if both:
                name += f" ({proto})"
            if (d, r, proto) in on_test:
                name += " †"
            header += [name, "paper"] if paper is not None else [name]
        lines = [f"## {_regime_label(reg)}", "",
                 f"Student {what} accuracy (%), mean ± sample std over seeds (n = seeds); teacher: its own "
                 f"modality's {what} accuracy.", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        used = OrderedDict()
        for key in sorted(cells, key=_order):
            line = [_label(key)]
            for col in cols:
                vals = cells[key].get(col)
                line.append(format_mean_std(vals, with_n=True) if vals else DASH)
                if paper is not None:
                    found = paper_value(paper, key[0], col[0], col[1], reg)
                    line.append(found[0] if found else DASH)
                    if found:
                        used.setdefault(found[1], set()).add(key[0])
            lines.append("| " + " | ".join(line) + " |")
        if on_test:
            lines += ["", "† selected on the TEST split (train.model_selection=test, as the official release): each "
                          "seed's epoch was chosen by test accuracy, so these test figures are optimistic."]
        if paper is not None:
            src = "; ".join(f"{t} ({', '.join(sorted(m))})" for t, m in used.items()) or "none for this regime"
            lines += ["", f"Paper values: {src}."]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main(argv=None):
    args = parse_args(argv)
    rows, notes = load_runs(args.runs)
    paper = None
    if args.paper:
        paper = read_json(args.paper, "the paper's tables")
    text = (f"# Results ({', '.join(args.runs)})\n\n" + tables(rows, args.metric, paper) + "\n"
            + ("".join(f"\n- {n}" for n in notes) + "\n" if notes else ""))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    return text


if __name__ == "__main__":
    sys.exit(cli.run(main))
