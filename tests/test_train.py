"""The training loop: model selection on validation, clear errors before compiling."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from ucmkd_jax.config import TrainConfig
from ucmkd_jax.data import Split, make_synthetic
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.train import StepCache, NonFiniteLossError, evaluate, fit

TC = TrainConfig(epochs=2, teacher_epochs=2, batch_size=16, eval_batch_size=32, log_every=2)


@pytest.fixture(scope="module")
def small():
    ds = make_synthetic(0, n_train=64, n_val=32, n_test=32)
    audio, video = ds.modalities["audio"], ds.modalities["video"]
    teacher = build_model("audio", audio.sample_shape, 6, width=2, stem="imagenet", name="teacher")
    student = build_model("video", video.sample_shape, 6, width=2, stem="imagenet", name="student")
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


def test_interrupted_fit_resumes_to_the_uninterrupted_result(small, tmp_path):
    """Ctrl-C after epoch 2 of 3, then the same call again: same history and variables as one
    uninterrupted run (feature_kd: momentum state, teacher stream and batch stats all resume)."""
    from ucmkd_jax.checkpoint import RunCheckpointer

    ds, audio, video, teacher, student, tv, sv = small
    tc = dataclasses.replace(TC, epochs=3)
    cache = StepCache()
    kw = dict(method="feature_kd", teacher=teacher, teacher_variables=tv, teacher_train=audio.train,
              train_config=tc, progress=False, cache=cache, seed=3)
    whole = fit(student, sv, video.train, video.val, **kw)

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
    assert resumed.history == whole.history
    assert (resumed.best_epoch, resumed.best_val_acc) == (whole.best_epoch, whole.best_val_acc)
    for a, b in zip(jax.tree.leaves(resumed.variables), jax.tree.leaves(whole.variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_of_another_run_or_corrupt_is_refused_by_name(small, tmp_path):
    from ucmkd_jax.checkpoint import CheckpointError, RunCheckpointer

    ds, audio, video, teacher, student, tv, sv = small
    tc = dataclasses.replace(TC, epochs=1)
    cache = StepCache()
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
