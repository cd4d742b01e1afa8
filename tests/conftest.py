import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One thread: the test models are tiny, and on 2 shared cores a second thread only adds synchronisation.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so random inputs cannot make a test pass or fail by chance."""
    torch.manual_seed(0)
