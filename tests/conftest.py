import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BN non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


_REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
_CACHES = {".pytest_cache", ".ruff_cache", "__pycache__", ".venv", ".git"}


def _repo_entries() -> set[str]:
    return {p.name for p in _REPO.iterdir() if p.name not in _CACHES}


@pytest.fixture(scope="session", autouse=True)
def _suite_writes_only_under_tmp():
    """The suite writes only under pytest's temporary folders: no runs/, plots/ or data/ in the clone."""
    before = _repo_entries()
    yield
    left = sorted(_repo_entries() - before)
    assert not left, f"the test suite left {left} in {_REPO}"
