"""build_model: the backbone registry, the choice of encoder and stem from the shape, latent
projections, describe_model, and the refusals (nothing here is compiled: shapes only)."""
import jax
import pytest

from ucmkd_jax.models import (BACKBONES, ProjectedEncoder, build_model, default_backbone, describe_model,
                              register_backbone)



@pytest.mark.parametrize("kind,shape,backbone,stem", [
    ("image", (8, 8, 1), "resnet18", "small"), ("image", (32, 32, 3), "resnet18", "small"),
    ("image", (64, 80, 1), "resnet18", "imagenet"), ("image", (63, 200, 3), "resnet18", "small"),
    ("video", (2, 8, 8, 3), "resnet18", "small"), ("video", (4, 112, 112, 3), "resnet18", "imagenet"),
])
def test_default_encoder_and_stem_from_the_shape(kind, shape, backbone, stem):
    model = build_model(kind, shape, 5, width=64, latent_dim=512)
    info = describe_model(model)
    assert (info["backbone"], info["stem"], info["latent_dim"], info["projection"]) == (backbone, stem, 512, False)


def test_latent_projection_and_mlp():
    r50 = build_model("image", (64, 64, 3), 5, backbone="resnet50", width=2, latent_dim=512)
    assert isinstance(r50.encoder, ProjectedEncoder) and r50.encoder.trunk.out_dim == 64 and r50.latent_dim == 512
    assert r50.encoder.stage_channels == (8, 16, 32, 64)  # the feature-map baselines see the trunk's maps
    variables = jax.eval_shape(r50.init, jax.random.PRNGKey(0))  # shapes only: nothing compiled
    assert variables["params"]["encoder"]["projection"]["kernel"].shape == (64, 512)
    assert variables["params"]["head"]["kernel"].shape == (512, 5)
    mlp = build_model("vector", (7,), 5, width=4, latent_dim=24, mlp_depth=3)
    assert describe_model(mlp) == {"kind": "vector", "sample_shape": [7], "latent_dim": 24, "projection": False,
                                       "backbone": "mlp", "hidden": 16, "depth": 3}
    assert build_model("image", (8, 8, 1), 5, backbone=default_backbone("image", "resnet34"),
                       width=64).encoder.stage_sizes == (3, 4, 6, 3)


def test_the_registry_decides_what_each_backbone_encodes():
    assert set(BACKBONES) >= {"resnet18", "resnet34", "resnet50", "mlp"}
    assert BACKBONES["mlp"].modalities == ("vector",) and "video" in BACKBONES["resnet18"].modalities
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("mlp", ("vector",))(lambda *a: None)
    with pytest.raises(ValueError, match="unknown backbone 'resnet7'"):
        build_model("image", (8, 8, 3), 3, backbone="resnet7")
    with pytest.raises(ValueError, match="resnet50 cannot encode \\(N, D\\) vectors"):
        build_model("vector", (5,), 3, backbone="resnet50")


def test_build_models_of_the_config_per_side():
    """experiment.build_models: each side its own backbone and the config's latent size."""
    import dataclasses


    from ucmkd_jax.config import PRESETS, ModelConfig
    from ucmkd_jax.data.arrays import make_arrays_dataset, toy_arrays
    from ucmkd_jax.experiment import build_models

    frames, vector = toy_arrays((2, 8, 8, 3), 3, (48, 12, 12), seed=3), toy_arrays((12,), 3, (48, 12, 12), seed=1)
    ds = make_arrays_dataset(frames, vector, log=None)
    cfg = dataclasses.replace(PRESETS["arrays"], model=ModelConfig(width=2, latent_dim=16))
    teacher, student = build_models(cfg, ds.modalities["teacher"], ds.modalities["student"], ds.num_classes)
    assert (teacher.modality, teacher.name, teacher.latent_dim) == ("video", "teacher", 16)
    assert (student.modality, student.name, student.latent_dim) == ("vector", "student", 16)
    assert not isinstance(teacher.encoder, ProjectedEncoder)  # ResNet-18 at width 2 pools to 16 already
    assert describe_model(student)["backbone"] == "mlp"
    alone = make_arrays_dataset(None, vector, log=None)
    assert build_models(cfg, None, alone.modalities["student"], alone.num_classes)[0] is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_model("vector", (3,), 2, dtype="float16")
    assert PRESETS["arrays"].direction == "teacher2student" and PRESETS["arrays"].model.latent_dim == 512
