import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (VOC layout + COCO JSON), generated once per test session."""
    from seglab.data.datasets.demo import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=24, num_val=6, size=96)
