"""The model zoo: six CNN families behind one name registry, each scaled by two dials.

``width`` multiplies channel counts and ``depth`` sets layer counts (EfficientNet's
``depth`` is its compound coefficient phi); each family states its allowed ranges.
``model_spec`` also resolves user families: ``package.module:builder`` names and the
``mlscale.models`` entry points of installed packages (see ``_user``).

>>> import mlscale.models as models
>>> models.list_models()
['alexnet_mini', 'efficientnet_mini', 'inception_mini', 'lenet5', 'resnet_mini', 'vgg_mini']
>>> model = models.get_model("lenet5", width=0.5)
>>> models.run_name("lenet5", 0.5, 1)
'lenet5-w0.5-d1'
"""

from __future__ import annotations

# Each family module registers itself on import.
from mlscale.models import alexnet, efficientnet, inception, lenet, resnet, vgg  # noqa: F401
from mlscale.models._registry import (
    ModelSpec,
    check_dials,
    get_model,
    list_models,
    model_spec,
    register_model,
    run_name,
)

__all__ = ["ModelSpec", "check_dials", "get_model", "list_models", "model_spec",
           "register_model", "run_name"]
