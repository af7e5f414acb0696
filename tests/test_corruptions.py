"""advrep.corruptions: the generated corruptions (direction, severity order, hand-checked formulas,
independent oracles: matplotlib's HSV, scipy's filters and FFT, Pillow's libjpeg), the official
CIFAR-10-C layout written here in miniature, and the corruption evaluation on models with known
answers."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv
from PIL import Image
from scipy import fft, ndimage, signal

from advrep import corruptions as C
from advrep.errors import ConfigError, DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "fog_like"}
# channel-wise deterministic corruptions: a grey colour image and its 1-channel copy must agree
CHANNEL_BLIND = ["gaussian_blur", "defocus_blur", "brightness", "contrast", "pixelate", "jpeg_compression"]


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


def gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def corrupt(x, name, severity, seed=0):
    return C.generate(x, name, severity, generator=gen(seed, x.device.type))


# ------------------------------------------------------------------- the contract


def test_available_leaves_saturate_to_colour_images():
    assert C.available(3) == list(C.GENERATED)
    assert C.available(1) == [n for n in C.GENERATED if n != "saturate"]
    assert len(C.GENERATED) == 12
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        C.available(2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", C.GENERATED)
def test_output_shape_dtype_device_range_and_determinism(cifar, name, device):
    for dtype in (torch.float32, torch.float64):
        x = cifar[:8].to(device, dtype)
        for severity in C.SEVERITIES:
            out = corrupt(x, name, severity)
            assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
            assert out.min() >= 0 and out.max() <= 1
            assert not torch.equal(out, x)
            assert torch.equal(out, corrupt(x, name, severity)), "same generator seed, same images"
            assert torch.equal(out, corrupt(x, name, severity, seed=1)) == (name not in RANDOM)
    if device == "cuda":
        with pytest.raises(ConfigError, match="torch.Generator"):
            C.generate(x, name, 1, generator=gen(0, "cpu"))


@pytest.mark.parametrize("name", [n for n in C.GENERATED if n != "saturate"])
def test_distance_to_the_clean_image_grows_with_severity(cifar, name):
    dist = [(corrupt(cifar, name, s) - cifar).norm().item() for s in C.SEVERITIES]
    assert all(a < b for a, b in zip(dist, dist[1:])), dist


def test_errors_name_the_valid_choices(cifar, mnist):
    with pytest.raises(ConfigError, match="unknown corruption 'snow'.*gaussian_noise, shot_noise"):
        corrupt(cifar, "snow", 1)
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
    for severity in C.SEVERITIES:
        grey = corrupt(mnist, name, severity)
        colour = corrupt(mnist.expand(-1, 3, -1, -1).contiguous(), name, severity)
        torch.testing.assert_close(colour, grey.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


def test_grayscale_images_take_every_available_corruption(mnist):
    for name in C.available(1):
        dist = [(corrupt(mnist, name, s) - mnist).norm().item() for s in (1, 5)]
        assert 0 < dist[0] < dist[1], name


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
    flat = torch.full((2, 3, 8, 8), 0.3, dtype=torch.float64)
    for name in ("gaussian_blur", "defocus_blur", "pixelate"):
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


# ------------------------------------------------------------------------ pixelate


def test_pixelate_box_averages_then_repeats():
    torch.testing.assert_close(C.box_matrix(4, 3), torch.tensor(
        [[0.75, 0.25, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0.25, 0.75]], dtype=torch.float64))
    for size, new in ((32, 30), (32, 27), (28, 18)):
        torch.testing.assert_close(C.box_matrix(size, new).sum(1), torch.ones(new, dtype=torch.float64))
    x = torch.rand(2, 3, 32, 32, generator=gen(1), dtype=torch.float64)
    for s, c in zip(C.SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65)):
        out = corrupt(x, "pixelate", s)
        assert out[0, 0].unique(dim=1).shape[1] == int(32 * c)  # distinct columns
        assert out.mean().item() == pytest.approx(x.mean().item(), abs=0.01)
    # 32 -> 20 -> 32: the first low-resolution pixel averages 1.6 x 1.6 input pixels
    expected = (x[0, 0, :2, :2] * torch.tensor([1, 0.6], dtype=torch.float64).outer(
        torch.tensor([1, 0.6], dtype=torch.float64))).sum() / 1.6 ** 2
    assert corrupt(x, "pixelate", 5)[0, 0, 0, 0].item() == pytest.approx(expected.item())


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


def test_jpeg_agrees_with_pillow(cifar, mnist):
    for quality in (80, 40):
        for clean in (cifar[:32], mnist[:32]):
            u8 = (clean * 255).round().byte()
            ref = pil_jpeg(u8.permute(0, 2, 3, 1).squeeze(-1).numpy(), quality)
            ref = torch.from_numpy(ref).reshape(u8.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2).float() / 255
            mine = C.jpeg(clean, quality)
            assert (mine - ref).abs().mean().item() < 1.5 / 255  # integer vs float DCT rounding
            assert (mine - clean).norm().item() == pytest.approx((ref - clean).norm().item(), rel=0.01)


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


# ---------------------------------------------------------------------------- fog


def test_fog_like_range_on_a_flat_image_and_smoothness():
    x = torch.full((4, 1, 32, 32), 0.5, dtype=torch.float64)
    for s, amount in zip(C.SEVERITIES, (0.2, 0.5, 0.75, 1, 1.5)):
        out = corrupt(x, "fog_like", s)
        # (x + a noise) * peak / (peak + a) with noise min-max normalized per image
        lo, hi = 0.5 * 0.5 / (0.5 + amount), 0.5
        torch.testing.assert_close(out.amin((1, 2, 3)), torch.full((4,), lo, dtype=torch.float64))
        torch.testing.assert_close(out.amax((1, 2, 3)), torch.full((4,), hi, dtype=torch.float64))
        step = (out[..., 1:] - out[..., :-1]).abs().mean() / (hi - lo)
        assert step < 0.1  # smooth (uniform white noise would give about 1/3)


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
    x = (cifar[:50] * 255).round().byte()
    y = torch.arange(50) % 3  # 17 of 50 are class 0
    model = ConstantModel().to(device).train()
    report = C.evaluate(model, x, y, device=device, batch_size=20, progress=False)
    assert report["source"] == "generated" and "not the official" in report["note"] and report["n"] == 50
    assert list(report["per_corruption"]) == C.available(3)
    for row in report["per_corruption"].values():
        assert row == {**{str(s): 17 / 50 for s in C.SEVERITIES}, "mean": pytest.approx(17 / 50)}
    assert report["per_severity"] == {str(s): pytest.approx(17 / 50) for s in C.SEVERITIES}
    assert report["mean"] == pytest.approx(17 / 50)
    assert model.training and model.bias.grad is None and not any(model.grad_enabled)
    assert len(model.grad_enabled) == 12 * 5 * 3  # corruptions x severities x batches


def test_evaluate_generated_is_deterministic_per_cell(mnist):
    x, y = (mnist * 255).round().byte(), torch.ones(len(mnist), dtype=torch.long)
    model = BrightModel()
    full = C.evaluate(model, x, y, device="cpu", progress=False, seed=3)
    assert "saturate" not in full["per_corruption"]
    part = C.evaluate(model, x, y, device="cpu", progress=False, seed=3, names=["fog_like", "contrast"],
                      severities=(2, 5))
    for name in ("fog_like", "contrast"):
        for s in ("2", "5"):
            assert part["per_corruption"][name][s] == full["per_corruption"][name][s]
    assert part["per_severity"]["5"] == pytest.approx((full["per_corruption"]["fog_like"]["5"]
                                                       + full["per_corruption"]["contrast"]["5"]) / 2)
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
    assert report["per_severity"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="no snow.npy.*contrast, gaussian_noise"):
        C.evaluate(BrightModel(), clean, y, device="cpu", directory=folder, names=["snow"], progress=False)
    with pytest.raises(DataError, match="3 of the first 3 labels differ"):
        C.evaluate(BrightModel(), clean, y * 0, device="cpu", directory=folder, progress=False)
    with pytest.raises(DataError, match=r"holds images \(3, 32, 32\), the test images are \(1, 28, 28\)"):
        C.evaluate(BrightModel(), torch.zeros(3, 1, 28, 28, dtype=torch.uint8), y, device="cpu",
                   directory=folder, progress=False)
