"""One process of tests/test_multihost.py (not a test module: it is run as a subprocess).

    python tests/multihost_worker.py --processes 2 --process-id 0 --port 12345 --local-devices 2 --out R.npz

Builds tiny MLP models of vectors (BatchNorm inside) and a fixed dataset, a data-parallel mesh
over every device of every process, and records (process 0 writes ``--out``):
  steps/<method>/...   parameters after two training steps of ce, ucmkd (first order) and
                       ucmkd (unrolled), from the same initial state and global batches;
  eval_acc, eval_ce, eval_n   ``train.evaluate`` on 37 samples in batches of 8 (padded);
  teacher/...          a teacher pre-trained for two epochs with ``train.fit`` (precise BN on).
"""
from __future__ import annotations

import argparse
import os
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, required=True)
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local-devices", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    # the compile-speed flags of tests/conftest.py (passed down by tests/test_multihost.py)
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.local_devices} "
                               + os.environ.get("UCMKD_TEST_XLA_FLAGS", ""))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import numpy as np

    if args.processes > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.processes,
                                   process_id=args.process_id)
    from ucmkd_jax.config import TrainConfig
    from ucmkd_jax.data import Split
    from ucmkd_jax.data.streams import train_batches
    from ucmkd_jax.methods import MethodConfig
    from ucmkd_jax.models import build_model
    from ucmkd_jax.optim import OptimConfig
    from ucmkd_jax.parallel import data_mesh, replicate
    from ucmkd_jax.train import build_step, evaluate, fit, placement

    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 6)) * 2.0

    def split(n, dim):
        y = np.arange(n) % 3
        proj = np.random.default_rng(dim).normal(size=(6, dim))
        return Split((means[y] @ proj + rng.normal(size=(n, dim))).astype(np.float32), y.astype(np.int32))

    s_train, t_train, val = split(64, 5), split(64, 7), split(37, 5)
    student = build_model("vector", (5,), 3, backbone="mlp", width=2, latent_dim=8, name="student")
    teacher = build_model("vector", (7,), 3, backbone="mlp", width=2, latent_dim=8, name="teacher")
    sv, tv = student.init(jax.random.PRNGKey(1)), teacher.init(jax.random.PRNGKey(2))
    mesh = data_mesh()
    assert mesh.devices.size == 4, mesh
    out = {}
    rows, put = placement(mesh, 16)
    for name, cfg in (("ce", MethodConfig()), ("ucmkd", MethodConfig()),
                      ("ucmkd_unrolled", MethodConfig(hypergrad="unrolled", inner_opt="sgd"))):
        method = "ucmkd" if name.startswith("ucmkd") else name
        ts = build_step(method, student, teacher, method_config=cfg, optim=OptimConfig(lr=0.05, warmup_epochs=0),
                        steps_per_epoch=4, epochs=1)
        state = replicate(ts.init_state(sv, tv, 0), mesh)
        t_vars = replicate(tv, mesh)
        batches = train_batches(s_train, t_train, 16, np.random.SeedSequence([0, 0]), "unpaired", rows=rows)
        for _, batch in zip(range(2), batches):
            state, _ = ts.step(state, t_vars, put(batch))
        for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)):
            out[f"steps/{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    metrics = evaluate(student, sv, val, 8, mesh=mesh)
    out.update(eval_acc=metrics["acc"], eval_ce=metrics["ce"], eval_n=metrics["n"])
    tc = TrainConfig(epochs=2, teacher_epochs=2, batch_size=16, eval_batch_size=8, precise_bn=2)
    result = fit(teacher, tv, t_train, split(24, 7), method="ce", train_config=tc, progress=False, mesh=mesh)
    for path, leaf in jax.tree_util.tree_leaves_with_path(result.variables):
        out[f"teacher/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    out["teacher_val"] = np.asarray([h["val_acc"] for h in result.history])
    if jax.process_index() == 0:
        np.savez(args.out, **out)


if __name__ == "__main__":
    main()
