"""The parts of ``graph_capture.py`` (the driver, which runs each in its own process).

``common``: recording a part, capture and comparison helpers; ``cublas``: a cuBLAS handle of our own
through ``ctypes``; ``capture_questions``: parts 1-3 (``cupy.matmul``, direct cuBLAS and fastnn's
launchers inside a capture); ``replay_cost``: part 4; ``fit_modes``: part 5. Like ``_probe.py`` they
are imported from ``bench/probes/``, which is on ``sys.path`` when a probe runs as a script.
"""
