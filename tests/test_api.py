"""ucmkd_jax.distill: the Python API on every input form, a reused teacher, bad input, models.

The two pairs are those of tests/experiments/test_run_arrays.py (same arrays, same settings), so
with XLA's persistent cache shared through the session's temporary folder, their steps are
compiled once for both files."""
import textwrap

import jax
import numpy as np
import pytest

import ucmkd_jax
from ucmkd_jax import api
from ucmkd_jax.models import build_model
from ucmkd_jax.data.arrays import toy_arrays

# Keep in step with tests/experiments/test_run_arrays.py.
FORMS = {
    "vector": ((12,), (48, 12, 12), 1),
    "image32": ((32, 32, 3), (48, 0, 0), 2),
    "frames": ((2, 8, 8, 3), (48, 12, 12), 3),
    "image8": ((8, 8, 1), (48, 0, 12), 4),
}
# ResNet-10 on the image-like side of each pair, as tests/experiments/test_run_arrays.py's --backbone
PAIRS = [("frames", "image32", {"teacher_backbone": "resnet10", "student_backbone": "resnet10"}),
         ("image8", "vector", {"latent_dim": 16, "mlp_depth": 3, "teacher_backbone": "resnet10"})]
TINY = dict(width=2, epochs=1, teacher_epochs=1, batch_size=16, progress=False)


def data(form):
    shape, sizes, seed = FORMS[form]
    return toy_arrays(shape, 3, sizes, seed=seed)


@pytest.fixture(scope="module")
def api_runs():
    """pair index -> (ucmkd result, ce result, notices), each run once."""
    runs = {}

    def get(pair):
        if pair not in runs:
            t, s, kw = PAIRS[pair]
            notices = []
            u = ucmkd_jax.distill(teacher_data=data(t), student_data=data(s), method="ucmkd", log=notices.append,
                                  **TINY, **kw)
            c = ucmkd_jax.distill(student_data=data(s), method="ce", log=None, **TINY, **kw)
            runs[pair] = (u, c, notices)
        return runs[pair]

    return get


@pytest.fixture(params=range(len(PAIRS)), ids=[f"{t}-to-{s}" for t, s, _ in PAIRS])
def pair(request, api_runs):
    return (request.param,) + api_runs(request.param)


def test_each_form_runs_ucmkd_and_ce(pair):
    i, u, c, notices = pair
    t, s, kw = PAIRS[i]
    latent = kw.get("latent_dim", 512)
    has_test = FORMS[s][1][2] > 0
    for r, method in ((u, "ucmkd"), (c, "ce")):
        m = r.metrics
        assert (m["method"], m["seed"], m["epochs"], m["num_classes"], m["direction"]) == \
            (method, 0, 1, 3, "teacher2student")
        assert 0.0 <= m["val_acc"] <= 1.0 and (m["test_acc"] is not None) == has_test
        assert len(r.history) == 1 and np.isfinite(r.history[0]["train_loss"])
        assert r.student.model.modality == ("vector" if s == "vector" else "image") and r.student.model.name == "student"
        assert r.student.model.latent_dim == latent and r.student.model.input_shape == FORMS[s][0]
        params = jax.tree.leaves(r.student.variables["params"])
        assert all(isinstance(p, np.ndarray) and np.all(np.isfinite(p)) for p in params)
    assert c.teacher is None and c.metrics["teacher_val_acc"] is None
    assert u.teacher.model.name == "teacher" and u.teacher.model.input_shape == FORMS[t][0]
    assert u.teacher.model.latent_dim == latent and u.teacher.model.modality == ("video" if t == "frames" else "image")
    assert 0.0 <= u.metrics["teacher_val_acc"] <= 1.0
    assert (u.metrics["teacher_test_acc"] is not None) == (FORMS[t][1][2] > 0)
    # the loader's decisions reach the caller
    assert u.metrics["notices"] == notices
    assert any("student data: no x_test" in n for n in notices) == (not has_test)
    assert any("teacher data: no x_val" in n for n in notices) == (FORMS[t][1][1] == 0)


def test_predict_agrees_with_the_reported_test_accuracy(api_runs):
    u, _, _ = api_runs(1)
    x, y = data("vector")["x_test"], data("vector")["y_test"]
    logits = u.student.predict(x, batch_size=16)
    assert logits.shape == (12, 3) and logits.dtype == np.float32
    assert np.mean(logits.argmax(1) == y) == u.metrics["test_acc"]
    assert u.student.evaluate(x, y)["acc"] == u.metrics["test_acc"]


def test_a_trained_teacher_is_reused_not_retrained(api_runs):
    u, _, _ = api_runs(1)
    t, s, kw = PAIRS[1]
    for teacher in (u.teacher, (u.teacher.model, u.teacher.variables)):
        again = ucmkd_jax.distill(teacher=teacher, teacher_data=data(t), student_data=data(s), seed=1, log=None,
                                  **dict(TINY, teacher_epochs=50), **{k: v for k, v in kw.items() if k != "latent_dim"})
        assert again.teacher.variables is u.teacher.variables
        assert again.teacher.model.latent_dim == again.student.model.latent_dim == 16  # taken from the teacher
        assert again.metrics["teacher_val_acc"] == u.metrics["teacher_val_acc"]
        assert again.metrics["teacher_test_acc"] == u.metrics["teacher_test_acc"]
        assert again.metrics["seed"] == 1 and 0.0 <= again.metrics["val_acc"] <= 1.0


def test_docstring_example_runs():
    code = textwrap.dedent(api.distill.__doc__.split("::\n", 1)[1])
    scope = {}
    exec(code, scope)  # noqa: S102  (our own docstring)
    result = scope["result"]
    assert scope["logits"].shape == (64, 3)
    # a clear signal, learnt: the student is far above chance (1/3) after 5 epochs
    assert result.metrics["test_acc"] > 0.6 and result.metrics["teacher_test_acc"] > 0.8
    assert scope["again"].teacher.variables is result.teacher.variables


# ------------------------------------------------------------------------------ bad input


def _teacher(k=3, shape=(12,)):
    model = build_model("vector", shape, k, width=2, latent_dim=16, name="teacher")
    return api.Trained(model, {"params": {}, "batch_stats": {}})  # never applied: checks come first


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(method="nope"), ValueError, "unknown method 'nope'"),
    (dict(method="vanilla_kd"), ValueError, "needs paired samples"),
    (dict(teacher_data=None), ValueError, "method 'ucmkd' draws batches of teacher-modality inputs: pass teacher_data"),
    (dict(student_data=None), TypeError, "needs student_data"),
    (dict(batch_size=64), ValueError, "student train split has 48 samples, fewer than one batch of 64"),
    (dict(teacher=_teacher(k=2)), ValueError,
     r"teacher data: y_train has label 2 at index 2, outside 0\.\.1 \(K = 2\)"),
    (dict(teacher=_teacher(k=4), num_classes=3), ValueError, "the teacher has 4 classes but the data has K = 3"),
    (dict(teacher=_teacher(), latent_dim=32), ValueError, "latent_dim=32 but the given teacher's latent size is 16"),
    (dict(teacher=_teacher(shape=(13,))), ValueError,
     r"the teacher was built for per-sample shape \(13,\) but the teacher data has \(12,\)"),
    (dict(teacher=lambda x: x), TypeError, "a bare apply function is not enough"),
    (dict(student_backbone="resnet50"), ValueError, "resnet50 cannot encode"),
    (dict(teacher_backbone="mlp", teacher_data=data("frames")), ValueError, "the mlp backbone takes \\(N, D\\) vectors"),
    (dict(student_data={"x_train": np.zeros((48, 12))}), ValueError, "student data has no y_train"),
])
def test_bad_input_is_refused_before_compiling(kwargs, error, message, no_compile):
    kw = dict(teacher_data=data("vector"), student_data=data("vector"), log=None, **TINY)
    kw.update(kwargs)
    with no_compile(), pytest.raises(error, match=message):
        ucmkd_jax.distill(**kw)


def test_a_distilled_result_is_not_a_teacher():
    fake = api.Distilled(student=_teacher(), teacher=None, metrics={}, history=[])
    with pytest.raises(TypeError, match="pass a Trained, e.g. result.student"):
        ucmkd_jax.distill(teacher=fake, teacher_data=data("vector"), student_data=data("vector"), log=None)
