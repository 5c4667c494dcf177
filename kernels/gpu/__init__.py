"""CUDA C kernels (``*.cu``) and their CuPy launchers, loaded lazily at first use."""
