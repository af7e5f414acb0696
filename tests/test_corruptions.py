"""advrep.corruptions: the generated corruptions (what each stands for, the contract, distortion
growing with severity, identity at zero strength, hand-checked formulas, independent oracles:
Pillow's libjpeg and BOX resampling, scipy's filters, zoom, sampling and FFT, matplotlib's
HSV), the official CIFAR-10-C layout written here in miniature, and the corruption evaluation on
models with known answers, including which numbers may be called RobustBench's."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv
from PIL import Image
from scipy import fft, ndimage, signal

from advrep import corruptions as C
from advrep.errors import ConfigError, DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost_like", "fog", "elastic_transform"}
# the same operation on every channel (with the same draws): a grey colour image and its
# 1-channel copy must agree
CHANNEL_BLIND = ["gaussian_blur", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "snow", "fog",
                 "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]
# the parameter at which each corruption does nothing (shot noise: almost)
ZERO = {"gaussian_noise": 0.0, "shot_noise": 1e9, "impulse_noise": 0.0, "defocus_blur": (0.5, 1e-3),
        "glass_blur": (0, 1, 0), "motion_blur": (0, 1), "zoom_blur": 1.005, "snow": (0, 0, 1, 2, 8, 3, 1),
        "frost_like": (1, 0), "fog": (0, 2), "brightness": 0.0, "contrast": 1.0, "elastic_transform": (0, 0, 0),
        "pixelate": 1.0, "speckle_noise": 0.0, "gaussian_blur": 0, "saturate": (1, 0)}


@pytest.fixture(scope="module")
def cifar(shared) -> torch.Tensor:
    """128 real CIFAR-10 test images, float in [0, 1]: severity order is a property of natural
    images (on white noise, pixelate's resampling error does not grow with severity)."""
    with np.load(shared("cifar10") / "test.npz") as f:
        x = f["x"][:128]
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def mnist(shared) -> torch.Tensor:
    with np.load(shared("mnist") / "test.npz") as f:
        x = f["x"][:32]
    return torch.from_numpy(x)[:, None].float() / 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: a second intra-op thread only adds waiting (much of it on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def corrupt(x, name, severity, seed=0):
    return C.generate(x, name, severity, generator=gen(seed, x.device.type))


def apply(x, name, param, seed=0):
    """One corruption at an arbitrary parameter (the table's function, unclipped)."""
    return C.CORRUPTIONS[name].fn(x, param, gen(seed, x.device.type))


def dissimilarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - SSIM (Wang et al. 2004: 11x11 Gaussian window of sigma 1.5, per channel, valid part)."""
    k = C.gaussian_kernel(1.5, 5).to(a)

    def blur(t):  # the separable window, one channel at a time
        flat = t.flatten(0, 1)[:, None]
        return F.conv2d(F.conv2d(flat, k.view(1, 1, -1, 1)), k.view(1, 1, 1, -1))

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return 1 - ssim.mean().item()


# ------------------------------------------------------------------- the contract


def test_the_generated_set_stands_for_the_15_benchmark_corruptions_and_names_its_substitute():
    assert [C.CORRUPTIONS[n].stands_for for n in C.GENERATED_BENCHMARK] == list(C.BENCHMARK)
    assert len(C.BENCHMARK) == 15 and C.GENERATED == C.GENERATED_BENCHMARK + C.EXTRAS
    assert C.EXTRAS == ("speckle_noise", "gaussian_blur", "saturate") and set(C.EXTRAS) < set(C.HELD_OUT)
    assert not set(C.BENCHMARK) & set(C.HELD_OUT)
    for name, c in C.CORRUPTIONS.items():
        assert c.fidelity in C.FIDELITIES and len(c.params) == 5
        # a name claims to be the reference's corruption only when it is not a substitute
        assert (name == c.stands_for) == (c.fidelity != "substitute"), name
    assert C.CORRUPTIONS["frost_like"].stands_for == "frost"
    assert {n for n, c in C.CORRUPTIONS.items() if c.fidelity != "exact"} == {
        "motion_blur", "snow", "frost_like", "elastic_transform"}


def test_available_leaves_saturate_to_colour_images():
    assert C.available(3) == list(C.GENERATED)
    assert C.available(1) == [n for n in C.GENERATED if n != "saturate"]
    assert len(C.GENERATED) == 18
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        C.available(2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", C.GENERATED)
def test_output_shape_dtype_device_range_and_determinism(cifar, name, device):
    x = cifar[:4].to(device)
    for severity in C.SEVERITIES:
        out = corrupt(x, name, severity)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)
        assert torch.equal(out, corrupt(x, name, severity)), "same generator seed, same images"
        assert torch.equal(out, corrupt(x, name, severity, seed=1)) == (name not in RANDOM)
    for dtype in (torch.float64, torch.bfloat16):  # computed in at least fp32, returned as given
        out = corrupt(x.to(dtype), name, 5)
        assert out.dtype == dtype and out.min() >= 0 and out.max() <= 1
    if device == "cuda":
        with pytest.raises(ConfigError, match="torch.Generator"):
            C.generate(x, name, 1, generator=gen(0, "cpu"))


# glass blur, elastic and saturate: their reference parameters are not ordered by one strength
@pytest.mark.parametrize("name", [n for n in C.GENERATED if n not in ("glass_blur", "elastic_transform", "saturate")])
def test_distortion_grows_with_severity(cifar, name):
    x = cifar[:32].double()
    dist = [dissimilarity(corrupt(x, name, s), x) for s in C.SEVERITIES]
    assert 0 < dist[0] and all(a <= b + 1e-6 for a, b in zip(dist, dist[1:])), dist
    assert dist[0] < dist[-1]


# not JPEG: even quality 100 halves the chroma resolution (test_jpeg_quality_100_is_near_identity...)
@pytest.mark.parametrize("name", [n for n in C.GENERATED if n != "jpeg_compression"])
def test_zero_strength_is_the_identity(cifar, name):
    x = (cifar[:4].double() * 255).round() / 255  # 8-bit levels in float64
    out = apply(x, name, ZERO[name])
    tolerance = 1e-3 if name == "shot_noise" else 1e-9
    torch.testing.assert_close(out.clamp(0, 1), x, atol=tolerance, rtol=0)


def test_errors_name_the_valid_choices(cifar, mnist):
    with pytest.raises(ConfigError, match="unknown corruption 'frost'.*gaussian_noise, shot_noise"):
        corrupt(cifar, "frost", 1)
    with pytest.raises(ConfigError, match="'saturate' needs 3 channels.*gaussian_noise"):
        corrupt(mnist, "saturate", 1)
    for severity in (0, 6, "3", 2.5):
        with pytest.raises(ConfigError, match="severity must be one of 1, 2, 3, 4, 5"):
            corrupt(cifar, "contrast", severity)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        corrupt(cifar[:, :2], "contrast", 1)
    with pytest.raises(ConfigError, match=r"x.float\(\) / 255"):
        corrupt((cifar * 255).byte(), "contrast", 1)


@pytest.mark.parametrize("name", CHANNEL_BLIND)
def test_grey_colour_image_equals_its_grayscale_version(mnist, name):
    x = mnist[:8]
    for severity in C.SEVERITIES:
        grey = corrupt(x, name, severity)
        colour = corrupt(x.expand(-1, 3, -1, -1).contiguous(), name, severity)
        torch.testing.assert_close(colour, grey.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


def test_grayscale_images_take_every_available_corruption(mnist):
    for name in C.available(1):
        dist = [(corrupt(mnist, name, s) - mnist).norm().item() for s in (1, 5)]
        assert 0 < dist[0] and 0 < dist[1], name


# -------------------------------------------------------------------------- noise


def test_noise_statistics_match_their_parameters():
    x = torch.full((4, 3, 64, 64), 0.5, dtype=torch.float64)
    for s, c in zip(C.SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10)):
        assert (corrupt(x, "gaussian_noise", s) - x).std().item() == pytest.approx(c, rel=0.03)
    for s, c in zip(C.SEVERITIES, (0.06, 0.10, 0.12, 0.16, 0.20)):
        assert ((corrupt(x, "speckle_noise", s) - x) / x).std().item() == pytest.approx(c, rel=0.03)
    for s, c in zip(C.SEVERITIES, (500, 250, 100, 75, 50)):
        out = corrupt(x, "shot_noise", s)  # Poisson(x c) / c: mean x, variance x / c, on a 1/c grid
        assert out.mean().item() == pytest.approx(0.5, abs=0.003)
        assert out.var().item() == pytest.approx(0.5 / c, rel=0.05)
        assert torch.allclose(out * c, (out * c).round())
    for s, c in zip(C.SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07)):
        out = corrupt(x, "impulse_noise", s)
        changed = out != x
        assert changed.double().mean().item() == pytest.approx(c, rel=0.08)
        assert set(out[changed].unique().tolist()) == {0.0, 1.0}
        assert (out == 1).double().mean().item() == pytest.approx(c / 2, rel=0.12)


# ------------------------------------------------------------------------- colour


def test_hsv_agrees_with_matplotlib_and_round_trips():
    rgb = torch.rand(5, 3, 6, 6, generator=gen(3), dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.4  # a grey: hue and saturation 0
    rgb[0, :, 0, 1] = 0.0  # black
    hsv = C.rgb_to_hsv(rgb)
    expected = mpl_rgb_to_hsv(rgb.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(hsv.permute(0, 2, 3, 1).numpy(), expected, atol=1e-12)
    torch.testing.assert_close(C.hsv_to_rgb(hsv), rgb, atol=1e-12, rtol=0)


def pixel(r, g, b):
    return torch.tensor([r, g, b], dtype=torch.float64).view(1, 3, 1, 1)


def test_brightness_and_saturate_on_hand_checked_pixels():
    p = pixel(0.5, 0.25, 0.25)  # h 0, s 0.5, v 0.5
    # brightness severity 1 (+0.05 on v): v 0.55, s 0.5 -> (0.55, 0.275, 0.275)
    torch.testing.assert_close(corrupt(p, "brightness", 1), pixel(0.55, 0.275, 0.275))
    # saturate severity 3 (s * 1.5): s 0.75 -> (0.5, 0.125, 0.125); severity 2 (s * 0.1): s 0.05
    torch.testing.assert_close(corrupt(p, "saturate", 3), pixel(0.5, 0.125, 0.125))
    torch.testing.assert_close(corrupt(p, "saturate", 2), pixel(0.5, 0.475, 0.475))
    # severity 5 (s * 2.5 + 0.2, capped at 1): s 1 -> (0.5, 0, 0)
    torch.testing.assert_close(corrupt(p, "saturate", 5), pixel(0.5, 0.0, 0.0))
    grey = torch.tensor([[[[0.2, 0.9]]]], dtype=torch.float64)  # 1 channel: intensity + c, capped
    torch.testing.assert_close(corrupt(grey, "brightness", 5), torch.tensor([[[[0.5, 1.0]]]], dtype=torch.float64))


def test_brightness_raises_the_mean_and_saturate_moves_saturation_as_the_reference(cifar):
    means = [corrupt(cifar, "brightness", s).mean().item() for s in C.SEVERITIES]
    assert cifar.mean().item() < means[0] and all(a < b for a, b in zip(means, means[1:]))
    sat = [C.rgb_to_hsv(corrupt(cifar, "saturate", s))[:, 1].mean().item() for s in C.SEVERITIES]
    clean = C.rgb_to_hsv(cifar)[:, 1].mean().item()
    # severities 1-2 desaturate (x0.3, x0.1), 3-5 saturate (x1.5, x2 + 0.1, x2.5 + 0.2)
    assert sat[1] < sat[0] < clean < sat[2] < sat[3] < sat[4]


def test_contrast_shrinks_each_channel_towards_its_mean(cifar):
    x = torch.tensor([0.0, 0.2, 0.4, 0.6], dtype=torch.float64).view(1, 1, 2, 2)  # mean 0.3
    torch.testing.assert_close(corrupt(x, "contrast", 2), torch.tensor([0.15, 0.25, 0.35, 0.45],
                                                                       dtype=torch.float64).view(1, 1, 2, 2))
    for s, c in zip(C.SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15)):
        out = corrupt(cifar, "contrast", s)  # stays between min and max: nothing is clipped
        torch.testing.assert_close(out.std((2, 3)), cifar.std((2, 3)) * c, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.mean((2, 3)), cifar.mean((2, 3)), atol=1e-5, rtol=1e-4)  # per channel


# --------------------------------------------------------------------------- blur


def test_blur_kernels_sum_to_one_and_have_the_reference_shape():
    for sigma in (0.4, 0.6, 0.7, 0.8, 1.0):
        k = C.gaussian_kernel(sigma)
        assert len(k) == 2 * int(4 * sigma + 0.5) + 1 and k.sum().item() == pytest.approx(1, abs=1e-12)
    k = C.gaussian_kernel(1.0)
    assert k[4].item() == pytest.approx(1 / sum(math.exp(-t * t / 2) for t in range(-4, 5)))
    for radius, alias in ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)):
        assert C.disk_kernel(radius, alias).sum().item() == pytest.approx(1, abs=1e-12)
    # radius < 1 keeps the centre only: the kernel is the 3x3 Gaussian of sigma alias_blur
    e = math.exp(-1 / (2 * 0.4 ** 2))
    g = torch.tensor([e, 1, e], dtype=torch.float64) / (1 + 2 * e)
    torch.testing.assert_close(C.disk_kernel(0.3, 0.4), centred(g[:, None] * g[None, :], 5))
    # radius 1.5 covers the 3x3 square; sigma 0.1 hardly smooths it
    torch.testing.assert_close(C.disk_kernel(1.5, 0.1), centred(torch.full((3, 3), 1 / 9, dtype=torch.float64), 7), atol=1e-12, rtol=0)
    # radius 1 is the plus of 5 pixels, smoothed by sigma 0.2 (neighbour weight e^-12.5)
    plus = centred(torch.tensor([[0, 0.2, 0], [0.2, 0.2, 0.2], [0, 0.2, 0]], dtype=torch.float64), 5)
    e = math.exp(-12.5)
    g = np.array([e, 1, e]) / (1 + 2 * e)
    expected = signal.convolve2d(plus.numpy(), np.outer(g, g), mode="same")
    np.testing.assert_allclose(C.disk_kernel(1, 0.2).numpy(), expected, atol=1e-15)


def centred(small: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - len(small)) // 2
    return torch.nn.functional.pad(small.double(), (pad,) * 4)


def test_blurs_agree_with_scipy(cifar):
    x = cifar[:4].double()
    for s, sigma in zip(C.SEVERITIES, (0.4, 0.6, 0.7, 0.8, 1.0)):
        expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(corrupt(x, "gaussian_blur", s).numpy(), expected.clip(0, 1), atol=1e-12)
    kernel = C.disk_kernel(1.5, 0.1).numpy()
    expected = ndimage.convolve(x.numpy(), kernel[None, None], mode="mirror")  # cv2's BORDER_REFLECT_101
    np.testing.assert_allclose(corrupt(x, "defocus_blur", 5).numpy(), expected.clip(0, 1), atol=1e-12)
    flat = torch.full((2, 3, 8, 8), 77 / 255, dtype=torch.float64)  # an 8-bit level, for pixelate
    for name in ("gaussian_blur", "defocus_blur", "zoom_blur", "pixelate"):
        torch.testing.assert_close(corrupt(flat, name, 5), flat)


def high_frequency_energy(x: torch.Tensor) -> float:
    """Energy of the 8x8 block DCT coefficients with u + v >= 8 (scipy's DCT, not advrep's)."""
    n, c, h, w = x.shape
    blocks = x.numpy().reshape(n, c, h // 8, 8, w // 8, 8).transpose(0, 1, 2, 4, 3, 5)
    coef = fft.dctn(blocks, axes=(-2, -1), norm="ortho")
    u, v = np.meshgrid(range(8), range(8), indexing="ij")
    return float((coef[..., (u + v) >= 8] ** 2).sum())


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "jpeg_compression"])
def test_blurs_and_compression_remove_high_frequencies_more_with_severity(cifar, name):
    # not pixelate: its nearest-neighbour blocks add edges as they remove detail
    energy = [high_frequency_energy(corrupt(cifar, name, s)) for s in C.SEVERITIES]
    assert high_frequency_energy(cifar) > energy[0]
    assert all(a > b for a, b in zip(energy, energy[1:])), energy


def test_glass_blur_swaps_pixels_in_the_references_order():
    x = torch.rand(3, 2, 9, 7, generator=gen(5), dtype=torch.float64)
    sigma, delta, iterations = 0.0, 1, 2  # no blur: only the swaps, which are checked here
    out = apply(x, "glass_blur", (sigma, delta, iterations), seed=4)
    g, expected = gen(4), (x * 255 + 1e-4).floor().numpy() / 255
    visits = [(r, c) for r in range(9 - delta, delta, -1) for c in range(7 - delta, delta, -1)]
    for _ in range(iterations):  # the reference's loop, one image at a time, with the same draws
        shift = torch.randint(-delta, delta, (len(visits), 2, 3), generator=g).numpy()
        for n in range(3):
            for k, (r, c) in enumerate(visits):
                r2, c2 = r + shift[k, 0, n], c + shift[k, 1, n]
                expected[n, :, [r, r2], [c, c2]] = expected[n, :, [r2, r], [c2, c]]
    np.testing.assert_array_equal(out.numpy(), expected)
    assert (shift >= -1).all() and (shift <= 0).all()  # numpy's randint(-1, 1): -1 or 0


def test_glass_blur_severities_order_the_blur_and_the_iterations(cifar):
    x = cifar[:32].double()
    dist = {s: dissimilarity(corrupt(x, "glass_blur", s), x) for s in C.SEVERITIES}
    # a second round of swaps at the same blur distorts more (severities 2 -> 4, 3 -> 5)...
    assert dist[2] < dist[4] and dist[3] < dist[5]
    # ...but a stronger blur before the swaps makes swapped neighbours alike, so severity 3
    # distorts less than 1 and 2: the reference's parameters are not one monotone strength
    assert dist[3] < dist[2] < dist[1] + 0.01
    # without the swaps, what is left grows with the blur
    still = [dissimilarity(apply(x, "glass_blur", (sigma, 1, 0)), x) for sigma in (0.05, 0.25, 0.4)]
    assert still[0] < 1e-9 < still[1] < still[2]


def test_motion_blur_kernel_and_offsets_are_imagemagicks():
    k = C.motion_kernel(6, 1.5)
    assert len(k) == 13 and k.sum().item() == pytest.approx(1)
    torch.testing.assert_close(k / k[0], torch.exp(-torch.arange(13.0, dtype=torch.float64) ** 2 / 4.5))
    assert len(C.motion_kernel(8, 2)) == 17 and len(C.motion_kernel(0.5, 2)) == 3
    x = torch.rand(1, 2, 10, 12, generator=gen(2), dtype=torch.float64)
    w = C.motion_kernel(2, 1)  # 5 taps

    def trail(rows, cols):  # sum over taps of w_i x[rows(i), cols(i)], clamped to the edge
        return sum(w[i] * x[..., rows(i).clamp(0, 9)[:, None], cols(i).clamp(0, 11)[None, :]] for i in range(5))

    r, c = torch.arange(10), torch.arange(12)
    # 0 degrees: the pixels to the right; 90: below; -45: up and right, offsets ceil(0.707 i - 0.5)
    torch.testing.assert_close(C.motion_blur(x, 2, 1, torch.tensor([0.0])), trail(lambda i: r, lambda i: c + i))
    torch.testing.assert_close(C.motion_blur(x, 2, 1, torch.tensor([90.0])), trail(lambda i: r + i, lambda i: c))
    step = [0, 1, 1, 2, 3]  # ceil(i / sqrt(2) - 0.5) for i = 0..4
    torch.testing.assert_close(C.motion_blur(x, 2, 1, torch.tensor([-45.0])),
                               trail(lambda i: r - step[i], lambda i: c + step[i]))
    flat = torch.full((2, 1, 8, 8), 0.7, dtype=torch.float64)
    torch.testing.assert_close(C.motion_blur(flat, 9, 2.5, torch.tensor([10.0, -30.0])), flat)


def reference_clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """The reference's clipped_zoom on an (H, W, C) array, with scipy."""
    h = img.shape[0]
    crop = int(np.ceil(h / factor))
    top = (h - crop) // 2
    out = ndimage.zoom(img[top:top + crop, top:top + crop], (factor, factor, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim:trim + h, trim:trim + h]


def test_zoom_blur_equals_the_reference_with_scipy(cifar, mnist):
    for x in (cifar[:4].double(), mnist[:4].double()):
        images = x.permute(0, 2, 3, 1).numpy()
        for s, end in zip(C.SEVERITIES, (1.06, 1.11, 1.16, 1.21, 1.26)):
            factors = np.arange(1, end, 0.01)
            expected = [(img + sum(reference_clipped_zoom(img, z) for z in factors)) / (len(factors) + 1)
                        for img in images]
            np.testing.assert_allclose(corrupt(x, "zoom_blur", s).permute(0, 2, 3, 1).numpy(),
                                       np.stack(expected).clip(0, 1), atol=1e-12)
    assert len(np.arange(1, 1.06, 0.01)) == 7  # 1.00..1.06: numpy's float step includes the end
    torch.testing.assert_close(C.zoom_matrix(32, 1.0), torch.eye(32, dtype=torch.float64))


# ------------------------------------------------------------------------ weather


def test_plasma_fractal_is_diamond_square():
    # decay 1e4: each level's noise is 1e-8 of the one before, so every point but the first
    # level's is, to 1e-7, the mean its step computed
    m = C.plasma_fractal(3, 16, 1e4, gen(1))
    assert m.shape == (3, 16, 16)
    torch.testing.assert_close(m.amin((1, 2)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(m.amax((1, 2)), torch.ones(3, dtype=torch.float64))
    for step in (8, 4, 2):
        h = step // 2
        corners, centres = m[:, ::step, ::step], m[:, h::step, h::step]
        square = (corners + corners.roll(-1, 1) + corners.roll(-1, 2) + corners.roll((-1, -1), (1, 2))) / 4
        torch.testing.assert_close(centres, square, atol=1e-6, rtol=0)
        edges = (centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)) / 4  # wrapping round
        torch.testing.assert_close(m[:, ::step, h::step], edges, atol=1e-6, rtol=0)
        edges = (centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)) / 4
        torch.testing.assert_close(m[:, h::step, ::step], edges, atol=1e-6, rtol=0)
    # a smaller decay keeps more fine detail: larger steps between neighbours
    rough = [(C.plasma_fractal(8, 32, d, gen(2)).diff(dim=2).abs().mean().item()) for d in (3, 2, 1.5)]
    assert rough[0] < rough[1] < rough[2]
    with pytest.raises(ValueError, match="power of two"):
        C.plasma_fractal(1, 24, 2, gen(0))


def test_fog_range_on_a_flat_image_and_smoothness():
    x = torch.full((4, 1, 32, 32), 0.5, dtype=torch.float64)
    for s, amount in zip(C.SEVERITIES, (0.2, 0.5, 0.75, 1, 1.5)):
        out = corrupt(x, "fog", s)
        # (x + a fog) * peak / (peak + a), the fog in [0, 1] with min 0 and max 1 per image
        lo, hi = 0.5 * 0.5 / (0.5 + amount), 0.5
        torch.testing.assert_close(out.amin((1, 2, 3)), torch.full((4,), lo, dtype=torch.float64))
        torch.testing.assert_close(out.amax((1, 2, 3)), torch.full((4,), hi, dtype=torch.float64))
        step = (out[..., 1:] - out[..., :-1]).abs().mean() / (hi - lo)
        assert step < 0.05  # smooth (uniform white noise would give about 1/3)


def test_snow_mixes_the_whitened_image_and_adds_a_symmetric_layer(cifar):
    zero = torch.zeros(4, 3, 32, 32, dtype=torch.float64)
    for s in C.SEVERITIES:
        out = corrupt(zero, "snow", s)  # black: only the layer and its 180-degree rotation
        torch.testing.assert_close(out, out.flip(-2, -1))
        assert (out[:, 0] == out[:, 1]).all() and out.max() > 0.1
    # without flakes (threshold above every value) only the blend with the whitened grey is left
    x = cifar[:4].double()
    mean, std, zoom, _, radius, sigma, blend = C.CORRUPTIONS["snow"].params[4]
    out = apply(x, "snow", (mean, std, zoom, 10, radius, sigma, blend))
    grey = (x * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(out, blend * x + (1 - blend) * torch.maximum(x, 1.5 * grey + 0.5))
    x = cifar[:32].double()  # severities 2 and 3 brighten by about as much: more images
    brighter = [corrupt(x, "snow", s).mean().item() for s in C.SEVERITIES]
    assert x.mean().item() < brighter[0] and all(a < b for a, b in zip(brighter, brighter[1:]))


def test_frost_like_blends_a_procedural_ice_texture(cifar, mnist):
    ice = C.ice_texture(6, 3, 32, 32, gen(3), dtype=torch.float64)
    assert ice.min() >= 0 and ice.max() <= 1 and ice.mean() > 0.2
    assert (ice[:, 0] <= ice[:, 1]).all() and (ice[:, 1] <= ice[:, 2]).all()  # pale blue
    assert not torch.equal(ice[0], ice[1])  # a new texture per image
    x = cifar[:6].double()
    for s, (scale, amount) in zip(C.SEVERITIES, C.CORRUPTIONS["frost_like"].params):
        torch.testing.assert_close(apply(x, "frost_like", (scale, amount), seed=3), scale * x + amount * ice)
    grey = C.ice_texture(6, 1, 28, 28, gen(3), dtype=torch.float64)
    assert grey.shape == (6, 1, 28, 28) and corrupt(mnist, "frost_like", 3).shape == mnist.shape


# ------------------------------------------------------------------------ elastic


def test_elastic_transform_samplers_agree_with_scipy():
    from advrep.corruptions import digital as D  # the two resampling steps, checked on their own

    rng = np.random.default_rng(0)
    img = rng.random((2, 3, 20, 20))
    rows, cols = np.meshgrid(np.arange(20.0), np.arange(20.0), indexing="ij")
    noise = torch.from_numpy(rng.uniform(-1, 1, (2, 1, 20, 20)))
    for sigma in (6.4, 0.96):  # skimage's gaussian(mode="reflect", truncate=3)
        expected = ndimage.gaussian_filter(noise.numpy(), (0, 0, sigma, sigma), mode="reflect", truncate=3)
        np.testing.assert_allclose(D._symmetric_blur(noise, sigma).numpy(), expected, atol=1e-12)
    for mirror, mode, (dr, dc) in ((False, "reflect", rng.normal(0, 1.5, (2, 2, 20, 20))),
                                   (True, "mirror", (0.06 * cols - 0.1 * rows + 1.5, 0.05 * cols + 0.1 * rows - 2))):
        dr, dc = np.broadcast_to(dr, (2, 20, 20)), np.broadcast_to(dc, (2, 20, 20))
        expected = [[ndimage.map_coordinates(img[n, ch], [rows + dr[n], cols + dc[n]], order=1, mode=mode)
                     for ch in range(3)] for n in range(2)]
        out = D._sample(torch.from_numpy(img), torch.from_numpy(cols + dc), torch.from_numpy(rows + dr), mirror)
        np.testing.assert_allclose(out.numpy(), np.array(expected), atol=1e-12)
    affine = torch.tensor([[1.05, 0.1, -2.0], [-0.08, 0.95, 1.5]], dtype=torch.float64)
    pts = torch.tensor([[[16.0, 16], [16, 4], [4, 4]]], dtype=torch.float64)
    moved = pts @ affine[:, :2].T + affine[:, 2]
    torch.testing.assert_close(D._affine_grid(pts, moved)[0], affine)  # cv2.getAffineTransform


def test_elastic_transform_trades_affine_jitter_for_local_displacement(cifar):
    x = cifar[:32].double()
    params = C.CORRUPTIONS["elastic_transform"].params
    local = [dissimilarity(apply(x, "elastic_transform", (a, s, 0)), x) for a, s, _ in params]
    rigid = [dissimilarity(apply(x, "elastic_transform", (0, 0, f)), x) for _, _, f in params]
    # the reference's severities raise the smoothed displacement (alpha up, sigma down) and lower
    # the affine jitter, which moves more pixels: the whole distortion falls with severity
    assert local[0] < 1e-9 and all(a < b for a, b in zip(local, local[1:])), local
    assert all(a > b for a, b in zip(rigid, rigid[1:])), rigid
    whole = [dissimilarity(corrupt(x, "elastic_transform", s), x) for s in C.SEVERITIES]
    assert whole[0] > whole[-1]


# ------------------------------------------------------------------------ pixelate


def pil_resized(images: np.ndarray, factor: float) -> np.ndarray:
    """The reference's pixelate: PIL BOX down to int(size * factor), BOX back up."""
    out = []
    for img in images:
        h, w = img.shape[:2]
        small = Image.fromarray(img).resize((int(w * factor), int(h * factor)), Image.BOX)
        out.append(np.array(small.resize((w, h), Image.BOX)))
    return np.stack(out)


def test_pixelate_equals_pillows_box_resampling(cifar, mnist):
    for clean in (cifar[:32], mnist[:32], torch.rand(4, 3, 27, 19, generator=gen(1))):
        u8 = (clean * 255).round().byte().permute(0, 2, 3, 1)
        u8 = u8[..., 0] if clean.shape[1] == 1 else u8
        for s, factor in zip(C.SEVERITIES, C.CORRUPTIONS["pixelate"].params):
            ref = torch.from_numpy(pil_resized(u8.numpy(), factor)).reshape(u8.shape)
            mine = (corrupt(clean, "pixelate", s) * 255).round().byte().permute(0, 2, 3, 1).reshape(u8.shape)
            assert torch.equal(mine, ref), (s, clean.shape)


def test_box_matrix_counts_the_pixel_centres_in_each_window():
    # 4 -> 3: windows (0, 4/3], (4/3, 8/3], (8/3, 4] hold the centres 0.5 | 1.5, 2.5 | 3.5:
    # equal weights, not the overlaps (an area average would give 0.75, 0.25 to the first)
    torch.testing.assert_close(C.box_matrix(4, 3), torch.tensor(
        [[1, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1]], dtype=torch.float64))
    up = C.box_matrix(30, 32)  # up-sampling: one centre per window, nearest-neighbour
    assert ((up == 1).sum(1) == 1).all() and (up.argmax(1) == ((torch.arange(32) + 0.5) * 30 / 32).long()).all()
    for size, new in ((32, 30), (32, 27), (28, 18), (20, 32)):
        torch.testing.assert_close(C.box_matrix(size, new).sum(1), torch.ones(new, dtype=torch.float64))


# --------------------------------------------------------------------------- JPEG


def pil_jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)  # PIL's default: 4:2:0 for colour
        out.append(np.array(Image.open(buf)))
    return np.stack(out)


def test_quantization_tables_are_libjpegs():
    for quality in (10, 40, 50, 58, 80, 100):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG", quality=quality)
        tables = Image.open(buf).quantization
        for i, chroma in ((0, False), (1, True)):
            expected = torch.tensor(tables[i], dtype=torch.float64).view(8, 8)
            torch.testing.assert_close(C.quantization_table(quality, chroma), expected)
    assert C.quantization_table(50)[0, :3].tolist() == [16, 11, 10]  # the standard table itself
    assert C.quantization_table(80)[0, 0].item() == 6  # (16 * 40 + 50) // 100
    assert C.quantization_table(1, chroma=True).max().item() == 255


def test_jpeg_equals_pillows_bit_for_bit(cifar, mnist):
    odd = torch.rand(4, 3, 27, 19, generator=gen(2))  # partial blocks and an odd chroma size
    for quality in (80, 65, 58, 50, 40, 10):
        for clean in (cifar[:16], mnist[:16], odd, odd[:, :1]):
            u8 = (clean * 255).round().byte().permute(0, 2, 3, 1)
            ref = pil_jpeg(u8.squeeze(-1).numpy() if clean.shape[1] == 1 else u8.numpy(), quality)
            mine = (C.jpeg(clean, quality) * 255).round().byte().permute(0, 2, 3, 1)
            assert torch.equal(mine, torch.from_numpy(ref).reshape(u8.shape)), (quality, clean.shape)


def test_jpeg_quality_100_is_near_identity_and_low_quality_removes_detail(cifar, mnist):
    assert (C.jpeg(mnist, 100) - mnist).abs().max().item() <= 2 / 255 + 1e-6
    assert (C.jpeg(cifar, 100) - cifar).abs().mean().item() < 2 / 255  # 4:2:0 chroma costs a little
    assert high_frequency_energy(C.jpeg(cifar, 10)) < 0.3 * high_frequency_energy(cifar)


def test_jpeg_keeps_8x8_constant_blocks():
    values = torch.tensor([[40, 128], [200, 254]], dtype=torch.float64)
    flat = values.repeat_interleave(8, 0).repeat_interleave(8, 1)[None, None] / 255
    # quality 50: DC step 16 = 2 grey levels x 8, so even grey values come back exactly, in
    # grayscale and as grey colour images (chroma 128: zero after the level shift)
    torch.testing.assert_close(C.jpeg(flat, 50), flat, atol=1e-12, rtol=0)
    torch.testing.assert_close(C.jpeg(flat.expand(1, 3, 16, 16), 50), flat.expand(1, 3, 16, 16), atol=1e-12, rtol=0)
    odd = C.jpeg(flat + 1 / 255, 50)  # odd levels are off by one step, but blocks stay flat
    blocks = odd.view(2, 8, 2, 8).transpose(1, 2).reshape(4, 64)
    assert (blocks == blocks[:, :1]).all() and not torch.equal(odd, flat + 1 / 255)


# ----------------------------------------------------------------- official files


def write_official(folder: Path, per: int = 4, names=("gaussian_noise", "contrast"), shape=(32, 32, 3)):
    """The CIFAR-10-C layout in miniature; pixel (0, 0, 0) encodes the corruption, the severity
    and the image index, so the test can tell which block each image came from."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(per) % 3, 5).astype(np.uint8)  # the official files store uint8
    np.save(folder / "labels.npy", labels)
    for k, name in enumerate(names):
        x = np.zeros((5 * per, *shape), np.uint8)
        for s in range(5):
            for i in range(per):
                x[s * per + i, 0, 0, 0] = 100 * k + 10 * s + i
        np.save(folder / f"{name}.npy", x)
    return labels


def test_load_official_reads_blocks_in_severity_order(tmp_path):
    labels = write_official(tmp_path)
    data = C.load_official(tmp_path)
    assert sorted(data) == [f"{n}/{s}" for n in ("contrast", "gaussian_noise") for s in C.SEVERITIES]
    for k, name in enumerate(("gaussian_noise", "contrast")):
        for s in C.SEVERITIES:
            x, y = data[f"{name}/{s}"]
            assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
            assert x[:, 0, 0, 0].tolist() == [100 * k + 10 * (s - 1) + i for i in range(4)]
            assert y.tolist() == labels[(s - 1) * 4:s * 4].tolist()
    x, y = C.load_official(tmp_path, n=2)["contrast/5"]
    assert x[:, 0, 0, 0].tolist() == [140, 141] and y.tolist() == [0, 1]


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[:-100])


BROKEN = {
    "missing folder": (lambda d: None, "", "does not exist"),
    "missing labels": (lambda d: (d / "labels.npy").unlink(), "labels.npy", "is missing"),
    "labels not in 5 blocks": (lambda d: np.save(d / "labels.npy", np.zeros(19, np.uint8)), "labels.npy", r"\(5\*N,\)"),
    "float labels": (lambda d: np.save(d / "labels.npy", np.zeros(20, np.float32)), "labels.npy", "integer"),
    "truncated": (lambda d: truncate(d / "contrast.npy"), "contrast.npy", "not a readable"),
    "not npy": (lambda d: (d / "contrast.npy").write_bytes(b"<html>404</html>" * 50), "contrast.npy", "not a readable"),
    "pickled objects": (lambda d: np.save(d / "contrast.npy", np.array([{}] * 20, dtype=object)), "contrast.npy", "not a readable"),
    "float images": (lambda d: np.save(d / "contrast.npy", np.zeros((20, 32, 32, 3), np.float32)), "contrast.npy", "expected uint8"),
    "wrong count": (lambda d: np.save(d / "contrast.npy", np.zeros((15, 32, 32, 3), np.uint8)), "contrast.npy", "expected uint8 \\(20,"),
    "two channels": (lambda d: np.save(d / "contrast.npy", np.zeros((20, 32, 32, 2), np.uint8)), "contrast.npy", "expected uint8"),
    "no corruption files": (lambda d: [(d / f"{n}.npy").unlink() for n in ("contrast", "gaussian_noise")], "", "no <corruption>.npy"),
    "too many images": (lambda d: None, "", "4 images per severity, cannot take 5"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_load_official_errors_name_the_file_and_the_fix(tmp_path, case):
    spoil, culprit, message = BROKEN[case]
    folder = tmp_path / "CIFAR-10-C"
    write_official(folder)
    spoil(folder)
    target = tmp_path / "nowhere" if case == "missing folder" else folder
    with pytest.raises(DataError, match=message) as err:
        C.load_official(target, n=5 if case == "too many images" else None)
    text = str(err.value)
    assert str(target / culprit).rstrip("/") in text and "\n" not in text


# ----------------------------------------------------------------------- evaluate


class ConstantModel(torch.nn.Module):
    """Always class 0; records whether it ran without gradients."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.arange(classes, 0, -1).float())
        self.grad_enabled = []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        assert not self.training
        return self.bias.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


class BrightModel(torch.nn.Module):
    """Class 1 if the image's first pixel is brighter than 0.5, else class 0."""

    def forward(self, x):
        bright = (x[:, 0, 0, 0] > 0.5).float()
        return torch.stack((1 - bright, bright), 1)


@pytest.mark.parametrize("device", DEVICES)
def test_evaluate_generated_with_a_constant_model(cifar, device):
    x = (cifar[:20] * 255).round().byte()
    y = torch.arange(20) % 3  # 7 of 20 are class 0
    model = ConstantModel().to(device).train()
    report = C.evaluate(model, x, y, device=device, batch_size=10, progress=False)
    assert report["source"] == "generated" and "not the official" in report["note"] and report["n"] == 20
    assert list(report["per_corruption"]) == C.available(3)
    for row in report["per_corruption"].values():
        assert row == {**{str(s): 7 / 20 for s in C.SEVERITIES}, "mean": pytest.approx(7 / 20)}
    bench, held = report["benchmark"], report["held_out"]
    assert bench["names"] == list(C.GENERATED_BENCHMARK) and bench["complete"]
    assert held["names"] == list(C.EXTRAS)
    for group in (bench, held):
        assert group["per_severity"] == {str(s): pytest.approx(7 / 20) for s in C.SEVERITIES}
        assert group["mean"] == pytest.approx(7 / 20)
    assert report["fidelity"]["frost_like"] == "substitute" and report["fidelity"]["jpeg_compression"] == "exact"
    # the generated mean has its own key, never RobustBench's
    assert C.report_keys(report) == {"corruptions_generated_acc": pytest.approx(7 / 20)}
    assert "not comparable" in C.headline(report) and "corruptions_acc " not in C.headline(report)
    assert model.training and model.bias.grad is None and not any(model.grad_enabled)
    assert len(model.grad_enabled) == 18 * 5 * 2  # corruptions x severities x batches


def test_evaluate_generated_is_deterministic_per_cell(mnist):
    x, y = (mnist * 255).round().byte(), torch.ones(len(mnist), dtype=torch.long)
    model = BrightModel()
    full = C.evaluate(model, x, y, device="cpu", progress=False, seed=3)
    assert "saturate" not in full["per_corruption"]
    part = C.evaluate(model, x, y, device="cpu", progress=False, seed=3, names=["fog", "contrast", "speckle_noise"],
                      severities=(2, 5))
    for name in ("fog", "contrast", "speckle_noise"):
        for s in ("2", "5"):
            assert part["per_corruption"][name][s] == full["per_corruption"][name][s]
    assert part["benchmark"]["per_severity"]["5"] == pytest.approx((full["per_corruption"]["fog"]["5"]
                                                                    + full["per_corruption"]["contrast"]["5"]) / 2)
    assert part["held_out"]["names"] == ["speckle_noise"]
    assert not part["benchmark"]["complete"] and C.report_keys(part) == {}  # 2 of 15, 2 severities
    assert full["benchmark"]["complete"] and "corruptions_generated_acc" in C.report_keys(full)
    # brightness only raises intensities, so "bright first pixel" can only become more frequent
    rows = full["per_corruption"]["brightness"]
    assert all(rows[str(s)] <= rows[str(s + 1)] for s in range(1, 5))
    with pytest.raises(ConfigError, match="'saturate' needs 3 channels"):
        C.evaluate(model, x, y, device="cpu", progress=False, names=["saturate"])
    with pytest.raises(ConfigError, match="severity"):
        C.evaluate(model, x, y, device="cpu", progress=False, severities=(0,))


def test_evaluate_official_files(tmp_path):
    # per severity s (0-based), images i < s are bright: BrightModel says class 1 for them
    folder = tmp_path / "c"
    per, names = 4, ("gaussian_noise", "contrast")
    write_official(folder, per=per, names=names)
    labels = np.ones(5 * per, np.uint8)
    np.save(folder / "labels.npy", labels)
    for name in names:
        x = np.zeros((5 * per, 32, 32, 3), np.uint8)
        for s in range(5):
            x[s * per:s * per + min(s, per), 0, 0, 0] = 255
        np.save(folder / f"{name}.npy", x)
    clean, y = torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.ones(3, dtype=torch.long)
    report = C.evaluate(BrightModel(), clean, y, device="cpu", directory=folder, progress=False, batch_size=2)
    expected = {str(s): min(s - 1, 3) / 3 for s in C.SEVERITIES}  # first 3 images of each block
    assert report["source"] == "official" and report["n"] == 3
    for name in names:
        assert report["per_corruption"][name] == {**expected, "mean": pytest.approx(sum(expected.values()) / 5)}
    assert report["benchmark"]["per_severity"] == pytest.approx(expected) and report["held_out"] is None
    assert not report["benchmark"]["complete"] and C.report_keys(report) == {}  # 2 of the 15: no corruptions_acc
    assert "2 of the 15 benchmark corruptions" in C.headline(report)
    with pytest.raises(ConfigError, match="no snow.npy.*contrast, gaussian_noise"):
        C.evaluate(BrightModel(), clean, y, device="cpu", directory=folder, names=["snow"], progress=False)
    with pytest.raises(DataError, match="3 of the first 3 labels differ"):
        C.evaluate(BrightModel(), clean, y * 0, device="cpu", directory=folder, progress=False)
    with pytest.raises(DataError, match=r"holds images \(3, 32, 32\), the test images are \(1, 28, 28\)"):
        C.evaluate(BrightModel(), torch.zeros(3, 1, 28, 28, dtype=torch.uint8), y, device="cpu",
                   directory=folder, progress=False)


def test_official_corruptions_acc_is_the_15_mean_without_the_held_out_four(tmp_path):
    """A miniature CIFAR-10-C with all 19 files: the 15 benchmark ones dark (BrightModel: class 0,
    wrong) except at severity 5, where one image of 4 is bright (right); the 4 held-out ones all
    bright. RobustBench's mean is over the 15 x 5 cells only."""
    folder, per = tmp_path / "CIFAR-10-C", 4
    write_official(folder, per=per, names=())
    np.save(folder / "labels.npy", np.ones(5 * per, np.uint8))
    for name in C.BENCHMARK + C.HELD_OUT:
        x = np.zeros((5 * per, 32, 32, 3), np.uint8)
        x[:, 0, 0, 0] = 255 if name in C.HELD_OUT else 0
        x[4 * per, 0, 0, 0] = 255  # severity 5, image 0
        np.save(folder / f"{name}.npy", x)
    clean, y = torch.zeros(per, 3, 32, 32, dtype=torch.uint8), torch.ones(per, dtype=torch.long)
    report = C.evaluate(BrightModel(), clean, y, device="cpu", directory=folder, progress=False)
    bench, held = report["benchmark"], report["held_out"]
    assert bench["names"] == list(C.BENCHMARK) and bench["complete"]
    assert bench["per_severity"] == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0.25}
    assert bench["mean"] == pytest.approx(0.05)  # 15 cells of 0.25 among 75; the mean over every file would be 0.25
    assert held["names"] == sorted(C.HELD_OUT) and held["mean"] == 1
    assert C.report_keys(report) == {"corruptions_acc": pytest.approx(0.05)}
    line = C.headline(report)
    assert "corruptions_acc" in line and "5.00%" in line and "spatter 100.00%" in line
    assert "fidelity" not in report
    # a subset of severities is not RobustBench's number either
    part = C.evaluate(BrightModel(), clean, y, device="cpu", directory=folder, progress=False, severities=(1, 5))
    assert not part["benchmark"]["complete"] and C.report_keys(part) == {}


def test_run_report_keys_and_labels(tmp_path, cifar):
    """advrep's evaluation report: corruptions_acc only from the official files, the generated
    mean under its own key, each with its own label in the printed table and report.md."""
    from advrep import evaluation as E
    from advrep import report as report_mod
    from advrep.config import EvalConfig, ThreatConfig

    folder, per = tmp_path / "CIFAR-10-C", 4
    write_official(folder, per=per, names=())
    np.save(folder / "labels.npy", np.ones(5 * per, np.uint8))
    for name in C.BENCHMARK + C.HELD_OUT:
        np.save(folder / f"{name}.npy", np.full((5 * per, 32, 32, 3), 255 * (name in C.HELD_OUT), np.uint8))
    x, y = (cifar[:per] * 255).round().byte(), torch.ones(per, dtype=torch.long)
    threat = ThreatConfig(norm="Linf", eps=8 / 255, step_size=2 / 255, steps=1)
    reports = {}
    for source in ("official", "generated"):
        ev = EvalConfig(attacks=[], checks=False, corruptions=source, pgd_steps=1, pgd_step_size=0.01,
                        corruptions_dir=str(folder) if source == "official" else None)
        reports[source] = E.evaluate(BrightModel(), x, y, threat=threat, ev=ev, device="cpu", progress=False)
    official, generated = reports["official"], reports["generated"]
    assert official["corruptions_acc"] == 0 and "corruptions_generated_acc" not in official  # held-out 4 at 100%
    assert "corruptions_acc" not in generated and 0 <= generated["corruptions_generated_acc"] <= 1
    assert "corruptions_acc (official files" in report_mod.format_table(official)
    assert "corruptions_generated_acc (advrep's generated set" in report_mod.format_table(generated)
    report_mod.write_report(tmp_path / "run", generated)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Common corruptions (generated)" in md and "not comparable to CIFAR-10-C or RobustBench" in md
    assert "| frost_like |" in md
