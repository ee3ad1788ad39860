"""BatchNorm on its running statistics during training too, for tests that compare batch splits."""

import contextlib
from unittest import mock

import torch.nn.functional as F

_batch_norm = F.batch_norm


def _fixed(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)


@contextlib.contextmanager
def fixed_batchnorm_statistics():
    """Per-rank batch statistics are the one thing that makes 2 ranks at batch B differ from
    one process at batch 2B (by design, without SyncBatchNorm); fixing them isolates the rest."""
    with mock.patch.object(F, "batch_norm", _fixed):
        yield
