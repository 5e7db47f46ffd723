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
