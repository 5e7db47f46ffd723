"""What precise BatchNorm costs per evaluation, against the evaluation itself and a training epoch.

Before each evaluation the ``clean`` protocol recomputes every BatchNorm layer's statistics over
``--batches`` training batches (``ucmkd_jax.precise_bn``, ``train.precise_bn``). This times, for the
student of a preset (the synthetic demo's by default), the median over ``--reps`` of:

  precise_bn   the statistics pass over N batches (forward only, one compiled accumulation step)
  evaluate     one evaluation of the validation split (what precise BN runs before)
  epoch        one training epoch of ``ce`` (the cheapest method's steps), for scale

    python benchmarks/precise_bn_bench.py                       # synthetic demo student, N = 20
    python benchmarks/precise_bn_bench.py --batches 5,20,50 --json benchmarks/results/precise_bn.json

Timings are wall clock with ``jax.block_until_ready``; compilation is excluded (one untimed call).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from ucmkd_jax.config import get_preset  # noqa: E402
from ucmkd_jax.data import make_synthetic  # noqa: E402
from ucmkd_jax.models import build_model  # noqa: E402
from ucmkd_jax.precise_bn import PreciseBN  # noqa: E402
from ucmkd_jax.train import StepCache, evaluate, fit, precise_bn_batches  # noqa: E402


def _median_s(fn, reps: int) -> float:
    fn()  # compile (and warm) outside the timing
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="20", help="comma list of N (training batches per precise pass)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time one ce training epoch (default on)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    cfg = get_preset("synthetic")
    ds = make_synthetic(0)
    video = ds.modalities["video"]
    model = build_model("video", video.sample_shape, ds.num_classes, width=cfg.model.width, stem=cfg.model.stem,
                        name="student")
    variables = model.init(jax.random.PRNGKey(0))
    bs, ebs = cfg.train.batch_size, cfg.train.eval_batch_size
    cache = StepCache()
    precise = PreciseBN(model)
    out = {"device": jax.devices()[0].device_kind, "batch_size": bs, "eval_batch_size": ebs,
           "train_samples": len(video.train), "val_samples": len(video.val), "precise_bn_s": {}}
    for n in (int(b) for b in args.batches.split(",")):
        out["precise_bn_s"][n] = _median_s(
            lambda: precise(variables, precise_bn_batches(video.train, 0, 0, bs, n, None))["batch_stats"], args.reps)
    evaluator = cache.evaluator(model)
    out["evaluate_s"] = _median_s(lambda: evaluate(model, variables, video.val, ebs, evaluator)["acc"], args.reps)
    if args.epoch:
        tc = dict(epochs=1, teacher_epochs=1, batch_size=bs, eval_batch_size=ebs, precise_bn=0)
        from ucmkd_jax.config import TrainConfig
        t = TrainConfig(**tc)
        fit(model, variables, video.train, video.val, train_config=t, progress=False, cache=cache)  # compile
        times = []
        for _ in range(max(1, args.reps // 2)):
            s = time.perf_counter()
            fit(model, variables, video.train, video.val, train_config=t, progress=False, cache=cache)
            times.append(time.perf_counter() - s)
        out["ce_epoch_with_eval_s"] = statistics.median(times)
    print(f"device {out['device']}; student of the synthetic preset (width {cfg.model.width}), batch {bs}, "
          f"{out['train_samples']} train / {out['val_samples']} val samples")
    for n, s in out["precise_bn_s"].items():
        print(f"precise BN over {n:>3} batches: {1e3 * s:8.1f} ms")
    print(f"one evaluation (val):        {1e3 * out['evaluate_s']:8.1f} ms")
    if "ce_epoch_with_eval_s" in out:
        print(f"one ce epoch + evaluation:   {1e3 * out['ce_epoch_with_eval_s']:8.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
