#!/bin/sh
# Quick start 1: train an MLP on scikit-learn's bundled digits with the best backend here.
FASTNN_EXTRAS=""
. "$(dirname "$0")/_venv.sh"
exec .venv/bin/fastnn demo "$@"
