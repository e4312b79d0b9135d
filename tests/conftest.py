import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads(request):
    """Every test starts seeded and, except the slow end-to-end runs, on one intra-op thread: the inputs are
    small, and on a shared 2-core machine thread start-up costs more than it saves."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    if "slow" not in request.keywords:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (VOC layout + COCO JSON), generated once per test session."""
    from seglab.data.datasets.demo import generate_demo_data

    return generate_demo_data(tmp_path_factory.mktemp("demo"), seed=0, num_train=24, num_val=6, size=96)
