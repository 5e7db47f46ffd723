"""Batch streams: unpaired means an independent teacher stream; paired means partners."""
import numpy as np
import pytest

from ucmkd_jax.data import Split, eval_batches, make_synthetic, steps_per_epoch, train_batches


def _split(n, offset=0):
    # x encodes the sample index, so batches reveal which samples they hold
    return Split(np.arange(offset, offset + n, dtype=np.float32)[:, None], np.arange(n) % 3)


def test_unpaired_teacher_batches_are_not_the_partners():
    s, t = _split(64), _split(64, offset=1000)
    seq = np.random.SeedSequence(0)
    same = total = 0
    seen_t = []
    for b in train_batches(s, t, 8, seq, "unpaired"):
        same += int(np.sum(b["x_t"][:, 0] - 1000 == b["x_s"][:, 0]))
        total += 8
        seen_t.extend(b["x_t"][:, 0] - 1000)
    # independent permutations: about 1 in 64 coincidences by chance, far from all of them
    assert same <= total // 8
    assert sorted(seen_t) == list(range(64))  # still one pass over the teacher pool


def test_paired_teacher_batches_are_the_partners():
    s, t = _split(32), _split(32, offset=1000)
    for b in train_batches(s, t, 8, np.random.SeedSequence(1), "paired"):
        np.testing.assert_array_equal(b["x_t"][:, 0] - 1000, b["x_s"][:, 0])


def test_unpaired_cycles_a_shorter_teacher_pool_and_is_seeded():
    s, t = _split(40), _split(12, offset=1000)
    a = [b["x_t"].copy() for b in train_batches(s, t, 8, np.random.SeedSequence(3), "unpaired")]
    b = [b["x_t"].copy() for b in train_batches(s, t, 8, np.random.SeedSequence(3), "unpaired")]
    assert len(a) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_eval_batches_pad_and_mask():
    batches = list(eval_batches(_split(10), 4))
    assert [int(m.sum()) for _, _, m in batches] == [4, 4, 2]
    assert all(x.shape == (4, 1) for x, _, _ in batches)


def test_too_small_split_is_named():
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        steps_per_epoch(10, 64)


def test_synthetic_is_seeded_and_shaped():
    a, b = make_synthetic(0, n_train=32, n_val=8, n_test=8), make_synthetic(0, n_train=32, n_val=8, n_test=8)
    assert a.modalities["audio"].train.x.shape == (32, 32, 48, 1)
    assert a.modalities["video"].train.x.shape == (32, 2, 32, 32, 3)
    np.testing.assert_array_equal(a.modalities["video"].test.x, b.modalities["video"].test.x)
    np.testing.assert_array_equal(a.modalities["audio"].train.y, a.modalities["video"].train.y)  # paired
    assert not np.array_equal(make_synthetic(1, n_train=32, n_val=8, n_test=8).modalities["audio"].train.x,
                              a.modalities["audio"].train.x)


def test_prefetch_keeps_order_and_reraises():
    from ucmkd_jax.parallel import prefetch_to_device

    got = [int(b["i"]) for b in prefetch_to_device({"i": np.int32(k)} for k in range(7))]
    assert got == list(range(7))

    def broken():
        yield {"i": np.int32(0)}
        raise RuntimeError("corrupt shard 3")

    with pytest.raises(RuntimeError, match="corrupt shard 3"):
        list(prefetch_to_device(broken()))
    # abandoning the iterator early does not hang
    it = prefetch_to_device({"i": np.int32(k)} for k in range(100))
    next(it)
    it.close()


def test_keep_last_yields_the_partial_batch_with_as_many_teacher_rows():
    s, t = _split(20), _split(12, offset=1000)
    kept = list(train_batches(s, t, 8, np.random.SeedSequence(4), "unpaired", keep_last=True))
    assert [len(b["y_s"]) for b in kept] == [8, 8, 4] and [len(b["y_t"]) for b in kept] == [8, 8, 4]
    assert sorted(np.concatenate([b["x_s"][:, 0] for b in kept])) == list(range(20))  # every sample once
    dropped = list(train_batches(s, t, 8, np.random.SeedSequence(4), "unpaired"))
    assert [len(b["y_s"]) for b in dropped] == [8, 8]
    for a, b in zip(dropped, kept):  # the full batches are the same either way
        np.testing.assert_array_equal(a["x_s"], b["x_s"])
        np.testing.assert_array_equal(a["x_t"], b["x_t"])
    assert steps_per_epoch(20, 8, keep_last=True) == 3 and steps_per_epoch(16, 8, keep_last=True) == 2
    with pytest.raises(ValueError, match="partial last batch .4 of 8 rows. cannot be split over processes"):
        list(train_batches(s, t, 8, np.random.SeedSequence(4), "unpaired", rows=np.arange(4), keep_last=True))
