#!/usr/bin/env python
"""Run UCMKD and baselines: pre-train a teacher, distil students, write a results table.

    python experiments/run.py                          # embedded synthetic demo (CPU, minutes)
    python experiments/run.py --dataset crema_d --data-dir DIR --direction both --seeds 5
    python experiments/run.py --dataset arrays --teacher-data T.npz --student-data S.npz  # your own data
    python experiments/run.py --set method.fa.epsilon=0.05 --set optim.momentum=0.8   # any config field
    python experiments/run.py --dataset crema_d --list-config                           # every field
    python experiments/run.py --dataset ave --data-dir DIR --preset vit_b_to_s --teacher-init B.pth \
        --student-init S.safetensors                                                    # Table 8 (ViTs)

Configuration: the preset of --dataset (ucmkd_jax/config.py, the paper's Table 12), then the
recipe of --preset if given (ucmkd_jax/recipes.py: the ViT tables 8 and 10), then --protocol
(ucmkd_jax/fidelity.py, docs/protocol.md: clean or authors), then the
short flags below (each an alias of one config field), then every --set PATH=VALUE in order.
Values are typed and checked by the config itself; --list-config prints every PATH, its type and
its resolved value.

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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ucmkd_jax import cli, results  # noqa: E402
from ucmkd_jax.config import ExperimentConfig, get_preset, to_dict  # noqa: E402
from ucmkd_jax.data.arrays import describe_arrays, load_arrays  # noqa: E402
from ucmkd_jax.experiment import build_models, check_run, expand_directions, run_experiment, summarize  # noqa: E402
from ucmkd_jax.models import describe_model  # noqa: E402
from ucmkd_jax.overrides import ConfigError, choices_of, describe_fields, set_field  # noqa: E402
from ucmkd_jax.parallel import maybe_initialize_distributed  # noqa: E402
from ucmkd_jax.fidelity import PROTOCOLS, apply_protocol  # noqa: E402
from ucmkd_jax.recipes import RECIPES, apply_recipe  # noqa: E402

# Short flags: each is an alias of one config field (type and choices come from the field).
ALIASES = {
    "--data-dir": ("data_dir", "prepared TFRecord shards (real datasets)"),
    "--direction": ("direction", "a2v: audio teacher -> video student; v2a; both"),
    "--methods": ("methods", "comma list of methods"),
    "--seeds": ("seeds", "number of seeds (preset: 3 synthetic, 5 real)"),
    "--first-seed": ("first_seed", None),
    "--unpaired": ("unpaired", "distillation regime (Appendix G): easy = independent teacher stream (default), "
                               "medium = disjoint pools, hard = disjoint + teacher-side noise and label imbalance, "
                               "paired = partner batches"),
    "--subsample": ("subsample", "fraction of the train splits kept, e.g. 0.5 (Tables 3-5)"),
    "--stream": ("streaming", "real datasets: stream train batches from the shards with fresh random frames and "
                              "flips every epoch (default), or --no-stream: load them into memory once"),
    "--image-size": ("image_size", "video crop side (224 in the protocol)"),
    "--epochs": ("train.epochs", None),
    "--teacher-epochs": ("train.teacher_epochs", None),
    "--batch-size": ("train.batch_size", None),
    "--eval-batch-size": ("train.eval_batch_size", "evaluation batch (padded: one compiled shape; default 256)"),
    "--precise-bn": ("train.precise_bn", "recompute the BatchNorm statistics over N training batches before each "
                                         "evaluation (default 20; 0: the running averages)"),
    "--lr": ("optim.lr", None),
    "--hypergrad": ("method.hypergrad", None),
    "--hvp": ("method.hvp", "how the unrolled hypergradient differentiates the FA steps (same number; forward is "
                            "faster)"),
    "--inner-opt": ("method.inner_opt", None),
    "--la-grad": ("method.la_grad", None),
    "--lambda-fa": ("method.lambda_fa", None),
    "--lambda-la": ("method.lambda_la", None),
    "--n1": ("method.n1", None),
    "--n2": ("method.n2", None),
    "--cost": ("method.fa.cost", "FA transport cost"),
    "--epsilon": ("method.fa.epsilon", "FA entropic regularisation"),
    "--sinkhorn-iters": ("method.fa.num_iterations", None),
    "--backbone": ("model.backbone", "encoder of image-like inputs, both sides"),
    "--teacher-backbone": ("model.teacher_backbone", "auto: --backbone, or mlp for (N, D) vectors"),
    "--student-backbone": ("model.student_backbone", None),
    "--width": ("model.width", "first-stage channels (64 = paper)"),
    "--dtype": ("model.dtype", None),
    "--latent-dim": ("model.latent_dim", "latent size shared by both sides (arrays default 512; else the "
                                         "encoders' own)"),
    "--mlp-depth": ("model.mlp_depth", "layers of the MLP encoder of vectors (default 2)"),
    "--teacher-init": ("model.teacher_init", "ViT checkpoint (torchvision .pth, timm .pth/.safetensors) the "
                                             "teacher starts from"),
    "--student-init": ("model.student_init", "ViT checkpoint the student starts from"),
    "--teacher-data": ("teacher_data", "--dataset arrays: teacher modality .npz (x_train, y_train[, x_val, "
                                       "y_val, x_test, y_test])"),
    "--student-data": ("student_data", "--dataset arrays: student modality .npz (same layout, same labels 0..K-1)"),
    "--num-classes": ("num_classes", "--dataset arrays: K, if a class has no samples on one side (default: 1 + "
                                     "max label)"),
}
_REAL_ONLY = ("--stream", "--image-size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = ExperimentConfig()
    p.add_argument("--dataset", default="synthetic", choices=choices_of(default, "dataset"))
    p.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS),
                   help="clean (default): this project's corrected protocol; authors: the official release's "
                        "computations (docs/protocol.md); applied after the dataset preset and --preset, before "
                        "the short flags and --set, so that those mix the two")
    p.add_argument("--preset", default=None, choices=sorted(RECIPES),
                   help="a recipe laid over the dataset's preset (ucmkd_jax/recipes.py): vit_b_to_s (Table 8), "
                        "vit_l_to_s (Table 10), vit_tiny (the ViT path on a CPU)")
    for flag, (path, text) in ALIASES.items():
        node, name = default, path.split(".")[-1]
        for part in path.split(".")[:-1]:
            node = getattr(node, part)
        allowed = choices_of(node, name)
        help_ = (text + "; " if text else "") + f"= --set {path}=..."
        if isinstance(getattr(node, name), bool):
            p.add_argument(flag, dest=path, default=None, action=argparse.BooleanOptionalAction, help=help_)
        else:
            metavar = "{" + ",".join(map(str, allowed)) + "}" if allowed and path != "methods" else None
            p.add_argument(flag, dest=path, default=None, metavar=metavar, help=help_)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="set any config field by its dotted path, e.g. --set method.fa.epsilon_mode=relative "
                        "(repeatable; applied after the short flags; see --list-config)")
    p.add_argument("--list-config", action="store_true", help="print every config path, its type and its "
                                                              "resolved value, and exit")
    p.add_argument("--out", default=None, help="output directory (default runs/<dataset>)")
    p.add_argument("--teacher-cache", default=None, help="pre-trained teachers, shared by runs of equal teacher "
                                                         "settings (default OUT/teachers)")
    p.add_argument("--fresh", action="store_true", help="ignore results already in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help="show the traceback of an error (default: one line)")
    return p


def given_paths(args) -> list:
    """Config paths the command line sets (short flags and --set), in order."""
    paths = [path for path, _ in ALIASES.values() if getattr(args, path) is not None]
    return paths + [item.split("=", 1)[0].strip() for item in args.overrides]


def resolve_config(args) -> ExperimentConfig:
    """The preset of --dataset, then the recipe of --preset (``ucmkd_jax.recipes``), then every
    short flag given, then every --set. Raises ConfigError naming the field for a bad value."""
    cfg = get_preset(args.dataset)
    if args.preset:
        cfg = apply_recipe(cfg, args.preset)
    if args.protocol:
        cfg = apply_protocol(cfg, args.protocol)
    for path, _ in ALIASES.values():
        value = getattr(args, path)
        if value is not None:
            cfg = set_field(cfg, path, value)
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects PATH=VALUE, got {item!r} (e.g. method.fa.epsilon=0.05)")
        path, value = item.split("=", 1)
        if path.strip() == "protocol":  # the label alone would not change a thing: apply the preset
            cfg = apply_protocol(cfg, value.strip())
            continue
        cfg = set_field(cfg, path.strip(), value.strip())
    return cfg


def parse(argv=None, parser: argparse.ArgumentParser | None = None):
    """(args, resolved config); bad flags and values are usage errors (exit code 2)."""
    p = parser or build_parser()
    args = p.parse_args(argv)
    try:
        cfg = resolve_config(args)
    except (ConfigError, ValueError) as e:
        p.error(str(e))
    if cfg.dataset == "arrays" and not (cfg.teacher_data and cfg.student_data):
        p.error("--dataset arrays needs --teacher-data T.npz and --student-data S.npz")
    real_only = [f for f in _REAL_ONLY if getattr(args, ALIASES[f][0]) is not None]
    if real_only and cfg.dataset in ("synthetic", "arrays"):
        p.error(f"{real_only[0]} applies to prepared real datasets, not --dataset {cfg.dataset}")
    return args, cfg


def plot_curves(out, histories):
    """curves.png: validation accuracy per epoch, mean and range over seeds (nothing without runs)."""
    if not histories:
        return
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


def arrays_setup(cfg: ExperimentConfig):
    """--dataset arrays: load and check both files and build both models (nothing is compiled).
    Returns (dataset, (teacher, student), the description written to config.json)."""
    dataset = load_arrays(cfg.teacher_data, cfg.student_data, num_classes=cfg.num_classes)
    models = build_models(cfg, dataset.modalities.get("teacher"), dataset.modalities["student"], dataset.num_classes)
    check_run(cfg, dataset, models)
    desc = describe_arrays(dataset)
    for role, model in zip(("teacher", "student"), models):
        if role in desc and model is not None:
            desc[role]["model"] = describe_model(model)
    return dataset, models, desc


def main(argv=None):
    args, cfg = parse(argv)
    if args.list_config:
        print(describe_fields(cfg))
        return []
    maybe_initialize_distributed()  # a SLURM / TPU-pod job: one process per host
    dataset = models = None
    cfg_dict = to_dict(cfg)
    if cfg.dataset == "arrays":
        dataset, models, cfg_dict["arrays"] = arrays_setup(cfg)  # bad input stops here
    out = args.out or os.path.join("runs", cfg.dataset)
    os.makedirs(os.path.join(out, "history"), exist_ok=True)
    with results.OutputLock(out):
        return _run(cfg, cfg_dict, args, out, dataset, models)


def _run(cfg, cfg_dict, args, out, dataset, models):
    """main's work on the locked output folder ``out``."""
    results_path, config_path = os.path.join(out, "results.json"), os.path.join(out, "config.json")
    records = []
    if os.path.exists(results_path) and not args.fresh:
        results.check_resumable(results.read_json(config_path, "the config of the results beside it"), cfg_dict, out,
                                config_path, "results")
        records = results.read_json(results_path, "the finished runs")
        print(f"resuming: {len(records)} finished run(s) found in {results_path}")
    results.write_json(config_path, cfg_dict)
    done = {(r["direction"], r["method"], r["seed"]) for r in records}

    def on_run(run):
        records.append(run.record)
        r = run.record
        results.write_json(os.path.join(out, "history", f"{r['direction']}_{r['method']}_seed{r['seed']}.json"),
                           run.history, indent=1)
        results.write_json(results_path, records)

    run_experiment(cfg, dataset, out_dir=out, done=done, on_run=on_run, progress=not args.no_progress,
                   models=models, teacher_cache=args.teacher_cache)
    directions = expand_directions(cfg.direction)
    wanted = [r for r in records if r["method"] in cfg.methods and r["direction"] in directions
              and cfg.first_seed <= r["seed"] < cfg.first_seed + cfg.seeds]
    table = summarize(wanted, cfg.std_ddof)
    header = (f"# {cfg.dataset}: {', '.join(cfg.methods)} (regime {cfg.unpaired}, subsample {cfg.subsample:g}, "
              f"hypergrad={cfg.method.hypergrad}, cost={cfg.method.fa.cost}, {cfg.train.epochs} epochs, "
              f"{cfg.seeds} seed(s))\n\n"
              "Student accuracy at the epoch with the best validation accuracy; mean ± std over seeds.\n\n")
    if dataset is not None and getattr(dataset, "notices", None):
        header += "".join(f"- {n}\n" for n in dataset.notices) + "\n"
    if not results.is_primary():
        return wanted
    results.write_text(os.path.join(out, "results.md"), header + table + "\n")
    histories = []
    for r in wanted:
        name = f"{r['direction']}_{r['method']}_seed{r['seed']}.json"
        histories.append((r["direction"], r["method"], results.read_json(os.path.join(out, "history", name),
                                                                         "a run's per-epoch history")))
    plot_curves(out, histories)
    print("\n" + table)
    print(f"\nwrote {results_path}, {os.path.join(out, 'results.md')}, {os.path.join(out, 'curves.png')}")
    return wanted


if __name__ == "__main__":
    sys.exit(cli.run(main))
