import os

import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# One thread: the test models are tiny, and on 2 shared cores a second thread only adds synchronisation.
torch.set_num_threads(1)
