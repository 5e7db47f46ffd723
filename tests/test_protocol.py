"""ucmkd_jax.protocol: the per-seed protocol's choices, its refusals, and the step cache it
shares (nothing here trains; the end-to-end runs are tests/experiments and tests/test_api.py)."""
import dataclasses

import numpy as np
import pytest

from ucmkd_jax import seeds
from ucmkd_jax.config import get_preset
from ucmkd_jax.data import make_synthetic
from ucmkd_jax.data.regimes import distillation_pools, subsample
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig
from ucmkd_jax.protocol import prepare_seed
from ucmkd_jax.train import StepCache


@pytest.fixture(scope="module")
def small():
    return make_synthetic(0, n_train=96, n_val=24, n_test=24)


def test_pools_without_a_teacher_are_the_regimes(small):
    """Without a teacher the seed's data are exactly regimes.subsample + distillation_pools of
    the same seed (the in-memory protocol has one owner)."""
    cfg = get_preset("synthetic")
    cfg = dataclasses.replace(cfg, subsample=0.5, unpaired="medium",
                              train=dataclasses.replace(cfg.train, batch_size=16))
    t, s = small.modalities["audio"], small.modalities["video"]
    data = prepare_seed(cfg, "synthetic", "a2v", 3, teacher_data=t, student_data=s, paired=True,
                        teacher_model=None, need_teacher=False, progress=False)
    t_sub, s_sub, _ = subsample(t, s, 0.5, 3, True)
    _, s_pool, _ = distillation_pools(None, s_sub.train, "medium", 3, True)
    np.testing.assert_array_equal(data.student.train.y, s_pool.y)
    np.testing.assert_array_equal(data.student.train.x, s_pool.x)
    assert data.teacher_pool is None and data.teacher_variables is None and data.teacher_info == {}
    assert len(data.teacher.train) == len(t_sub.train) < len(t.train)
    assert data.student.val is s.val and data.student.test is s.test  # evaluation splits stay whole


def test_a_too_small_split_is_named_before_anything_is_compiled(small, no_compile):
    cfg = dataclasses.replace(get_preset("synthetic"), subsample=0.25)  # 24 of 96 clips per side, batch 64
    t, s = small.modalities["audio"], small.modalities["video"]
    teacher = build_model("audio", t.sample_shape, small.num_classes, width=2, name="teacher")
    kw = dict(teacher_data=t, teacher_model=teacher, need_teacher=True, progress=False)
    with no_compile():
        with pytest.raises(ValueError, match=r"the student train split has \d+ samples after --subsample 0.25"):
            prepare_seed(cfg, "synthetic", "a2v", 0, student_data=s, paired=True, **kw)
        big_student = dataclasses.replace(s, train=s.train.subset(np.arange(96).repeat(12)))
        with pytest.raises(ValueError, match=r"the teacher's pre-training split \(its modality's train split\) has "
                                             r"\d+ samples after --subsample 0.25, fewer than one batch of 64"):
            prepare_seed(cfg, "synthetic", "a2v", 0, student_data=big_student, paired=False, **kw)


def test_the_step_cache_builds_once_per_setting(tiny_pair):
    teacher, student, _, _, _ = tiny_pair
    twin = build_model("video", student.input_shape, student.num_classes, "resnet10", width=2, name="student")
    cache = StepCache()
    kw = dict(method_config=get_preset("synthetic").method, optim=OptimConfig(), steps_per_epoch=3, epochs=2)
    a = cache.train_step("ucmkd", student, teacher, **kw)
    assert cache.train_step("ucmkd", twin, teacher, **kw) is a  # equal models share the compiled step
    assert cache.train_step("ucmkd", student, teacher, **dict(kw, epochs=3)) is not a  # another schedule
    assert cache.train_step("ce", student, None, **kw).spec.name == "ce"
    assert cache.evaluator(student) is cache.evaluator(twin)


def test_named_seed_offsets():
    assert seeds.teacher_seed(2) == 10_002 and seeds.extra_init_seed(2) == 7921


def test_the_teacher_cache_key_holds_the_data(small, tmp_path):
    """Two teacher datasets of equal shapes and sizes but other values never share a teacher."""
    from ucmkd_jax.protocol import teacher_cache_dir

    cfg = get_preset("synthetic")
    audio = small.modalities["audio"]
    teacher = build_model("audio", audio.sample_shape, small.num_classes, width=2, name="teacher")
    other = dataclasses.replace(audio, train=dataclasses.replace(audio.train, x=audio.train.x + 1.0))
    same = teacher_cache_dir(str(tmp_path), cfg, "arrays", "teacher2student", teacher, audio)
    assert teacher_cache_dir(str(tmp_path), cfg, "arrays", "teacher2student", teacher, audio) == same
    assert teacher_cache_dir(str(tmp_path), cfg, "arrays", "teacher2student", teacher, other) != same


def test_release_teacher_recipe_shared_over_seeds_and_stopped_at_its_target(small, tmp_path):
    """--protocol authors' teacher: one pre-training for every seed (the first seed's; the second
    seed finds it in the cache), selected on test, stopped after the first epoch whose best test
    accuracy reaches the target (a target of 1e-6: one epoch)."""
    base = get_preset("synthetic")
    cfg = dataclasses.replace(base, train=dataclasses.replace(
        base.train, batch_size=16, teacher_epochs=3, precise_bn=0, teacher_recipe="release", teacher_stop_acc=1e-6,
        shared_teacher=True, model_selection="test"))
    t, s = small.modalities["audio"], small.modalities["video"]
    teacher = build_model("audio", t.sample_shape, small.num_classes, "resnet10", width=2, name="teacher")
    cache = StepCache()
    kw = dict(teacher_data=t, student_data=s, paired=True, teacher_model=teacher, need_teacher=True, progress=False,
              teacher_root=str(tmp_path), cache=cache)
    first = prepare_seed(cfg, "synthetic", "a2v", 0, **kw)
    second = prepare_seed(cfg, "synthetic", "a2v", 1, **kw)
    assert not first.teacher_info["teacher_cached"] and second.teacher_info["teacher_cached"]
    import jax
    for a, b in zip(jax.tree.leaves(first.teacher_variables), jax.tree.leaves(second.teacher_variables)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the recipe's step: SGD on the poly schedule, no clipping
    (step,) = [v for k, v in cache._steps.items() if k[1] is teacher]
    assert float(step.schedule(0)) == pytest.approx(1e-2) and step.spec.name == "ce"
    assert [k[4].schedule for k in cache._steps if k[1] is teacher] == ["poly"]
    assert [k[4].clip_norm for k in cache._steps if k[1] is teacher] == [0.0]
