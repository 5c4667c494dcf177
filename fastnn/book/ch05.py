"""Chapter 5's network: ``from fastnn.book.ch05 import TwoLayerNet`` (the ReLU, backprop ``TwoLayerNet``)."""
from fastnn.book.two_layer_net import TwoLayerNet

__all__ = ["TwoLayerNet"]
