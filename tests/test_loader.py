"""The device-resident loader: seeded order, every image once per epoch, crop and flip."""

import torch

from advrep.data.loader import DeviceLoader, random_crop, random_flip


def numbered(n=10, size=8):
    """Images whose pixels all equal their index, so a batch reveals which images it holds."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return x, torch.arange(n)


def test_each_epoch_is_a_seeded_permutation():
    x, y = numbered(10)
    loader = DeviceLoader(x, y, 4, shuffle=True, seed=3)
    assert len(loader) == 3
    epoch0 = torch.cat([yb for _, yb in loader])
    again = torch.cat([yb for _, yb in loader])
    loader.set_epoch(1)
    epoch1 = torch.cat([yb for _, yb in loader])
    assert sorted(epoch0.tolist()) == list(range(10))
    assert torch.equal(epoch0, again), "same (seed, epoch) must give the same order"
    assert not torch.equal(epoch0, epoch1)
    for xb, yb in loader:
        assert xb.dtype == torch.float32 and torch.allclose(xb[:, 0, 0, 0] * 255, yb.float())


def test_unshuffled_order_and_scaling():
    x, y = numbered(5)
    batches = list(DeviceLoader(x, y, 2))
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert batches[0][0].max() <= 1.0


def test_random_crop_is_a_shift_with_zero_padding():
    x = torch.arange(1, 37, dtype=torch.uint8).view(1, 1, 6, 6).repeat(64, 1, 1, 1)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    shifts = set()
    for img in out:
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[:, dy:dy + 6, dx:dx + 6], img)]
        assert matches, "every crop must be a window of the zero-padded image"
        shifts.add(matches[0])
    assert len(shifts) > 5, "offsets must vary across the batch"


def test_random_flip_flips_about_half():
    x = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(200, 1, 1, 1)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).sum().item()
    assert 60 < flipped < 140
    assert all(torch.equal(o, x[0]) or torch.equal(o, x[0].flip(2)) for o in out)


def test_augmented_batches_keep_labels_aligned():
    x, y = numbered(12, size=12)
    loader = DeviceLoader(x, y, 5, shuffle=True, augment="crop-flip", seed=0)
    for xb, yb in loader:
        # crops shift by at most 4 pixels, so the centre pixel always belongs to the image
        assert torch.allclose(xb[:, 0, 6, 6] * 255, yb.float())
