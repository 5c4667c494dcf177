"""Chapter 7's network: ``from fastnn.book.ch07 import SimpleConvNet``."""
from fastnn.book.simple_convnet import SimpleConvNet

__all__ = ["SimpleConvNet"]
