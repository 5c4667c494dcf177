"""fastnn's hardware benchmarks (installed as ``fastnn.bench``)."""
