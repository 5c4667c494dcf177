"""``keras.metrics``: fastnn's metric objects."""
from fastnn.metrics import *  # noqa: F401,F403
from fastnn.metrics import __all__  # noqa: F401
