"""``keras.callbacks``: fastnn's callbacks (Keras 3's hooks)."""
from fastnn.callbacks import *  # noqa: F401,F403
from fastnn.callbacks import __all__  # noqa: F401
