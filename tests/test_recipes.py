"""--preset recipes (ucmkd_jax/recipes.py): the authors' ViT recipe over a dataset's preset, the
flags after it, and the models build_models makes of it (built, never compiled)."""
import dataclasses

import pytest

from experiments import run
from ucmkd_jax.config import ExperimentConfig, ModelConfig, get_preset
from ucmkd_jax.data.base import ModalityData, Split
from ucmkd_jax.experiment import build_models
from ucmkd_jax.models.projection import ProjectedEncoder
from ucmkd_jax.overrides import ConfigError
from ucmkd_jax.recipes import RECIPES, apply_recipe


@pytest.mark.parametrize("dataset", ["ave", "ravdess"])
@pytest.mark.parametrize("name,teacher,latent", [("vit_b_to_s", "vit_b16", 768), ("vit_l_to_s", "vit_l16", 1024)])
def test_vit_recipes_are_the_releases(dataset, name, teacher, latent):
    base = get_preset(dataset)
    cfg = apply_recipe(base, name)
    m, t, o = cfg.model, cfg.train, cfg.optim
    assert (m.teacher_backbone, m.student_backbone, m.latent_dim, m.projection) == \
        (teacher, "vit_s16", latent, "linear_bn_relu")
    assert m.vit_audio_size == (256, 1024) and m.width == 64 and m.vit_depth is None
    assert (t.batch_size, t.eval_batch_size, t.epochs, t.teacher_epochs) == (32, 32, 30, 20)
    assert (o.optimizer, o.lr, o.weight_decay, o.warmup_epochs, o.end_lr) == ("adamw", 1e-4, 1e-5, 5.0, 1e-5)
    assert cfg.method.fa.cost == "l2"
    # the rest of the dataset's preset stays
    assert (cfg.dataset, cfg.streaming, cfg.direction, cfg.seeds, cfg.methods) == \
        (dataset, base.streaming, base.direction, base.seeds, base.methods)


def test_preset_flag_then_short_flags_then_set():
    _, cfg = run.parse(["--dataset", "ave", "--data-dir", "D", "--preset", "vit_b_to_s", "--teacher-init", "B.pth",
                        "--student-init", "S.safetensors", "--epochs", "3", "--set", "model.video_frames=mean_pixels",
                        "--set", "model.vit_audio_size=256,512"])
    assert (cfg.model.teacher_init, cfg.model.student_init) == ("B.pth", "S.safetensors")
    assert cfg.train.epochs == 3 and cfg.train.teacher_epochs == 20
    assert cfg.model.video_frames == "mean_pixels" and cfg.model.vit_audio_size == (256, 512)
    with pytest.raises(SystemExit):
        run.parse(["--preset", "vit_q_to_s"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        apply_recipe(ExperimentConfig(), "nope")
    with pytest.raises(ConfigError, match="vit_audio_size must be H,W, multiples of 16"):
        ModelConfig(vit_audio_size=(257, 1004))
    assert set(RECIPES) == {"vit_b_to_s", "vit_l_to_s", "vit_tiny"}


def _side(modality, shape):
    import numpy as np

    split = Split(np.zeros((4,) + shape, np.float32), np.arange(4) % 2)
    return ModalityData(modality, split, split, None)


def test_build_models_of_a_vit_recipe():
    """Table 8 at AVE shapes: options per side (the spectrogram resize on the audio side only),
    the student projected by Linear-BN-ReLU, and XLA attention for a student that the unrolled
    hypergradient differentiates twice."""
    cfg = apply_recipe(get_preset("ave"), "vit_b_to_s")
    audio, video = _side("audio", (257, 1004, 1)), _side("video", (2, 224, 224, 3))
    teacher, student = build_models(cfg, audio, video, 28)
    assert teacher.encoder.arch == "vit_b16" and teacher.encoder.input_size == (256, 1024)
    assert teacher.encoder.pos_grid == (16, 64) and teacher.latent_dim == 768
    assert isinstance(student.encoder, ProjectedEncoder) and student.encoder.kind == "linear_bn_relu"
    trunk = student.encoder.trunk
    assert (trunk.arch, trunk.dim, trunk.input_size, trunk.pos_grid) == ("vit_s16", 384, None, (14, 14))
    assert trunk.attention == "auto" and student.video_frames == "per_frame"
    unrolled = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, hypergrad="unrolled"))
    teacher, student = build_models(unrolled, video, audio, 28)  # v2a
    assert student.encoder.trunk.attention == "xla" and teacher.encoder.attention == "auto"
    assert student.encoder.trunk.input_size == (256, 1024) and teacher.encoder.input_size is None


def test_per_side_vits_without_a_recipe_meet_at_the_teachers_width():
    """--teacher-backbone vit_b16 --student-backbone vit_s16 without --preset (latent_dim None):
    the student is projected to the teacher's width, as the release does, instead of the run
    being refused after the teacher's pre-training."""
    base = get_preset("ave")
    model = dataclasses.replace(base.model, teacher_backbone="vit_b16", student_backbone="vit_s16", width=4,
                                vit_depth=1, latent_dim=None)
    cfg = dataclasses.replace(base, model=model)
    teacher, student = build_models(cfg, _side("audio", (32, 64, 1)), _side("video", (2, 32, 32, 3)), 28)
    assert (teacher.latent_dim, student.latent_dim) == (48, 48)
    assert isinstance(student.encoder, ProjectedEncoder) and student.encoder.trunk.dim == 24
    assert not isinstance(teacher.encoder, ProjectedEncoder)
