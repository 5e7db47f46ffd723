#!/usr/bin/env python
"""Bound tightness (paper Figure 3; Theorems 2.6 and 2.7): the terms of the bound against the
student's actual test cross-entropy, for teacher/student pairs trained here.

    python experiments/bound.py                                    # synthetic, ce,feature_kd,ucmkd, 3 seeds
    python experiments/bound.py --seeds 1 --epochs 2 --teacher-epochs 2 --out /tmp/bound_demo --no-progress
    python experiments/bound.py --dataset crema_d --data-dir DIR --direction both --seeds 5

For every direction, seed and method (--methods, default ce,feature_kd,ucmkd), it runs the same
protocol as experiments/run.py (ucmkd_jax.experiment.run_experiment: the teacher pre-trained or
restored from OUT/teachers/<direction>/<key> or --teacher-cache, the same --subsample and
--unpaired data, per-epoch student checkpoints under OUT/checkpoints), then, in its hook on each
finished student, extracts test features (test splits stay whole) and evaluates
(ucmkd_jax/bound.py has the maths and the proofs):

  err_T   the teacher's test cross-entropy on its own modality.
  FA_e    tau * W_delta(student test features, teacher test features), Eq. 10, the smaller of
          delta = l2 and delta = l1. tau = max_{i != j} ||w_i - w_j||_* over the columns of the
          teacher head's kernel (dual norm of delta): the exact sup of the gradient norm of the
          teacher-head CE over all features and label distributions, so a global, never
          underestimated Lipschitz constant (<= sqrt(2) ||W||_2, also reported; the largest
          empirical ratio over random test-feature pairs, a lower bound, is reported beside it).
          W: Sinkhorn (OTT) at epsilon = --ot-epsilon x mean cost, the plan rounded onto the exact
          marginals, so the value is an upper bound of the exact W_1.
          Cosine/angular costs (which the FA loss may train with) give the CE no finite tau.
  LA_e    Eq. 9 on the student test split, kappa_i = p_T(y_i | z_i) (Appendix D).
  Theorem 2.7, computable terms (probability >= 1 - 3 delta, --delta):
          tau sqrt(log(2/delta)/2) (1/sqrt(n_S) + 1/sqrt(n_T)) as printed (its McDiarmid step
          assumes a support of diameter 1; the diameter-scaled value is in the JSON), and the LA
          generalisation term 2 C3 sqrt(2 log Pi(n_S)/n_S) + C3 sqrt(log(1/delta)/(2 n_S))
          (Eq. 51, Sauer with the e of Eq. 50) with ASSUMED constants: C3 = max_i |f_i| on the
          test split (an estimate, not a proven bound) and d = --vc-dim (default "head": the
          student head's (latent + 1) K parameters, i.e. the encoder treated as fixed; the value
          with d = all student parameters is in the JSON too).
          Not computable: O(n_S^(-1/s1)) + O(n_T^(-1/s2)) (unknown C1, C2, Wasserstein dimensions).
  actual  the student's test cross-entropy (and accuracy).

Writes OUT/bound.json (config, settings, per-run records, per (direction, method) means),
OUT/bound.png (stacked err_T + FA_e + LA_e [+ hatched Theorem 2.7 terms] next to the actual CE,
per method) and OUT/bound.md (also printed). Reruns skip the (direction, method, seed) runs
already in bound.json. Other flags: experiments/run.py's (--lambda-fa, --epochs, --width, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import run as run_cli  # noqa: E402
from ucmkd_jax import bound, cli, results  # noqa: E402
from ucmkd_jax.config import to_dict  # noqa: E402
from ucmkd_jax.data import eval_batches, roles  # noqa: E402
from ucmkd_jax.experiment import expand_directions, load_experiment_dataset, run_experiment  # noqa: E402
from ucmkd_jax.parallel import maybe_initialize_distributed  # noqa: E402

DEFAULT_METHODS = "ce,feature_kd,ucmkd"
TERMS = ("err_t", "fa_e", "la_e", "w_concentration", "la_generalisation", "bound_thm26", "bound_thm27",
         "student_ce", "student_test_acc", "tau", "w")
# What bound.json and bound.md say about how each term was computed.
NOTES = [
    "tau: max_{i != j} ||w_i - w_j||_* over the teacher head's kernel columns (dual norm of the metric): "
    "the sup over features and label distributions of the gradient norm of the teacher-head CE, a global "
    "Lipschitz constant (never below the true one); spectral_tau_l2 = sqrt(2)||W||_2 is looser; "
    "fa_by_cost.*.tau_empirical_max_ratio is the largest ratio on 4096 random test-feature pairs (a lower "
    "bound).",
    "W: OTT Sinkhorn, epsilon = ot_epsilon_relative x mean cost (annealed from 100x), plan rounded onto the "
    "exact uniform marginals (Altschuler et al. 2017): <P, C> >= exact W_1.",
    "FA_e = min over delta in {l2, l1} of tau_delta W_delta (Eq. 10 over a two-element Delta).",
    "LA_e: Eq. 9 with kappa_i = p_T(y_i | z_i) (Appendix D), so LA_e = student CE - "
    "mean_i(-kappa_i log kappa_i).",
    "Theorem 2.7 terms computed: w_concentration (as printed, i.e. support diameter 1; "
    "w_concentration_diameter_scaled uses the empirical diameter) and la_generalisation (Eq. 51 with the e of "
    "Eq. 50; C3 = max_i |f_i| on the test split, an estimate; d = vc_dims[vc_dim_used]). Not computed: "
    "O(n_S^-1/s1) + O(n_T^-1/s2) (unknown constants and Wasserstein dimensions), so bound_thm27 omits them.",
    "err_T and all terms are evaluated on the test splits (n_S student, n_T teacher test samples).",
]



def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=False)
    a = p.add_argument
    a("--delta", type=float, default=0.05, help="Theorem 2.7 holds with probability >= 1 - 3 delta (default 0.05)")
    a("--ot-epsilon", type=float, default=1e-3, help="Sinkhorn epsilon relative to the mean cost (default 1e-3)")
    a("--ot-iterations", type=int, default=20_000)
    a("--ot-threshold", type=float, default=1e-4)
    a("--vc-dim", default="head", help='VC dimension d of Theorem 2.7: "head" ((latent+1) K) or an integer')
    if "-h" in argv or "--help" in argv:
        p.print_help()
        print("\nAll other flags are experiments/run.py's:\n")
        run_cli.parse(["--help"])
    args, rest = p.parse_known_args(argv)
    if not 0.0 < args.delta < 1.0 / 3.0:
        p.error(f"--delta must be in (0, 1/3), got {args.delta}")
    if args.vc_dim != "head" and not (args.vc_dim.isdigit() and int(args.vc_dim) > 0):
        p.error(f'--vc-dim must be "head" or a positive integer, got {args.vc_dim!r}')
    run_args, cfg = run_cli.parse(rest)
    if cfg.dataset == "arrays":
        p.error("bound.py runs registered datasets (not --dataset arrays)")
    if "methods" not in run_cli.given_paths(run_args):
        cfg = dataclasses.replace(cfg, methods=tuple(DEFAULT_METHODS.split(",")))
    return args, run_args, cfg


def make_featurizer(model):
    @jax.jit
    def featurize(variables, x):
        logits, z, _ = model.apply(variables, x, train=False)
        return z, logits
    return featurize


def features(featurize, variables, split, batch_size):
    """(z (n, d), logits (n, K)) float64 numpy over a split, in inference mode."""
    zs, ls = [], []
    for x, _, mask in eval_batches(split, batch_size):
        z, logits = featurize(variables, x)
        k = int(mask.sum())
        zs.append(np.asarray(z, np.float64)[:k])
        ls.append(np.asarray(logits, np.float64)[:k])
    return np.concatenate(zs), np.concatenate(ls)


def _mean_ce(logits, y):
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _count(params):
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _flat(record):
    """The plotted / tabulated scalars of a record."""
    fs = record["finite_sample"]
    return dict(err_t=record["err_t"], fa_e=record["fa_e"], la_e=record["la_e"],
                w_concentration=fs["w_concentration"],
                la_generalisation=fs["la_generalisation"][record["vc_dim_used"]],
                bound_thm26=record["bound_thm26"], bound_thm27=record["bound_thm27"],
                student_ce=record["student_test_ce"], student_test_acc=record["student_test_acc"],
                tau=record["tau"], w=record["w"])


def summarize(records, directions, methods):
    out = []
    for d in directions:
        for m in methods:
            rs = [_flat(r) for r in records if r["direction"] == d and r["method"] == m]
            if rs:
                row = {"direction": d, "method": m, "n": len(rs)}
                for k in TERMS:
                    row[k] = float(np.mean([r[k] for r in rs]))
                row["gap_thm26"] = row["bound_thm26"] - row["student_ce"]
                row["gap_thm27"] = row["bound_thm27"] - row["student_ce"]
                out.append(row)
    return out


def table(summary, dataset) -> str:
    lines = [f"# Bound tightness on {dataset} (test split; means over seeds; nats)", "",
             "| direction | method | n | err_T | τ | W | FA_e | LA_e | Thm 2.6 bound | W conc. | LA gen. "
             "| Thm 2.7 bound (computable part) | actual student CE | gap 2.6 | student acc (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(f"| {results.DIRECTION_NAMES.get(r['direction'], r['direction'])} | {r['method']} | {r['n']} | "
                     f"{r['err_t']:.3f} | {r['tau']:.3f} | {r['w']:.3f} | {r['fa_e']:.3f} | {r['la_e']:.3f} | "
                     f"{r['bound_thm26']:.3f} | {r['w_concentration']:.3f} | {r['la_generalisation']:.3f} | "
                     f"{r['bound_thm27']:.3f} | {r['student_ce']:.3f} | {r['gap_thm26']:.3f} | "
                     f"{100 * r['student_test_acc']:.2f} |")
    return "\n".join(lines)


def plot(path, summary, dataset):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directions = list(dict.fromkeys(r["direction"] for r in summary))
    fig, axes = plt.subplots(1, len(directions), figsize=(2.2 * max(len(summary) // len(directions), 1) + 3.5
                                                          * len(directions), 4.6), squeeze=False)
    parts = [("err_t", "err_T (teacher CE)", "tab:blue", None), ("fa_e", "FA_e = τ·W", "tab:orange", None),
             ("la_e", "LA_e", "tab:green", None),
             ("w_concentration", "Thm 2.7: W concentration", "tab:orange", "//"),
             ("la_generalisation", "Thm 2.7: LA generalisation", "tab:green", "//")]
    for ax, d in zip(axes[0], directions):
        rows = [r for r in summary if r["direction"] == d]
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for key, label, color, hatch in parts:
            h = np.array([r[key] for r in rows])
            ax.bar(x - 0.2, h, 0.38, bottom=bottom, color=color, alpha=0.45 if hatch else 0.9,
                   hatch=hatch, edgecolor="black" if hatch else color, linewidth=0.5, label=label)
            bottom = bottom + h
        ax.bar(x + 0.2, [r["student_ce"] for r in rows], 0.38, color="tab:red", label="actual student CE")
        for i, r in enumerate(rows):
            ax.plot([i - 0.39, i - 0.01], [r["bound_thm26"]] * 2, color="black", lw=1.5)
            ax.text(i - 0.2, r["bound_thm26"], f"2.6: {r['bound_thm26']:.2f}", ha="center", va="bottom", fontsize=8)
            ax.text(i - 0.2, r["bound_thm27"], f"2.7: {r['bound_thm27']:.2f}", ha="center", va="bottom", fontsize=8)
            ax.text(i + 0.2, r["student_ce"], f"{r['student_ce']:.2f}", ha="center", va="bottom", fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(x, [f"{r['method']}\n(n={r['n']})" for r in rows])
        ax.set(title=f"{dataset} {results.DIRECTION_NAMES.get(d, d)}: bound vs actual (test)",
               ylabel="cross-entropy (nats)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.text(0.01, 0.01, "left bar: Thm 2.6 terms stacked (black line = Thm 2.6 bound), hatched = Thm 2.7 "
             "computable finite-sample terms; right bar: the student's actual test CE", fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None, dataset=None):
    """Run it. ``dataset``: a ``CrossModalDataset`` to use instead of loading --dataset. Returns
    the bound.json content."""
    args, run_args, cfg = parse_args(argv)
    maybe_initialize_distributed()  # a multi-host job: every host trains, process 0 writes
    out = run_args.out or os.path.join("runs", f"{cfg.dataset}_bound")
    os.makedirs(out, exist_ok=True)
    with results.OutputLock(out):
        cfg_dict = to_dict(cfg)
        settings = {"delta": args.delta, "ot_epsilon_relative": args.ot_epsilon, "ot_iterations": args.ot_iterations,
                    "ot_threshold": args.ot_threshold, "vc_dim": args.vc_dim, "split": "test",
                    "costs": ["l2", "l1"]}
        path = os.path.join(out, "bound.json")
        state = {"config": cfg_dict, "settings": settings, "notes": NOTES, "records": [], "summary": []}
        if os.path.exists(path) and not run_args.fresh:
            old = results.read_json(path, "the finished runs")
            results.check_resumable(dict(old["config"], bound=old["settings"]), dict(cfg_dict, bound=settings), out,
                                    path, "bound results")
            state["records"] = old["records"]
            print(f"resuming: {len(state['records'])} finished run(s) found in {path}")
        done = {(r["direction"], r["method"], r["seed"]) for r in state["records"]}
        directions = expand_directions(cfg.direction)
        seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
        if any((d, m, s) not in done for d in directions for m in cfg.methods for s in seeds):
            # in memory (no streaming): the bound's pools and test features are arrays
            dataset = dataset if dataset is not None else load_experiment_dataset(cfg, streaming=False)
            for direction in directions:
                t_data, s_data = roles(dataset, direction)
                if t_data.test is None or s_data.test is None:
                    raise ValueError(f"{dataset.name} {direction}: the bound is evaluated on test splits, and one is "
                                     f"missing")
            featurizers, teacher_terms = {}, {}
            bs = cfg.train.eval_batch_size

            def on_run(run):
                """The bound terms of one finished student (``run_experiment``'s hook)."""
                data, r = run.seed_data, run.record
                for model in (data.teacher_model, run.student):
                    featurizers.setdefault(model, make_featurizer(model))
                key = (data.direction, data.seed)
                if key not in teacher_terms:  # the teacher's test features, once per seed
                    z_t, t_logits = features(featurizers[data.teacher_model], data.teacher_variables, data.teacher.test,
                                             bs)
                    teacher_terms[key] = (z_t, _mean_ce(t_logits, data.teacher.test.y))
                z_t, err_t = teacher_terms[key]
                s_test = data.student.test
                z_s, s_logits = features(featurizers[run.student], run.result.variables, s_test, bs)
                vc_dims = {"head": (z_s.shape[1] + 1) * dataset.num_classes,
                           "student_params": _count(run.result.variables["params"])}
                if args.vc_dim != "head":
                    vc_dims = {"given": int(args.vc_dim), **vc_dims}
                head = data.teacher_variables["params"]["head"]
                terms = bound.bound_terms(
                    teacher_kernel=np.asarray(head["kernel"]), teacher_bias=np.asarray(head["bias"]),
                    z_s=z_s, y_s=s_test.y, student_logits=s_logits, z_t=z_t, err_t=err_t,
                    delta=args.delta, vc_dims=vc_dims, epsilon=args.ot_epsilon,
                    max_iterations=args.ot_iterations, threshold=args.ot_threshold, seed=data.seed)
                record = {"dataset": r["dataset"], "direction": r["direction"], "method": r["method"],
                          "seed": r["seed"], "unpaired": cfg.unpaired, "subsample": cfg.subsample,
                          "student_test_acc": r["test_acc"], "student_test_ce": r["test_ce"],
                          "student_val_acc": r["val_acc"], "best_epoch": r["best_epoch"],
                          "teacher_test_acc": r["teacher_test_acc"],
                          "teacher_test_ce_evaluate": data.teacher_info.get("teacher_test_ce"),
                          "vc_dim_used": next(iter(vc_dims)), **terms,
                          "gap_thm26": terms["bound_thm26"] - r["test_ce"], "wall_s": r["wall_s"]}
                if not math.isclose(terms["student_ce"], r["test_ce"], rel_tol=1e-3, abs_tol=1e-4):
                    raise AssertionError(f"student CE from features ({terms['student_ce']}) != evaluate "
                                         f"({r['test_ce']})")
                state["records"].append(record)
                results.write_json(path, state, indent=1)
                print(f"{r['direction']} {r['method']} seed {r['seed']}: err_T {err_t:.3f} + FA_e {terms['fa_e']:.3f} "
                      f"+ LA_e {terms['la_e']:.3f} = {terms['bound_thm26']:.3f} >= actual CE {r['test_ce']:.3f}?"
                      f" {terms['bound_thm26'] >= r['test_ce']}")

            run_experiment(cfg, dataset, out_dir=out, done=done, on_run=on_run, progress=not run_args.no_progress,
                           teacher_cache=run_args.teacher_cache)
        wanted = [r for r in state["records"] if r["method"] in cfg.methods and r["direction"] in directions
                  and r["seed"] in seeds]
        state["summary"] = summarize(wanted, directions, cfg.methods)
        results.write_json(path, state, indent=1)
        text = table(state["summary"], cfg.dataset)
        results.write_text(os.path.join(out, "bound.md"), text + "\n\n" + "\n".join(f"- {n}" for n in NOTES) + "\n")
        if results.is_primary():
            plot(os.path.join(out, "bound.png"), state["summary"], cfg.dataset)
        print("\n" + text)
        print(f"\nwrote {path}, {os.path.join(out, 'bound.md')}, {os.path.join(out, 'bound.png')}")
        return state


if __name__ == "__main__":
    sys.exit(cli.run(main))
