

def test_unbiased_running_variance_is_torchs_update():
    """bn_running_var="unbiased": every BatchNorm's running variance moves by PyTorch's rule
    m r + (1 - m) v n / (n - 1) (v the biased batch variance over the layer's n positions per
    channel), where Flax's moves by m r + (1 - m) v; the running mean and the output are unchanged."""
    import dataclasses as dc

    import flax.linen as nn
    import jax
    import numpy as np

    from ucmkd_jax.models import build_model
    from ucmkd_jax.precise_bn import batchnorm_moments
    model = build_model("image", (12, 12, 3), 3, width=2, name="m")
    unbiased = dc.replace(model, bn_running_var="unbiased")
    v = model.init(jax.random.PRNGKey(0))
    stats = jax.tree.map(lambda a: a + 0.5, v["batch_stats"])  # running values away from the init
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 12, 12, 3))
    positions = {}

    def count(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            positions[tuple(context.module.path)] = args[0].size // args[0].shape[-1]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(count):
        jax.eval_shape(lambda: model.encode(v["params"]["encoder"], stats, x, train=True))  # positions per layer
    z_b, new_b = jax.jit(lambda e, s, xx: model.encode(e, s, xx, train=True))(v["params"]["encoder"], stats, x)
    z_u, new_u = jax.jit(lambda e, s, xx: unbiased.encode(e, s, xx, train=True))(v["params"]["encoder"], stats, x)
    np.testing.assert_array_equal(np.asarray(z_u), np.asarray(z_b))
    moments = jax.jit(lambda e, s, xx: batchnorm_moments(model, e, s, xx))(v["params"]["encoder"], stats, x)
    assert positions and set(positions) == set(moments)
    for path, n in positions.items():
        node_b, node_u, node_0 = new_b, new_u, stats
        for key in path:
            node_b, node_u, node_0 = node_b[key], node_u[key], node_0[key]
        batch_var = np.asarray(moments[path][1])
        np.testing.assert_allclose(np.asarray(node_u["mean"]), np.asarray(node_b["mean"]), rtol=0, atol=0)
        np.testing.assert_allclose(np.asarray(node_u["var"]),
                                   0.9 * np.asarray(node_0["var"]) + 0.1 * batch_var * n / (n - 1), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(node_b["var"]), 0.9 * np.asarray(node_0["var"]) + 0.1 * batch_var,
                                   rtol=1e-5)
