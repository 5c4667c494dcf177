"""``keras.regularizers``: ``l1``, ``l2``, ``l1_l2``."""
from fastnn.regularizers import *  # noqa: F401,F403
from fastnn.regularizers import __all__  # noqa: F401
