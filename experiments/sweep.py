#!/usr/bin/env python
"""The lambda_1 x lambda_2 sensitivity grid of UCMKD (paper Figure 2).

    python experiments/sweep.py                                   # synthetic, {0.2,...,1.0}^2, 3 seeds
    python experiments/sweep.py --lambdas-fa 0.5,1.0 --lambdas-la 0.5,1.0 --seeds 1 --epochs 2 \\
        --teacher-epochs 2 --out /tmp/sweep_demo --no-progress    # a 2x2 mini-sweep (CPU, minutes)
    python experiments/sweep.py --dataset ravdess --data-dir DIR --direction both --seeds 5   # Figure 2

Every cell (lambda_FA = lambda_1, the inner feature-alignment weight; lambda_LA = lambda_2, the
inner label-alignment weight) trains --methods (default ucmkd; one method) for every direction
and seed with ``ucmkd_jax.experiment.run_experiment``. All other flags are experiments/run.py's
(``python experiments/run.py --help``), except --lambda-fa / --lambda-la, which the grid sets.
Teachers are trained once per (direction, seed) and cached under OUT/teachers/<direction>/ (or
--teacher-cache), so all cells distil from the same teacher. Each cell runs in its own folder
OUT/cells/fa<a>_la<b> (run_experiment's per-epoch student checkpoints and logs, keyed by
direction/method/seed only; its teachers/ is a link to OUT/teachers), so an interrupted cell
resumes mid-run even if the grid changes in between.

Writes into --out (default runs/<dataset>_sweep):
  sweep.json          per direction, per cell, per seed: the run's record (val_acc, test_acc, ...),
                      and per cell mean/std over seeds. Written atomically after every run;
                      rerunning the same command skips the (cell, direction, seed) runs it holds.
  heatmap_<dir>.png   mean test accuracy over seeds per cell (annotated), with a colour bar.
  sweep.md            the same grids as Markdown tables (also printed), with the cell that is best
                      by mean VALIDATION accuracy (choosing by test accuracy would be optimistic).
  results.json, config.json   the records with their lambda_fa / lambda_la (experiments/report.py
                      reads the folder like a run folder), the resolved config (lambdas: null).
  history/            per-epoch metrics of every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from experiments import run as run_cli  # noqa: E402
from ucmkd_jax import cli, experiment, results  # noqa: E402  (run_experiment is looked up at call time)
from ucmkd_jax.config import to_dict  # noqa: E402
from ucmkd_jax.parallel import maybe_initialize_distributed  # noqa: E402

DEFAULT_LAMBDAS = "0.2,0.4,0.6,0.8,1.0"


def _lambdas(text: str):
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of numbers, got {text!r}")
    if not vals or any(v < 0 for v in vals) or len(set(vals)) != len(vals):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative numbers, got {text!r}")
    return vals


def parse_args(argv=None):
    """(sweep args, experiments/run.py args, the resolved config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                add_help=False)
    p.add_argument("--lambdas-fa", type=_lambdas, default=_lambdas(DEFAULT_LAMBDAS),
                   help=f"lambda_1 values (default {DEFAULT_LAMBDAS})")
    p.add_argument("--lambdas-la", type=_lambdas, default=_lambdas(DEFAULT_LAMBDAS),
                   help=f"lambda_2 values (default {DEFAULT_LAMBDAS})")
    if "-h" in argv or "--help" in argv:
        p.print_help()
        print("\nAll other flags are experiments/run.py's:\n")
        run_cli.parse(["--help"])  # prints and exits
    args, rest = p.parse_known_args(argv)
    run_args, cfg = run_cli.parse(rest)
    if {"method.lambda_fa", "method.lambda_la"} & set(run_cli.given_paths(run_args)):
        p.error("--lambda-fa / --lambda-la (method.lambda_fa / method.lambda_la) are set by the grid: use "
                "--lambdas-fa / --lambdas-la")
    if cfg.dataset == "arrays":
        p.error("the sweep runs registered datasets (--dataset arrays: use experiments/run.py per cell)")
    return args, run_args, cfg


def cell_key(lambda_fa: float, lambda_la: float) -> str:
    return f"fa={lambda_fa:g},la={lambda_la:g}"


def _cell_dir(out: str, lambda_fa: float, lambda_la: float) -> str:
    """OUT/cells/fa<a>_la<b>: the cell's own run folder (student checkpoints and logs, which
    run_experiment keys by direction/method/seed only), with ``teachers`` linked to OUT/teachers
    so that every cell restores the same teachers."""
    cell = os.path.join(out, "cells", f"fa{lambda_fa:g}_la{lambda_la:g}")
    os.makedirs(cell, exist_ok=True)
    os.makedirs(os.path.join(out, "teachers"), exist_ok=True)
    link = os.path.join(cell, "teachers")
    if not os.path.lexists(link):
        try:
            os.symlink(os.path.join("..", "..", "teachers"), link)
        except FileExistsError:  # another process of a multi-host job made it first
            pass
    return cell


# The grid, seeds and directions may grow between reruns; everything else (the method too: a
# cell's records are keyed by direction and seed) must match.
_SWEPT = ("sweep", "method.lambda_fa", "method.lambda_la")
_GROWABLE = ("seeds", "first_seed", "direction")


def summarize_cell(cell: dict, seeds) -> dict:
    """Mean / sample std (None for one seed) over the wanted seeds, in %."""
    recs = [cell["seeds"][str(s)] for s in seeds if str(s) in cell["seeds"]]
    out = {}
    for metric in ("test_acc", "val_acc"):
        m, s, n = results.mean_std([r.get(metric) for r in recs])
        out.update({f"{metric}_mean": m, f"{metric}_std": s, f"{metric}_n": n})
    return out


def grid_matrix(cells: dict, lambdas_fa, lambdas_la, metric="test_acc"):
    """(len(lambdas_fa), len(lambdas_la)) array of the cells' mean ``metric`` (NaN: not run)."""
    out = np.full((len(lambdas_fa), len(lambdas_la)), np.nan)
    for i, a in enumerate(lambdas_fa):
        for j, b in enumerate(lambdas_la):
            v = cells.get(cell_key(a, b), {}).get(f"{metric}_mean")
            if v is not None:
                out[i, j] = v
    return out


def grid_table(cells: dict, lambdas_fa, lambdas_la, title: str) -> str:
    """Markdown: rows lambda_FA, columns lambda_LA, cells mean ± std (n) of the test accuracy."""
    lines = [f"## {title}", "", "| λ_FA \\ λ_LA | " + " | ".join(f"{b:g}" for b in lambdas_la) + " |",
             "|---|" + "---|" * len(lambdas_la)]
    for a in lambdas_fa:
        row = []
        for b in lambdas_la:
            c = cells.get(cell_key(a, b), {})
            m, s, n = c.get("test_acc_mean"), c.get("test_acc_std"), c.get("test_acc_n", 0)
            row.append("–" if m is None else f"{m:.2f} ± {s:.2f} (n={n})" if s is not None else f"{m:.2f} (n={n})")
        lines.append(f"| **{a:g}** | " + " | ".join(row) + " |")
    best = [(c["val_acc_mean"], a, b, c) for a in lambdas_fa for b in lambdas_la
            for c in [cells.get(cell_key(a, b), {})] if c.get("val_acc_mean") is not None]
    if best:
        v, a, b, c = max(best, key=lambda t: t[0])
        test = "n/a" if c.get("test_acc_mean") is None else f"{c['test_acc_mean']:.2f}"
        lines += ["", f"Best cell by mean validation accuracy: λ_FA={a:g}, λ_LA={b:g} "
                      f"(val {v:.2f}, test {test})."]
    return "\n".join(lines)


def plot_heatmap(path, matrix, lambdas_fa, lambdas_la, title, n_seeds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(lambdas_la) + 2.8, 1.0 * len(lambdas_fa) + 1.8))
    masked = np.ma.masked_invalid(matrix)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(masked, origin="lower", cmap=cmap, aspect="auto")
    finite = matrix[np.isfinite(matrix)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center",
                    color="black" if not np.isfinite(v) or v > mid else "white", fontsize=9)
    ax.set_xticks(range(len(lambdas_la)), [f"{b:g}" for b in lambdas_la])
    ax.set_yticks(range(len(lambdas_fa)), [f"{a:g}" for a in lambdas_fa])
    ax.set(xlabel="λ2 (label alignment, λ_LA)", ylabel="λ1 (feature alignment, λ_FA)",
           title=f"{title}\nmean student test accuracy (%), {n_seeds} seed(s)")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None, dataset=None):
    """Run the sweep. ``dataset``: a ``CrossModalDataset`` to use instead of loading --dataset
    (Python use). Returns the sweep.json content."""
    args, run_args, cfg = parse_args(argv)
    methods = tuple(cfg.methods) if "methods" in run_cli.given_paths(run_args) else ("ucmkd",)
    if len(methods) != 1:
        sys.exit(f"error: the sweep trains one method, got --methods {','.join(methods)}")
    maybe_initialize_distributed()  # a multi-host job: every host runs the grid, process 0 writes
    method = methods[0]
    cfg = dataclasses.replace(cfg, methods=(method,))
    out = run_args.out or os.path.join("runs", f"{cfg.dataset}_sweep")
    os.makedirs(os.path.join(out, "history"), exist_ok=True)
    with results.OutputLock(out):
        cfg_dict = to_dict(cfg)
        cfg_dict["method"]["lambda_fa"] = cfg_dict["method"]["lambda_la"] = None
        cfg_dict["sweep"] = {"lambdas_fa": args.lambdas_fa, "lambdas_la": args.lambdas_la}
        sweep_path = os.path.join(out, "sweep.json")
        state = {"config": cfg_dict, "method": method, "grid": {}}
        if os.path.exists(sweep_path) and not run_args.fresh:
            old = results.read_json(sweep_path, "the finished cells")
            results.check_resumable(old["config"], cfg_dict, out, sweep_path, "a sweep", also=_SWEPT,
                                    growable=_GROWABLE)
            state["grid"] = old["grid"]
            n = sum(len(c["seeds"]) for d in old["grid"].values() for c in d.values())
            print(f"resuming: {n} finished run(s) found in {sweep_path}")
        state["lambdas_fa"], state["lambdas_la"] = args.lambdas_fa, args.lambdas_la
        grid = state["grid"]
        directions = experiment.expand_directions(cfg.direction)
        seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)

        def save():
            results.write_json(sweep_path, state, indent=1)
            records = [r for d in grid.values() for c in d.values() for r in c["seeds"].values()]
            results.write_json(os.path.join(out, "results.json"), records)

        results.write_json(os.path.join(out, "config.json"), cfg_dict)
        todo = [(a, b) for a in args.lambdas_fa for b in args.lambdas_la
                if any(str(s) not in grid.get(d, {}).get(cell_key(a, b), {}).get("seeds", {})
                       for d in directions for s in seeds)]
        print(f"sweep of {method}: {len(args.lambdas_fa)} x {len(args.lambdas_la)} cells, "
              f"{len(directions)} direction(s), {cfg.seeds} seed(s); {len(todo)} cell(s) to run -> {out}")
        if todo and dataset is None:
            dataset = experiment.load_experiment_dataset(cfg)
        for k, (a, b) in enumerate(todo):
            key = cell_key(a, b)
            print(f"[{k + 1}/{len(todo)}] lambda_FA={a:g}, lambda_LA={b:g}")
            cell_cfg = dataclasses.replace(cfg, methods=(method,),
                                           method=dataclasses.replace(cfg.method, lambda_fa=a, lambda_la=b))
            done = {(d, method, s) for d in directions for s in seeds
                    if str(s) in grid.get(d, {}).get(key, {}).get("seeds", {})}

            def on_run(run, a=a, b=b, key=key):
                record = dict(run.record, lambda_fa=a, lambda_la=b)
                cell = grid.setdefault(record["direction"], {}).setdefault(
                    key, {"lambda_fa": a, "lambda_la": b, "seeds": {}})
                cell["seeds"][str(record["seed"])] = record
                cell.update(summarize_cell(cell, seeds))
                name = f"{record['direction']}_{method}_fa{a:g}_la{b:g}_seed{record['seed']}.json"
                results.write_json(os.path.join(out, "history", name), run.history, indent=1)
                save()

            experiment.run_experiment(cell_cfg, dataset, out_dir=_cell_dir(out, a, b), done=done, on_run=on_run,
                                      progress=not run_args.no_progress, teacher_cache=run_args.teacher_cache)
        for d in grid.values():  # summaries over the seeds asked for now
            for cell in d.values():
                cell.update(summarize_cell(cell, seeds))
        save()
        texts = []
        for d in directions:
            cells = grid.get(d, {})
            name = f"{cfg.dataset} {results.DIRECTION_NAMES.get(d, d)}"
            texts.append(grid_table(cells, args.lambdas_fa, args.lambdas_la,
                                    f"{method} on {name}: student test accuracy (%)"))
            if results.is_primary():
                plot_heatmap(os.path.join(out, f"heatmap_{d}.png"),
                             grid_matrix(cells, args.lambdas_fa, args.lambdas_la),
                             args.lambdas_fa, args.lambdas_la, f"{method}, {name}", cfg.seeds)
        text = (f"# λ sweep: {method} on {cfg.dataset} (regime {cfg.unpaired}, subsample {cfg.subsample:g}, "
                f"{cfg.train.epochs} epochs, {cfg.seeds} seed(s))\n\n"
                "Rows λ_FA (λ1, inner feature alignment), columns λ_LA (λ2, inner label alignment); "
                "mean ± sample std over seeds.\n\n" + "\n\n".join(texts) + "\n")
        results.write_text(os.path.join(out, "sweep.md"), text)
        print("\n" + text)
        print(f"wrote {sweep_path}, {os.path.join(out, 'sweep.md')}, "
              + ", ".join(os.path.join(out, f"heatmap_{d}.png") for d in directions))
        return state


if __name__ == "__main__":
    sys.exit(cli.run(main))
