"""Every seed a run derives from its run seed, named in one place.

A run seed ``s`` (``--first-seed`` .. ``--first-seed + --seeds - 1``) fixes everything random in
that run. The derivations below must agree between the files that use them (the in-memory and
the streaming protocol draw the same teacher order; ``train.fit`` and the benchmarks initialise a
method's own modules alike), so they live here, free of JAX and NumPy imports:

    student init            PRNGKey(s)                      protocol.train_student
    student batch order     SeedSequence([s, epoch])        data.streams / data.pipeline (seed s)
    teacher init            PRNGKey(teacher_seed(s))        protocol.pretrain_teacher
    teacher batch order     teacher_seed(s)                 protocol.pretrain_teacher, pipeline.protocol_streams
    method's own modules    PRNGKey(extra_init_seed(s))     train.build_state (regressors, fusion, ...)
    subsample draw          SeedSequence([s, SUBSAMPLE])    data.regimes
    regime pools and noise  SeedSequence([s, REGIME])       data.regimes
    precise BN batches      SeedSequence([s, epoch, PRECISE_BN])  train.fit (in-memory splits)
"""
from __future__ import annotations

__all__ = ["TEACHER_OFFSET", "EXTRA_INIT_OFFSET", "SUBSAMPLE", "REGIME", "PRECISE_BN", "teacher_seed",
           "extra_init_seed"]

TEACHER_OFFSET = 10_000  # teachers and students of one run seed never share a stream
EXTRA_INIT_OFFSET = 7919  # a prime: a method's own modules never share the student's init key
SUBSAMPLE = 0x5AB  # second entropy word of the subsample draw
REGIME = 0xD15  # second entropy word of the regime's pools (and the hard regime's noise)
PRECISE_BN = 0xB4  # third entropy word of the batches precise BatchNorm statistics are taken over


def teacher_seed(seed: int) -> int:
    """The seed of the teacher pre-trained for run seed ``seed`` (its init and batch order)."""
    return TEACHER_OFFSET + int(seed)


def extra_init_seed(seed: int) -> int:
    """The seed of the initialisation of a method's own modules (``MethodSpec.init_extra``)."""
    return int(seed) + EXTRA_INIT_OFFSET
