import os

import pytest
import torch

# Tests are CPU-bound and run on 2 cores in CI; pytest-xdist workers each get one thread.
torch.set_num_threads(int(os.environ.get("ARCHLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
