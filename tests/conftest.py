"""Shared fixtures: the real datasets, and small real-data models trained once per session."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADVREP_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(4, os.cpu_count() or 1))


def shared_folder(name: str) -> Path:
    """The real dataset ``name`` (npz layout) beside the repository; a missing copy fails loudly."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.fail(f"shared data folder {folder} is missing: set ADVREP_SHARED_DATA to the folder "
                    "that holds cifar10/ and mnist/ (see shared/data/README.md)")
    return folder


@pytest.fixture(scope="session")
def shared():
    return shared_folder
