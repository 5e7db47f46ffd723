"""Smoke test of benchmarks/epoch_bench.py (shards -> streaming pipeline -> compiled step), so that the
script cannot rot: tiny shapes, one method, one epoch."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("tensorflow_datasets", reason="epoch_bench writes TFDS shards: the data extra is needed")

from benchmarks import epoch_bench  # noqa: E402

CLIPS, TRAIN_FRACTION, BATCH = 24, 0.9, 4
TINY = ["--small", "--arch", "resnet10", "--batch", str(BATCH), "--width", "8", "--audio-hw", "32x64", "--image-size", "32",
        "--clips", str(CLIPS), "--frames", "3", "--train-fraction", str(TRAIN_FRACTION), "--methods", "ce",
        "--epochs", "1", "--read-epochs", "1"]


def test_epoch_bench_counts_every_batch(tmp_path, capsys):
    out = tmp_path / "epoch.json"
    records = epoch_bench.main(TINY + ["--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(records))
    timed, read = records
    train = int(round(TRAIN_FRACTION * CLIPS))  # 22 train clips: 5 full batches of 4, the rest dropped
    assert timed["train_clips"] == train and timed["shards"]["train"] == train
    assert timed["steps"] == train // BATCH == read["steps"]
    assert timed["arch"] == "resnet10" and timed["method"] == "ce" and timed["epoch"] == 0 and read["read_only"]
    # the stored frames are cropped, not resized, to the image size
    assert timed["shards"]["frame_hw"] == list(epoch_bench.stored_frame_hw(32)) == [37, 49]
    assert timed["audio_hw"] == [32, 64] and timed["video_thw"] == [2, 32, 32]
    assert 0 < timed["first_batch_s"] <= timed["input_wait_s"] < timed["wall_s"]
    assert timed["step_s"] < timed["wall_s"]
    assert math.isclose(timed["input_share"], timed["input_wait_s"] / timed["wall_s"])
    assert math.isclose(timed["steps_per_s"], timed["steps"] / timed["wall_s"])
    assert timed["cpu_cores_used"] > 0 and timed["cpus_available"] >= 1
    assert math.isclose(timed["projected_epoch_s"], (epoch_bench.CREMA_D_TRAIN_CLIPS // BATCH) / timed["steps_per_s"])
    assert math.isfinite(timed["loss_last"]) and timed["compile_s"] > 0
    table = capsys.readouterr().out
    assert "| ce | 0 | 5 |" in table and "(stream alone)" in table
