"""experiments/run.py end to end with ViTs: --preset vit_tiny (the Table 8 recipe on tiny ViTs)
on the embedded dataset, the student starting from a timm checkpoint file (--student-init)."""
import json
import os

import pytest

from experiments.run import main

torch = pytest.importorskip("torch", reason="the student checkpoint is written with torch: pip install -e '.[vit]'")
from benchmarks import torch_vit  # noqa: E402


def test_vit_preset_with_a_pretrained_student(tmp_path):
    try:  # the student of vit_tiny (head width 4, on 32 x 32 frames), at one block to compile faster
        src = torch_vit.timm_vit("vit_s16", (32, 32), 3, depth=1, head_width=4)
    except ImportError as e:
        pytest.skip(f"needs timm: pip install -e '.[vit]' ({e})")
    ckpt = str(tmp_path / "vit_s.pth")
    torch.save(src.state_dict(), ckpt)
    out = str(tmp_path / "run")
    records = main(["--preset", "vit_tiny", "--set", "model.vit_depth=1", "--epochs", "1", "--teacher-epochs", "1",
                    "--seeds", "1", "--methods", "ucmkd", "--student-init", ckpt, "--no-progress", "--out", out])
    (r,) = records
    assert r["method"] == "ucmkd" and 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["teacher_test_acc"] <= 1.0
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    m = cfg["model"]
    assert (m["teacher_backbone"], m["student_backbone"], m["latent_dim"], m["projection"]) == \
        ("vit_b16", "vit_s16", 48, "linear_bn_relu")
    assert m["student_init"] == ckpt and m["vit_depth"] == 1 and m["width"] == 4
    assert (cfg["optim"]["optimizer"], cfg["optim"]["lr"], cfg["method"]["fa"]["cost"]) == ("adamw", 1e-4, "l2")
    with pytest.raises(ValueError, match="student: .*vit_s.pth: the timm checkpoint is a ViT of width 24 and 1 "
                                         "blocks; the model's vit_s16 has width 24 and 2 blocks"):  # before training
        main(["--preset", "vit_tiny", "--epochs", "1", "--teacher-epochs", "1",
              "--seeds", "1", "--methods", "ce", "--student-init", ckpt, "--no-progress",
              "--out", str(tmp_path / "bad")])
