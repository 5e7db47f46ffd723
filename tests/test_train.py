"""The training loop: model selection on validation, clear errors before compiling."""
import dataclasses
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from ucmkd_jax.config import TrainConfig
from ucmkd_jax.data import Split, make_synthetic
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.train import NonFiniteLossError, StepCache, evaluate, fit

TC = TrainConfig(epochs=2, teacher_epochs=2, batch_size=16, eval_batch_size=32, log_every=2)


@pytest.fixture(scope="module")
def cache():
    """One StepCache for the module: each setting is compiled once, whichever test needs it first."""
    return StepCache()


@pytest.fixture(scope="module")
def small():
    ds = make_synthetic(0, n_train=64, n_val=32, n_test=32)
    audio, video = ds.modalities["audio"], ds.modalities["video"]
    teacher = build_model("audio", audio.sample_shape, 6, "resnet10", width=2, stem="imagenet", name="teacher")
    student = build_model("video", video.sample_shape, 6, "resnet10", width=2, stem="imagenet", name="student")
    return ds, audio, video, teacher, student, teacher.init(jax.random.PRNGKey(0)), student.init(jax.random.PRNGKey(1))


def test_fit_selects_best_validation_epoch(small):
    ds, audio, video, teacher, student, tv, sv = small
    res = fit(teacher, tv, audio.train, audio.val, train_config=TC, progress=False)
    assert len(res.history) == 2
    assert res.best_val_acc == max(h["val_acc"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_acc"] == res.best_val_acc
    # the returned variables are the ones that scored best_val_acc
    assert evaluate(teacher, res.variables, audio.val, 32)["acc"] == pytest.approx(res.best_val_acc)


def test_nonfinite_loss_stops_with_epoch_step_and_method(small):
    ds, audio, video, teacher, student, tv, sv = small
    with pytest.raises(NonFiniteLossError, match=r"method 'ce' .*epoch 1/2, step \d+/4"):
        fit(student, sv, video.train, video.val, optim=OptimConfig(lr=1e12, clip_norm=0.0, warmup_epochs=0),
            train_config=TC, progress=False)


def test_a_nonfinite_validation_loss_stops_the_run_by_name(small, cache, monkeypatch):
    """Finite training losses but a NaN inference-mode evaluation (e.g. BatchNorm running
    statistics that overflowed): stopped after that epoch, naming the method and the run."""
    import ucmkd_jax.train as train

    ds, audio, video, teacher, student, tv, sv = small
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {"acc": 0.5, "ce": float("nan"), "n": 1})
    with pytest.raises(NonFiniteLossError, match=r"method 'ce' \(teacher audio seed 7\): the validation loss "
                                                 r"became NaN/inf after epoch 1/2"):
        fit(teacher, tv, audio.train, audio.val, train_config=TC, progress=False, cache=cache,
            desc="teacher audio seed 7")


def test_labels_out_of_range_are_named(small):
    ds, audio, video, teacher, student, tv, sv = small
    bad = Split(video.train.x, video.train.y.copy())
    bad.y[5] = 6
    with pytest.raises(ValueError, match=r"student train: y has label 6 at index 5, outside 0\.\.5 \(K = 6\)"):
        fit(student, sv, bad, video.val, train_config=TC, progress=False)


def test_wrong_input_shape_is_named_before_compiling(small):
    ds, audio, video, teacher, student, tv, sv = small
    with pytest.raises(ValueError, match=r"student \(video\) input has shape \(64, 32, 48, 1\)"):
        fit(student, sv, audio.train, audio.val, train_config=TC, progress=False)


def test_nan_inputs_are_named(small):
    ds, audio, video, teacher, student, tv, sv = small
    x = video.train.x.copy()
    x[3, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"student train: x has NaN or infinite values in 1 sample\(s\), the first at "
                                         r"index 3"):
        fit(student, sv, Split(x, video.train.y), video.val, train_config=TC, progress=False)


def test_vanilla_kd_refuses_unpaired_data(small):
    ds, audio, video, teacher, student, tv, sv = small
    with pytest.raises(ValueError, match="needs paired batches"):
        fit(student, sv, video.train, video.val, method="vanilla_kd", teacher=teacher, teacher_variables=tv,
            teacher_train=audio.train, pairing="unpaired", train_config=TC, progress=False)


def test_distillation_method_needs_a_teacher(small):
    ds, audio, video, teacher, student, tv, sv = small
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(student, sv, video.train, video.val, method="ucmkd", train_config=TC, progress=False)


class _Interrupt(KeyboardInterrupt):
    pass


def _feature_kd_run(small, cache):
    """fit's arguments for a 3-epoch feature_kd run (momentum state, teacher stream and batch
    stats all to be restored), and its uninterrupted result."""
    ds, audio, video, teacher, student, tv, sv = small
    kw = dict(method="feature_kd", teacher=teacher, teacher_variables=tv, teacher_train=audio.train,
              train_config=dataclasses.replace(TC, epochs=3), progress=False, cache=cache, seed=3)
    return kw, fit(student, sv, video.train, video.val, **kw)


def _assert_same_run(a, b):
    assert a.history == b.history and (a.best_epoch, a.best_val_acc) == (b.best_epoch, b.best_val_acc)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_interrupted_fit_resumes_to_the_uninterrupted_result(small, cache, tmp_path):
    """Ctrl-C after epoch 2 of 3, then the same call again: same history and variables as one
    uninterrupted run."""
    from ucmkd_jax.checkpoint import RunCheckpointer

    _, _, video, _, student, _, sv = small
    kw, whole = _feature_kd_run(small, cache)

    def stop_after_two(record, history):
        if record["epoch"] == 2:
            raise _Interrupt

    ckpt = RunCheckpointer(str(tmp_path / "run"), {"what": "test"})
    with pytest.raises(_Interrupt):
        fit(student, sv, video.train, video.val, checkpoint=ckpt, on_epoch=stop_after_two, **kw)
    seen = []
    resumed = fit(student, sv, video.train, video.val, checkpoint=RunCheckpointer(str(tmp_path / "run"),
                  {"what": "test"}), on_epoch=lambda r, h: seen.append((r["epoch"], len(h))), **kw)
    assert seen == [(3, 3)]  # only the missing epoch ran; the history came back from the checkpoint
    _assert_same_run(resumed, whole)


def test_a_state_save_that_fails_half_way_leaves_the_previous_checkpoint(small, cache, tmp_path, monkeypatch):
    """A full disk during epoch 2's save of the train state (Orbax has left a partial temporary
    folder, then OSError ENOSPC): the run stops with that error, and the rerun resumes from
    epoch 1 to the uninterrupted result. (A failed save of best variables: test_checkpoint.py.)"""
    import errno

    import orbax.checkpoint as ocp

    from ucmkd_jax.checkpoint import RunCheckpointer

    _, _, video, _, student, _, sv = small
    kw, whole = _feature_kd_run(small, cache)
    original = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 2:
            partial = tmp_path / "run" / "latest" / "2.orbax-checkpoint-tmp-0"
            partial.mkdir(parents=True)
            (partial / "half_written").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", full_disk)
        with pytest.raises(OSError, match="No space left on device"):
            fit(student, sv, video.train, video.val, checkpoint=RunCheckpointer(str(tmp_path / "run"), {"w": 1}),
                **kw)
    seen = []
    resumed = fit(student, sv, video.train, video.val, checkpoint=RunCheckpointer(str(tmp_path / "run"), {"w": 1}),
                  on_epoch=lambda r, h: seen.append(r["epoch"]), **kw)
    assert seen == [2, 3]  # resumed after epoch 1: the partial epoch-2 save was ignored
    _assert_same_run(resumed, whole)


def test_checkpoint_of_another_run_or_corrupt_is_refused_by_name(small, cache, tmp_path):
    from ucmkd_jax.checkpoint import CheckpointError, RunCheckpointer

    ds, audio, video, teacher, student, tv, sv = small
    tc = dataclasses.replace(TC, epochs=1)
    fit(teacher, tv, audio.train, audio.val, train_config=tc, progress=False, cache=cache,
        checkpoint=RunCheckpointer(str(tmp_path / "t"), {"lr": 1}))
    with pytest.raises(CheckpointError, match=r"t/latest/1 was written by a different run \(differs in: lr\)"):
        fit(teacher, tv, audio.train, audio.val, train_config=tc, progress=False, cache=cache,
            checkpoint=RunCheckpointer(str(tmp_path / "t"), {"lr": 2}))
    for root, _, files in os.walk(tmp_path / "t" / "latest"):  # truncate every stored array file
        for name in files:
            if not name.endswith((".json", "_METADATA", "_CHECKPOINT_METADATA")):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(3)
    with pytest.raises(CheckpointError, match=r"checkpoint .*t/latest/1 is corrupt"):
        fit(teacher, tv, audio.train, audio.val, train_config=tc, progress=False, cache=cache,
            checkpoint=RunCheckpointer(str(tmp_path / "t"), {"lr": 1}))


def test_frozen_baseline_batchnorm_switches_after_the_first_evaluation(small, cache):
    """baseline_bn="frozen_after_first_eval" (the release's accident): epoch 1 is the plain run's,
    epoch 2 runs the frozen step (below) and so trains differently."""
    ds, audio, video, teacher, student, tv, sv = small
    plain = fit(teacher, tv, audio.train, audio.val, train_config=TC, progress=False, cache=cache)
    frozen = fit(teacher, tv, audio.train, audio.val, progress=False, cache=cache,
                 train_config=dataclasses.replace(TC, baseline_bn="frozen_after_first_eval"))
    assert frozen.history[0] == plain.history[0]
    assert frozen.history[1]["train_loss"] != plain.history[1]["train_loss"]


def test_the_frozen_step_leaves_the_running_averages_and_descends_the_inference_loss(small):
    from ucmkd_jax.losses.classification import cross_entropy
    from ucmkd_jax.train import build_step
    ds, audio, video, teacher, student, tv, sv = small
    frozen = dataclasses.replace(teacher, train_bn="frozen")
    optim = OptimConfig(clip_norm=0.0)
    step = build_step("ce", frozen, steps_per_epoch=4, epochs=2, optim=optim)
    state = step.init_state(tv, None, 0)
    batch = {"x_s": audio.train.x[:16], "y_s": audio.train.y[:16]}
    import jax.numpy as jnp
    stats0 = jax.tree.map(np.asarray, state.batch_stats)
    grad = jax.jit(jax.grad(lambda p: cross_entropy(teacher.apply({"params": p, "batch_stats": tv["batch_stats"]},
                                                          jnp.asarray(batch["x_s"]), train=False)[0],
                                            jnp.asarray(batch["y_s"]))))(tv["params"])
    lr = float(step.schedule(0))
    new, _ = step.step(state, {}, jax.tree.map(jnp.asarray, batch))
    for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(stats0)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # SGD with momentum, first step: p - lr * g
    for p1, p0, g in zip(jax.tree.leaves(new.params), jax.tree.leaves(tv["params"]), jax.tree.leaves(grad)):
        np.testing.assert_allclose(np.asarray(p1), np.asarray(p0) - lr * np.asarray(g), rtol=1e-5, atol=1e-9)


def test_frozen_training_forward_is_the_inference_forward(small):
    ds, audio, video, teacher, student, tv, sv = small
    x = audio.train.x[:8]
    frozen = dataclasses.replace(teacher, train_bn="frozen")
    z_f, stats_f = frozen.encode(tv["params"]["encoder"], tv["batch_stats"], x, train=True)
    z_e, _ = teacher.encode(tv["params"]["encoder"], tv["batch_stats"], x, train=False)
    np.testing.assert_array_equal(np.asarray(z_f), np.asarray(z_e))
    assert stats_f is tv["batch_stats"]


def test_fit_stops_once_the_target_accuracy_is_met(small, cache):
    ds, audio, video, teacher, student, tv, sv = small
    res = fit(teacher, tv, audio.train, audio.val, train_config=TC, progress=False, cache=cache, stop_acc=1e-6)
    assert len(res.history) == 1 and res.best_epoch == 1


def test_keep_last_trains_on_the_partial_batch_too(small, cache, monkeypatch):
    """train.last_batch="keep" (the release's DataLoader): 56 samples at batch 16 are 3 full
    batches and one of 8, every sample once an epoch; "drop" leaves those 8 out."""
    import ucmkd_jax.train as train_lib
    ds, audio, video, teacher, student, tv, sv = small
    seen = []

    real = train_lib.prefetch_to_device

    def spy(batches, **kw):
        def counted():
            for b in batches:
                seen.append(b["y_s"].shape[0])
                yield b
        return real(counted(), **kw)

    monkeypatch.setattr(train_lib, "prefetch_to_device", spy)
    train = audio.train.subset(np.arange(56))
    tc = dataclasses.replace(TC, epochs=1)
    fit(teacher, tv, train, audio.val, train_config=dataclasses.replace(tc, last_batch="keep"), progress=False,
        cache=cache)
    assert seen == [16, 16, 16, 8]
    seen.clear()
    fit(teacher, tv, train, audio.val, train_config=tc, progress=False, cache=cache)
    assert seen == [16, 16, 16]


def test_keep_last_refuses_what_cannot_run_the_partial_batch():
    from ucmkd_jax.train import check_last_batch

    class Stream:  # a user's TrainStream that only yields full batches
        num_samples = 20

        def epoch_batches(self, epoch, batch_size, with_teacher=True):
            return iter(())

    with pytest.raises(ValueError, match="Stream.epoch_batches has no keep_last"):
        check_last_batch(Stream(), 20, 8, None)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    split = Split(np.zeros((20, 1), np.float32), np.zeros(20, int))
    check_last_batch(split, 20, 8, mesh)  # 4 rows on 1 device: fine
    three = SimpleNamespace(devices=np.empty(3))  # only its size is read: a 3-device mesh
    with pytest.raises(ValueError, match=r"last partial batch .*20 samples.* 4 is not divisible by the 3 devices"):
        check_last_batch(split, 20, 8, three)
