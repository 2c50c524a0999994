import os

# Tests never reach a model hub; real loading code must fail fast rather than try.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_components():
    from synfer.models.tiny import tiny_components

    return tiny_components(seed=0)


@pytest.fixture
def tiny_pipe(tiny_components):
    from synfer.pipelines.pipeline_synfer import SynFERPipeline

    pipe = SynFERPipeline(**tiny_components)
    pipe.set_progress_bar_config(disable=True)
    return pipe

