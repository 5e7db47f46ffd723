"""The embedded demo dataset ``synthetic``: two modalities generated from a seed, no download.

Each clip has a latent u = mu_y + sigma_u * noise (mu_y a class mean in R^L). The "audio"
modality renders u as a (32, 48, 1) spectrogram-like image: sum_l u_l * A_l over smooth random
time-frequency patterns A_l, plus pixel noise. The "video" modality renders the SAME u (so the
two are paired by index) as 2 frames of (32, 32, 3): sum_l u_l * V_l over smooth colour patterns,
each frame with its own random translation, plus clutter from a class-independent nuisance
latent and pixel noise. Both modalities carry the class only through u; their shapes, bases
and noise differ. The noise levels were fixed once, so that neither modality is trivially
separable; they were not tuned to favour any method. It is a demo, not evidence.
"""
from __future__ import annotations

import numpy as np

from ucmkd_jax.data.base import CrossModalDataset, ModalityData, Split

__all__ = ["make_synthetic", "SYNTHETIC_DEFAULTS"]

SYNTHETIC_DEFAULTS = dict(num_classes=6, n_train=1536, n_val=384, n_test=768, latent=8,
                          class_sep=1.0, latent_noise=0.9, audio_noise=1.0, video_noise=1.5,
                          video_clutter=1.0)


def _smooth_patterns(rng, n, shape, channels, cutoff):
    """n random low-frequency patterns of (H, W, C), unit RMS (Fourier-domain low-pass)."""
    h, w = shape
    noise = rng.standard_normal((n, h, w, channels))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    lowpass = (np.sqrt(fy**2 + fx**2) < cutoff)[None, :, :, None]
    pats = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * lowpass, axes=(1, 2)))
    return pats / pats.reshape(n, -1).std(axis=1)[:, None, None, None]


def make_synthetic(seed: int = 0, **overrides) -> CrossModalDataset:
    """Generate the dataset. Same seed, same arrays. Returns a paired ``CrossModalDataset`` with
    modalities "audio" (N, 32, 48, 1) and "video" (N, 2, 32, 32, 3), float32."""
    p = dict(SYNTHETIC_DEFAULTS, **overrides)
    rng = np.random.default_rng(seed)
    k, latent = p["num_classes"], p["latent"]
    means = rng.standard_normal((k, latent)) * p["class_sep"]
    audio_basis = _smooth_patterns(rng, latent, (32, 48), 1, cutoff=0.12)
    video_basis = _smooth_patterns(rng, latent, (40, 40), 3, cutoff=0.10)
    clutter_basis = _smooth_patterns(rng, latent, (40, 40), 3, cutoff=0.15)

    def render(n):
        y = rng.integers(0, k, n)
        u = means[y] + p["latent_noise"] * rng.standard_normal((n, latent))
        audio = np.einsum("nl,lhwc->nhwc", u, audio_basis) / np.sqrt(latent)
        audio += p["audio_noise"] * rng.standard_normal(audio.shape)
        frames = []
        for _ in range(2):
            nuisance = rng.standard_normal((n, latent)) * p["video_clutter"]
            big = (np.einsum("nl,lhwc->nhwc", u, video_basis)
                   + np.einsum("nl,lhwc->nhwc", nuisance, clutter_basis)) / np.sqrt(latent)
            dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
            crop = np.stack([big[i, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
            frames.append(crop + p["video_noise"] * rng.standard_normal(crop.shape))
        video = np.stack(frames, axis=1)
        return audio.astype(np.float32), video.astype(np.float32), y.astype(np.int32)

    splits = {name: render(p[f"n_{name}"]) for name in ("train", "val", "test")}
    mods = {
        "audio": ModalityData("audio", *(Split(splits[s][0], splits[s][2]) for s in ("train", "val", "test"))),
        "video": ModalityData("video", *(Split(splits[s][1], splits[s][2]) for s in ("train", "val", "test"))),
    }
    return CrossModalDataset("synthetic", k, mods, paired=True,
                             class_names=[f"class_{i}" for i in range(k)])
