"""models/pretrained.py against real torchvision and timm ViTs: randomly initialised models
(nothing downloaded) are saved as the checkpoints users download (.pth, .safetensors), converted,
and the Flax forward must equal the torch forward on the same input to 1e-5 (float32), at the
ViT-S, ViT-B and ViT-L widths with the depth shrunk. The timm references load the checkpoint
into a model of the target shape with timm's own code (``checkpoint_filter_fn``: position
embeddings resampled; ``adapt_input_conv``: RGB filters to one channel), the way the release
builds its audio ViT."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the converter tests need the vit extra: pip install -e '.[vit]'")
from benchmarks import torch_vit  # noqa: E402

try:
    timm = torch_vit.import_timm()
except ImportError as e:  # only when the extra is not installed
    pytest.skip(f"the converter tests need torchvision and timm: pip install -e '.[vit]' ({e})",
                allow_module_level=True)

from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models._manipulate import adapt_input_conv  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

from ucmkd_jax.models import build_model  # noqa: E402
from ucmkd_jax.models.pretrained import checkpoint_format, initial_variables, load_state_dict  # noqa: E402
from ucmkd_jax.models.vit import resample_pos_embed  # noqa: E402

DEPTH = {"vit_s16": 2, "vit_b16": 1, "vit_l16": 1}  # full widths 384, 768, 1024
TOL = 1e-5


def _perturbed(module, seed):
    """Every parameter moved off its init (zero biases, unit LayerNorms, zero CLS token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def _save(module, path):
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def _flax_z(model, path, x_nhwc):
    v = initial_variables(model, jax.random.PRNGKey(0), path)
    z, _ = jax.jit(lambda p, x: model.encode(p, {}, x, train=False))(v["params"]["encoder"], jnp.asarray(x_nhwc))
    return np.asarray(z)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size", ["vit_s16", "vit_b16", "vit_l16"])
def test_torchvision_checkpoint(size, tmp_path):
    """torchvision's VisionTransformer (vit_b_16 / vit_l_16 layout; ViT-S at its sizes) on 32 x 32 RGB."""
    tv = _perturbed(torchvision_model := torch_vit.torchvision_vit(size, 32, depth=DEPTH[size]), 1)
    path = _save(tv, str(tmp_path / f"{size}.pth"))
    assert checkpoint_format(load_state_dict(path)) == "torchvision"
    torchvision_model.heads = torch.nn.Identity()  # forward -> final-LN CLS token
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ref = tv(_nchw(x)).detach().numpy()
    model = build_model("image", (32, 32, 3), 10, backbone=size, options={"depth": DEPTH[size]})
    z = _flax_z(model, path, x)
    print(f"{size} torchvision max abs error {np.abs(z - ref).max():.2e} (|z| <= {np.abs(ref).max():.2f})")
    np.testing.assert_allclose(z, ref, rtol=0, atol=TOL)


def test_torchvision_rgb_checkpoint_on_spectrograms(tmp_path):
    """3 -> 1 channel reduction: the 1-channel model on x equals the RGB model on x repeated 3 times."""
    tv = _perturbed(torch_vit.torchvision_vit("vit_b16", 32, depth=1), 2)
    path = _save(tv, str(tmp_path / "b.pth"))
    tv.heads = torch.nn.Identity()
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype(np.float32)
    ref = tv(_nchw(x).repeat(1, 3, 1, 1)).detach().numpy()
    z = _flax_z(build_model("audio", (32, 32, 1), 10, backbone="vit_b16", options={"depth": 1}), path, x)
    np.testing.assert_allclose(z, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("size,ext", [("vit_s16", ".safetensors"), ("vit_b16", ".pth"), ("vit_l16", ".safetensors")])
def test_timm_checkpoint_into_the_releases_audio_vit(size, ext, tmp_path):
    """An RGB timm checkpoint (32 x 32: a 2 x 2 grid) into a 1-channel model whose 33 x 60
    spectrograms are resized bilinearly to 32 x 64 (a 2 x 4 grid): the release's audio ViT
    (257 x 1004 -> 256 x 1024 from 224 x 224 weights), shrunk."""
    src = _perturbed(torch_vit.timm_vit(size, (32, 32), 3, depth=DEPTH[size]), 3)
    path = _save(src, str(tmp_path / f"{size}{ext}"))
    assert checkpoint_format(load_state_dict(path)) == "timm"
    ref_model = torch_vit.build_vit_model("audio", size, 10, input_hw=(33, 60), depth=DEPTH[size],
                                          audio_size=(32, 64)).eval()
    state = dict(src.state_dict())
    state["patch_embed.proj.weight"] = adapt_input_conv(1, state["patch_embed.proj.weight"])
    state = {k: v for k, v in checkpoint_filter_fn(state, ref_model.encoder).items() if not k.startswith("head")}
    ref_model.encoder.load_state_dict(state, strict=False)
    x = np.random.default_rng(2).normal(size=(2, 33, 60, 1)).astype(np.float32)
    with torch.no_grad():
        ref = ref_model.encode(_nchw(x)).numpy()
    model = build_model("audio", (33, 60, 1), 10, backbone=size,
                        options={"depth": DEPTH[size], "input_size": (32, 64)})
    z = _flax_z(model, path, x)
    print(f"{size} timm{ext} max abs error {np.abs(z - ref).max():.2e} (|z| <= {np.abs(ref).max():.2f})")
    np.testing.assert_allclose(z, ref, rtol=0, atol=TOL)


def test_position_embeddings_are_resampled_as_timm_does():
    pos = np.random.default_rng(3).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
    for grid in [(16, 64), (7, 7), (14, 14)]:
        ref = resample_abs_pos_embed(torch.from_numpy(pos), list(grid), (14, 14), num_prefix_tokens=1).numpy()
        np.testing.assert_allclose(resample_pos_embed(jnp.asarray(pos), grid, (14, 14)), ref, rtol=0, atol=2e-6)


def test_projection_and_head_keep_their_init(tmp_path):
    """ViT-S student projected to a teacher's width: only the trunk comes from the file."""
    path = _save(torch_vit.timm_vit("vit_s16", (32, 32), 3, depth=1, head_width=8), str(tmp_path / "s.pth"))
    model = build_model("video", (2, 32, 32, 3), 5, backbone="vit_s16", width=8, latent_dim=96,
                        projection="linear_bn_relu", options={"depth": 1})
    fresh = model.init(jax.random.PRNGKey(0))
    loaded = initial_variables(model, jax.random.PRNGKey(0), path)
    for k in ("projection", "projection_bn"):
        jax.tree.map(np.testing.assert_array_equal, loaded["params"]["encoder"][k], fresh["params"]["encoder"][k])
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["head"], fresh["params"]["head"])
    assert loaded["batch_stats"] is fresh["batch_stats"] or jax.tree.all(
        jax.tree.map(np.array_equal, loaded["batch_stats"], fresh["batch_stats"]))
    w = torch.load(path)["blocks.0.attn.qkv.weight"].numpy()
    np.testing.assert_array_equal(loaded["params"]["encoder"]["trunk"]["block1"]["attn"]["qkv"]["kernel"], w.T)


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    b2 = _save(torch_vit.torchvision_vit("vit_b16", 32, depth=2), str(tmp_path / "b2.pth"))
    with pytest.raises(ValueError, match="teacher: .*b2.pth: the torchvision checkpoint is a ViT of width 768 and 2 "
                                         "blocks; the model's vit_b16 has width 768 and 1 blocks"):
        initial_variables(build_model("image", (32, 32, 3), 3, backbone="vit_b16", options={"depth": 1},
                                      name="teacher"), jax.random.PRNGKey(0), b2)
    with pytest.raises(ValueError, match="student: .* would initialise a ViT, but the student's encoder is a "
                                         "ResNetEncoder"):
        initial_variables(build_model("image", (32, 32, 3), 3, width=2, name="student"), jax.random.PRNGKey(0), b2)
    scaled = _save(timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=1,
                                     init_values=1e-5), str(tmp_path / "ls.pth"))
    with pytest.raises(ValueError, match="parts this ViT does not have: blocks.0.ls1.gamma"):
        initial_variables(build_model("image", (32, 32, 3), 3, backbone="vit_s16", options={"depth": 1}),
                          jax.random.PRNGKey(0), scaled)
    other = str(tmp_path / "other.pth")
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, other)
    with pytest.raises(ValueError, match="not a torchvision or timm ViT checkpoint"):
        initial_variables(build_model("image", (32, 32, 3), 3, backbone="vit_s16", options={"depth": 1}),
                          jax.random.PRNGKey(0), other)
    with pytest.raises(FileNotFoundError):
        load_state_dict(os.path.join(str(tmp_path), "missing.pth"))
