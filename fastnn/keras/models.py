"""``keras.models``: fastnn's models."""
from fastnn.models import Model, Sequential, clone_model, load_model, model_from_json

__all__ = ["Sequential", "Model", "load_model", "clone_model", "model_from_json"]
