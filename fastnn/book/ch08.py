"""Chapter 8's network: ``from fastnn.book.ch08 import DeepConvNet``."""
from fastnn.book.deep_convnet import DeepConvNet

__all__ = ["DeepConvNet"]
