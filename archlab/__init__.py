"""archlab: build, measure, scale and compare convolutional network architectures."""

from archlab.registry import ModelCard, UnknownModelError, create_model, list_models, model_card
from archlab.weights import WeightsError, load_reference_weights

__version__ = "0.1.0"

__all__ = [
    "ModelCard",
    "UnknownModelError",
    "WeightsError",
    "create_model",
    "list_models",
    "load_reference_weights",
    "model_card",
]
