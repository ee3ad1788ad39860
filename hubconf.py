"""torch.hub entry points: ``torch.hub.load("<owner>/densenets", "densenet121", pretrained=True)``.

Every named variant of ``densenets list``, and every model with named weights
(``densenets list --pretrained``), is an entry point taking ``pretrained`` (True, or
a tag such as ``"imagenet"``) and any field of its config (the ResNet baselines too). Works from a fresh clone: the
package is imported from ``src/`` next to this file.
"""

import os
import sys

dependencies = ["torch", "torchvision"]

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from densenets.models import create_model, list_models, list_pretrained  # noqa: E402


def _entry(name):
    def build(pretrained=False, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = name
    build.__doc__ = f"{name} (densenets): pretrained=True loads its default named weights; kwargs override the config."
    return build


# the named variants, and every model with registered weights (e.g. densenet_bc40_k12 for "cifar10")
for _name in [*list_models(), *(e.model for e in list_pretrained())]:
    globals()[_name] = _entry(_name)
