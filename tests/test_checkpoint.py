import jax
import numpy as np
import pytest

from ucmkd_jax.checkpoint import CheckpointError, load_variables, save_variables
from ucmkd_jax.models import build_model


def test_roundtrip_and_clear_errors(tmp_path):
    m = build_model("image", (8, 8, 3), 3, width=2)
    v = jax.device_get(m.init(jax.random.PRNGKey(0)))
    save_variables(str(tmp_path / "ck"), v)
    back = load_variables(str(tmp_path / "ck"), v)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing"):
        load_variables(str(tmp_path / "missing"), v)
    other = jax.device_get(build_model("image", (8, 8, 3), 3, width=4).init(jax.random.PRNGKey(0)))
    with pytest.raises(CheckpointError, match=r"ck (is corrupt or )?does not match"):
        load_variables(str(tmp_path / "ck"), other)


def _tree(value):
    return {"params": {"w": np.full((3, 2), value, np.float32)}, "batch_stats": {"m": np.full(2, value, np.float32)}}


def test_a_failed_best_save_leaves_the_pair_on_disk_consistent(tmp_path, monkeypatch):
    """Epoch 2 finds new best variables but the disk fills while writing them (a partial
    ``.saving`` folder, then ENOSPC): a fresh checkpointer restores epoch 1 and epoch 1's best,
    and once the run ends ``best/`` holds the best of the last good save."""
    import errno

    import orbax.checkpoint as ocp

    from ucmkd_jax.checkpoint import RunCheckpointer

    state = {"step": np.int32(0), "w": np.zeros(4, np.float32)}
    ck = RunCheckpointer(str(tmp_path / "run"), {"w": 1})
    ck.save(1, state, {"best_epoch": 1}, best_variables=_tree(1.0))
    original = ocp.StandardCheckpointer.save

    def full_disk(self, where, *args, **kwargs):
        (tmp_path / "run" / "best.epoch2.saving" / "half").mkdir(parents=True, exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ck.save(2, dict(state, step=np.int32(2)), {"best_epoch": 2}, best_variables=_tree(2.0))
    monkeypatch.setattr(ocp.StandardCheckpointer, "save", original)
    again = RunCheckpointer(str(tmp_path / "run"), {"w": 1})
    restored, meta = again.restore(state)
    assert (meta["epoch"], meta["best_epoch"], int(restored["step"])) == (1, 1, 0)
    np.testing.assert_array_equal(again.restore_best(meta, _tree(0.0))["params"]["w"], 1.0)
    again.save(2, dict(state, step=np.int32(2)), {"best_epoch": 2}, best_variables=_tree(2.0))  # disk freed
    again.finish()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best"]  # no stale best.epoch*/ left
    np.testing.assert_array_equal(load_variables(str(tmp_path / "run" / "best"), _tree(0.0))["params"]["w"], 2.0)


def test_save_variables_replaces_atomically(tmp_path):
    """A save that dies before its rename leaves the old variables readable; one that dies
    between the two renames leaves them under ``.old``, which load_variables falls back to."""
    path = str(tmp_path / "teacher")
    save_variables(path, _tree(1.0))
    (tmp_path / "teacher.saving").mkdir()  # a killed save's leftovers
    np.testing.assert_array_equal(load_variables(path, _tree(0.0))["params"]["w"], 1.0)
    save_variables(path, _tree(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
    (tmp_path / "teacher").rename(tmp_path / "teacher.old")  # killed after the first rename
    np.testing.assert_array_equal(load_variables(path, _tree(0.0))["params"]["w"], 2.0)
