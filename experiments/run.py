#!/usr/bin/env python
"""Run UCMKD and baselines: pre-train a teacher, distil students, write a results table.

    python experiments/run.py                          # embedded synthetic demo (CPU, minutes)
    python experiments/run.py --dataset crema_d --data-dir DIR --direction both --seeds 5
    python experiments/run.py --dataset arrays --teacher-data T.npz --student-data S.npz  # your own data

--dataset arrays distils between two labelled array datasets that were never collected together:
each .npz holds x_train, y_train and optionally x_val, y_val, x_test, y_test (labels 0..K-1, the
same K in both). x is (N, D) vectors (MLP encoder), (N, H, W, C) images or spectrograms (ResNet;
small-input stem below 64 px) or (N, T, H, W, C) frame stacks; the two sides share only the latent
size (--latent-dim, default 512).

Writes into --out (default runs/<dataset>): config.json (the resolved config), results.json
(a list of records), results.md (mean ± std table), history/*.json (per-epoch metrics),
curves.png (validation accuracy per epoch), logs/ (per-epoch JSON lines, and TensorBoard events
under logs/tb: `tensorboard --logdir OUT/logs/tb`), teachers/ (Orbax checkpoints, reused by later
runs) and checkpoints/ (each student run's state after every epoch, and its best-by-validation
variables). Rerunning the same command with the same --out skips the (direction, method, seed)
runs already in results.json and resumes the run in progress from its last finished epoch, with
the same final result as an uninterrupted run (SIGINT, SIGKILL or a lost machine alike).

On a multi-host job (SLURM with several tasks, a TPU pod slice) every host runs this same command;
batches are sharded over all devices and only process 0 writes the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucmkd_jax.config import get_preset, to_dict  # noqa: E402
from ucmkd_jax import api  # noqa: E402
from ucmkd_jax.data.arrays import load_arrays  # noqa: E402
from ucmkd_jax.data import DATASETS  # noqa: E402
from ucmkd_jax.data.regimes import REGIMES  # noqa: E402
from ucmkd_jax.parallel import maybe_initialize_distributed  # noqa: E402
from ucmkd_jax.experiment import run_experiment, summarize  # noqa: E402
from ucmkd_jax.losses.feature_alignment import COSTS  # noqa: E402
from ucmkd_jax.methods import METHODS  # noqa: E402
from ucmkd_jax.models import BACKBONES as ARRAY_BACKBONES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--dataset", default="synthetic", choices=DATASETS + ("arrays",))
    a("--data-dir", default=None, help="prepared TFRecord shards (real datasets)")
    a("--direction", default=None, choices=["a2v", "v2a", "both"], help="a2v: audio teacher -> video student")
    a("--methods", default=None, help=f"comma list of: {', '.join(sorted(METHODS))}")
    a("--seeds", type=int, default=None, help="number of seeds (preset: 3 synthetic, 5 real)")
    a("--first-seed", type=int, default=None)
    a("--unpaired", default=None, choices=list(REGIMES),
      help="distillation regime (Appendix G): easy = independent teacher stream (default), medium = disjoint "
           "pools, hard = disjoint + teacher-side noise and label imbalance, paired = partner batches")
    a("--subsample", type=float, default=None, help="fraction of the train splits kept, e.g. 0.5 (Tables 3-5)")
    a("--stream", default=None, action=argparse.BooleanOptionalAction,
      help="real datasets: stream train batches from the shards with fresh random frames and flips every "
           "epoch (default), or --no-stream: load them into memory once")
    a("--image-size", type=int, default=None, help="video crop side (224 in the protocol)")
    a("--epochs", type=int, default=None)
    a("--teacher-epochs", type=int, default=None)
    a("--batch-size", type=int, default=None)
    a("--eval-batch-size", type=int, default=None, help="evaluation batch (padded: one compiled shape; default 256)")
    a("--lr", type=float, default=None)
    a("--hypergrad", default=None, choices=["first_order", "unrolled"])
    a("--hvp", default=None, choices=["forward_over_reverse", "reverse_over_reverse"],
      help="how the unrolled hypergradient differentiates the FA steps (same number; forward is faster)")
    a("--inner-opt", default=None, choices=["adamw", "sgd"])
    a("--la-grad", default=None, choices=["head", "full"])
    a("--lambda-fa", type=float, default=None)
    a("--lambda-la", type=float, default=None)
    a("--n1", type=int, default=None)
    a("--n2", type=int, default=None)
    a("--cost", default=None, choices=COSTS, help="FA transport cost")
    a("--epsilon", type=float, default=None, help="FA entropic regularisation")
    a("--sinkhorn-iters", type=int, default=None)
    a("--backbone", default=None, choices=["resnet18", "resnet34", "resnet50"])
    a("--width", type=int, default=None, help="first-stage channels (64 = paper)")
    a("--dtype", default=None, choices=["float32", "bfloat16"])
    a("--out", default=None, help="output directory (default runs/<dataset>)")
    a("--teacher-cache", default=None, help="pre-trained teachers, shared by runs of equal teacher settings "
                                             "(default OUT/teachers)")
    a("--fresh", action="store_true", help="ignore results already in --out")
    a("--no-progress", action="store_true")
    g = p.add_argument_group("--dataset arrays (bring your own modalities)").add_argument
    g("--teacher-data", default=None, help="teacher modality .npz (x_train, y_train[, x_val, y_val, x_test, y_test])")
    g("--student-data", default=None, help="student modality .npz (same layout, same labels 0..K-1)")
    g("--teacher-backbone", default="auto", choices=("auto",) + ARRAY_BACKBONES,
      help="auto: mlp for (N, D) vectors, else --backbone (resnet18)")
    g("--student-backbone", default="auto", choices=("auto",) + ARRAY_BACKBONES)
    g("--latent-dim", type=int, default=None, help=f"latent size shared by both sides (default {api.DEFAULT_LATENT_DIM})")
    g("--mlp-depth", type=int, default=None, help="layers of the MLP encoder of vectors (default 2)")
    g("--num-classes", type=int, default=None, help="K, if a class has no samples on one side (default: 1 + max label)")
    args = p.parse_args(argv)
    arrays_flags = [f for f in ("teacher_data", "student_data", "latent_dim", "mlp_depth", "num_classes")
                    if getattr(args, f) is not None] + [f for f in ("teacher_backbone", "student_backbone")
                                                         if getattr(args, f) != "auto"]
    if args.dataset != "arrays" and arrays_flags:
        p.error(f"--{arrays_flags[0].replace('_', '-')} only applies to --dataset arrays")
    if args.dataset == "arrays":
        if not (args.teacher_data and args.student_data):
            p.error("--dataset arrays needs --teacher-data T.npz and --student-data S.npz")
        if args.direction is not None:
            p.error("--direction does not apply to --dataset arrays (the teacher is --teacher-data)")
    return args


def resolve_config(args):
    """Preset for --dataset, then every flag that was given."""
    cfg = api.arrays_config() if args.dataset == "arrays" else get_preset(args.dataset)
    rep = dataclasses.replace
    top = {k: v for k, v in dict(data_dir=args.data_dir, direction=args.direction, seeds=args.seeds,
                                 first_seed=args.first_seed, unpaired=args.unpaired,
                                 subsample=args.subsample, streaming=args.stream,
                                 image_size=args.image_size).items() if v is not None}
    if args.methods:
        top["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    train = {k: v for k, v in dict(epochs=args.epochs, teacher_epochs=args.teacher_epochs,
                                   batch_size=args.batch_size, eval_batch_size=args.eval_batch_size).items()
             if v is not None}
    model = {k: v for k, v in dict(backbone=args.backbone, width=args.width, dtype=args.dtype).items() if v is not None}
    method = {k: v for k, v in dict(hypergrad=args.hypergrad, hvp=args.hvp, inner_opt=args.inner_opt, la_grad=args.la_grad,
                                    lambda_fa=args.lambda_fa, lambda_la=args.lambda_la, n1=args.n1,
                                    n2=args.n2).items() if v is not None}
    fa = {k: v for k, v in dict(cost=args.cost, epsilon=args.epsilon, num_iterations=args.sinkhorn_iters).items()
          if v is not None}
    return rep(cfg, **top, train=rep(cfg.train, **train), model=rep(cfg.model, **model),
               optim=rep(cfg.optim, **({"lr": args.lr} if args.lr is not None else {})),
               method=rep(cfg.method, **method, fa=rep(cfg.method.fa, **fa)))


def _comparable(cfg_dict):
    # Seeds and methods may grow between reruns; everything else must match to reuse results.
    return {k: v for k, v in cfg_dict.items() if k not in ("methods", "seeds", "first_seed")}


def plot_curves(out, histories):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    directions = sorted({d for d, _, _ in histories})
    fig, axes = plt.subplots(1, len(directions), figsize=(6 * len(directions), 4), squeeze=False)
    for ax, d in zip(axes[0], directions):
        for m in sorted({m for dd, m, _ in histories if dd == d}):
            runs = [h for dd, mm, h in histories if dd == d and mm == m]
            n = min(len(h) for h in runs)
            acc = 100 * np.array([[e["val_acc"] for e in h[:n]] for h in runs])
            x = np.arange(1, n + 1)
            ax.plot(x, acc.mean(0), label=f"{m} (n={len(runs)})")
            ax.fill_between(x, acc.min(0), acc.max(0), alpha=0.15)
        ax.set(title=f"student validation accuracy, {d}", xlabel="epoch", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)


def arrays_setup(args, cfg):
    """--dataset arrays: load and check both files and build both models (nothing is compiled).
    Returns (dataset, teacher, student, the description written to config.json)."""
    dataset = load_arrays(args.teacher_data, args.student_data, num_classes=args.num_classes)
    teacher, student = api.build_array_models(
        dataset, teacher_backbone=args.teacher_backbone, student_backbone=args.student_backbone,
        resnet=cfg.model.backbone, width=cfg.model.width, stem=cfg.model.stem, dtype=cfg.model.dtype,
        latent_dim=api.DEFAULT_LATENT_DIM if args.latent_dim is None else args.latent_dim,
        mlp_depth=2 if args.mlp_depth is None else args.mlp_depth)
    api.check_run(cfg, dataset, teacher, student, cfg.methods)
    return dataset, teacher, student, api.describe_arrays(dataset, teacher, student)


def main(argv=None):
    args = parse_args(argv)
    maybe_initialize_distributed()  # a SLURM / TPU-pod job: one process per host
    cfg = resolve_config(args)
    if (args.stream or args.image_size) and cfg.dataset in ("synthetic", "arrays"):
        sys.exit(f"error: --stream and --image-size apply to prepared real datasets, not --dataset {cfg.dataset}")
    arrays = arrays_setup(args, cfg) if cfg.dataset == "arrays" else None  # bad input stops here
    out = args.out or os.path.join("runs", cfg.dataset)
    os.makedirs(os.path.join(out, "history"), exist_ok=True)
    cfg_dict = to_dict(cfg)
    if arrays is not None:
        cfg_dict["arrays"] = arrays[3]
    results_path, config_path = os.path.join(out, "results.json"), os.path.join(out, "config.json")
    records = []
    if os.path.exists(results_path) and not args.fresh:
        with open(config_path) as f:
            old = json.load(f)
        if _comparable(old) != _comparable(cfg_dict):
            sys.exit(f"error: {out} holds results of a different configuration (see {config_path}); "
                     f"use another --out, or --fresh to discard them")
        with open(results_path) as f:
            records = json.load(f)
        print(f"resuming: {len(records)} finished run(s) found in {results_path}")
    with open(config_path, "w") as f:
        json.dump(cfg_dict, f, indent=2)
    done = {(r["direction"], r["method"], r["seed"]) for r in records}

    primary = jax.process_index() == 0

    def on_record(record, history):
        records.append(record)
        if not primary:
            return
        name = f"{record['direction']}_{record['method']}_seed{record['seed']}.json"
        with open(os.path.join(out, "history", name), "w") as f:
            json.dump(history, f, indent=1)
        tmp = results_path + ".tmp"
        with open(tmp, "w") as f:  # atomic: an interrupt never leaves a torn results.json
            json.dump(records, f, indent=2)
        os.replace(tmp, results_path)

    if arrays is not None:
        api.run_with_models(cfg, *arrays[:3], out_dir=out, done=done, on_record=on_record,
                            progress=not args.no_progress)
    else:
        run_experiment(cfg, out_dir=out, done=done, on_record=on_record, progress=not args.no_progress,
                       teacher_cache=args.teacher_cache)
    wanted = [r for r in records if r["method"] in cfg.methods
              and cfg.first_seed <= r["seed"] < cfg.first_seed + cfg.seeds]
    table = summarize(wanted)
    header = (f"# {cfg.dataset}: {', '.join(cfg.methods)} (regime {cfg.unpaired}, subsample {cfg.subsample:g}, "
              f"hypergrad={cfg.method.hypergrad}, cost={cfg.method.fa.cost}, {cfg.train.epochs} epochs, "
              f"{cfg.seeds} seed(s))\n\n"
              "Student accuracy at the epoch with the best validation accuracy; mean ± std over seeds.\n\n")
    if arrays is not None:
        header += "".join(f"- {n}\n" for n in arrays[0].notices) + ("\n" if arrays[0].notices else "")
    if not primary:
        return wanted
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(header + table + "\n")
    histories = []
    for r in wanted:
        with open(os.path.join(out, "history", f"{r['direction']}_{r['method']}_seed{r['seed']}.json")) as f:
            histories.append((r["direction"], r["method"], json.load(f)))
    plot_curves(out, histories)
    print("\n" + table)
    print(f"\nwrote {results_path}, {os.path.join(out, 'results.md')}, {os.path.join(out, 'curves.png')}")
    return wanted


if __name__ == "__main__":
    main()
