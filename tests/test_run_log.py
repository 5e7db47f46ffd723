"""ucmkd_jax.run_log.EpochLog: JSON lines that never repeat or lose an epoch across a resume, and
TensorBoard scalars, written without importing PyTorch."""
import json
import os
import struct
import subprocess
import sys

from ucmkd_jax.run_log import EpochLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scalars(folder):
    """(tag, step, value) of every scalar in the TensorBoard event files under ``folder``, read
    with the record framing (length, crc, payload, crc) and tensorboardX's Event proto."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, event.step, round(v.simple_value, 6)) for v in event.summary.value]
    return out


def test_jsonl_after_a_resume_and_tensorboard_scalars(tmp_path):
    h = [{"epoch": 1, "train_loss": 0.5, "val_acc": 0.25}]
    log = EpochLog(str(tmp_path), "run")
    log.write(h[0], h)
    log.close()
    # a resumed process: its first write rewrites the file from the restored history
    h = h + [{"epoch": 2, "train_loss": 0.25, "val_acc": 0.5}]
    log = EpochLog(str(tmp_path), "run")
    log.write(h[1], h)
    log.close()
    assert [json.loads(line) for line in open(tmp_path / "run.jsonl")] == h
    assert sorted(_scalars(tmp_path / "tb" / "run")) == [
        ("train_loss", 1, 0.5), ("train_loss", 2, 0.25), ("val_acc", 1, 0.25), ("val_acc", 2, 0.5)]


def test_tensorboard_logging_does_not_import_torch(tmp_path):
    code = ("import sys; from ucmkd_jax.run_log import EpochLog; log = EpochLog(sys.argv[1], 'r'); "
            "log.write({'epoch': 1, 'loss': 1.0}); log.close(); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]
    assert os.listdir(tmp_path / "tb" / "r")
