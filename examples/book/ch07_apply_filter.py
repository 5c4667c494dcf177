"""Chapter 7, ``apply_filter.py``: the trained first-layer filters, and two given ones, applied to an image.

As the book: the trained weights of ``SimpleConvNet()`` are loaded with ``network.load_params`` (from
``OUT/simple_convnet_params.pkl``, written by ``ch07_visualize_filter.py``; when the file is missing
that script's training runs first), and each of the first 16 filters ``W1[i]`` is applied on its own
to a grey image with the book's ``Convolution(w, b)`` layer, ``b = 0`` (a scalar bias, broadcast as
the book's ``np.dot(col, col_W) + b`` does). The book's image is ``lena_gray.png``; nothing is
downloaded here, so the image is drawn: a disc, a square, a bar and a shaded background, 64x64.
Then two given filters, 3x3 Sobel kernels for vertical and horizontal edges, go through the same
layer (not in the book).

Each output is checked against a direct sliding-window sum ``out[i, j] = sum(img[i:i+FH, j:j+FW] * w)``
(``Convolution`` computes a correlation through ``im2col``, as the book's): prints
``max_abs_diff_vs_direct trained VALUE`` and ``max_abs_diff_vs_direct sobel VALUE``, and
``edge_response vertical VALUE`` / ``edge_response horizontal VALUE``: the mean absolute Sobel
response on the square's vertical edges divided by that on its horizontal edges (large for the
vertical-edge filter, small for the horizontal one). Writes ``ch07_apply_filter.png``.

    python examples/book/ch07_apply_filter.py [--quick] [--out DIR] [--backend NAME] [--seed N] [--params FILE]
"""
from __future__ import annotations

import os
import sys

import numpy as np

from fastnn.book.layers import Convolution
from fastnn.book.simple_convnet import SimpleConvNet

from _book import new_figure, parse_args, save, to_host
from ch07_visualize_filter import PARAMS, train_convnet

SOBEL_VERTICAL = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def drawn_image(size=64):
    """A grey test picture in [0, 1]: shaded background, a disc, a square (edges at rows/cols 12 and 28) and a bar."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    img = 0.15 + 0.2 * xx
    img[((yy - 0.65) ** 2 + (xx - 0.62) ** 2) < 0.05] = 0.9
    img[12:28, 12:28] = 0.75
    img[46:52, 6:30] = 0.5
    return img


def direct_correlation(img, w):
    """``out[i, j] = sum(img[i:i+FH, j:j+FW] * w)`` (no padding, stride 1)."""
    windows = np.lib.stride_tricks.sliding_window_view(img, w.shape)
    return np.einsum("ijkl,kl->ij", windows, w)


def main(argv=None):
    args = parse_args(__doc__, argv, params=PARAMS)
    network = SimpleConvNet(input_dim=(1, 28, 28),
                            conv_param={"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1},
                            hidden_size=100, output_size=10, weight_init_std=0.01)
    if not os.path.exists(args.params):
        print(f"{args.params} not found: training SimpleConvNet first (ch07_visualize_filter.py)")
        train_convnet(network, args.quick)
        network.save_params(args.params)
    network.load_params(args.params)

    picture = drawn_image()
    img = picture.reshape(1, 1, *picture.shape)

    outputs, worst = [], 0.0
    for i in range(16):
        w = network.params["W1"][i]
        b = 0  # network.params['b1'][i]
        w = w.reshape(1, *w.shape)
        conv_layer = Convolution(w, b)
        out = conv_layer.forward(img)
        out = to_host(out).reshape(out.shape[2], out.shape[3])
        worst = max(worst, float(np.abs(out - direct_correlation(picture, to_host(w)[0, 0])).max()))
        outputs.append(out)
    print(f"max_abs_diff_vs_direct trained {worst:.3e}")

    sobel = {"vertical": SOBEL_VERTICAL, "horizontal": SOBEL_VERTICAL.T.copy()}
    sobel_out, worst = {}, 0.0
    for name, k in sobel.items():
        conv_layer = Convolution(k.reshape(1, 1, 3, 3), 0)
        out = to_host(conv_layer.forward(img))[0, 0]
        worst = max(worst, float(np.abs(out - direct_correlation(picture, k)).max()))
        sobel_out[name] = out
    print(f"max_abs_diff_vs_direct sobel {worst:.3e}")
    # the square covers rows/cols 12..27; output (i, j) sees input rows i..i+2, so an edge at
    # column 12 shows at output columns 10-11, one at column 28 at 26-27 (and likewise for rows)
    rows, cols = slice(14, 24), slice(14, 24)
    for name, out in sobel_out.items():
        vertical_edges = np.abs(out[rows, [10, 11, 26, 27]]).mean()
        horizontal_edges = np.abs(out[[10, 11, 26, 27], cols]).mean()
        print(f"edge_response {name} {vertical_edges / max(horizontal_edges, 1e-12):.3g}")

    fig = new_figure(12, 6.6)
    grid = fig.add_gridspec(4, 12, hspace=0.25, wspace=0.1, left=0.02, right=0.98, top=0.92, bottom=0.03)
    ax = fig.add_subplot(grid[0:2, 0:3], xticks=[], yticks=[])
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("input image")
    for j, (name, out) in enumerate(sobel_out.items()):
        ax = fig.add_subplot(grid[2 + j, 0:3], xticks=[], yticks=[])
        ax.imshow(out, cmap="gray_r", interpolation="nearest")
        ax.set_title(f"Sobel, {name} edges", fontsize=9)
    for i, out in enumerate(outputs):
        r, c = divmod(i, 4)
        ax = fig.add_subplot(grid[r, 4 + 2 * c], xticks=[], yticks=[])
        ax.imshow(to_host(network.params["W1"][i, 0]), cmap="gray_r", interpolation="nearest")
        ax = fig.add_subplot(grid[r, 5 + 2 * c], xticks=[], yticks=[])
        ax.imshow(out, cmap="gray_r", interpolation="nearest")
    fig.suptitle("Convolution(w, 0) with the 16 first trained SimpleConvNet filters (filter, then its output)")
    print(f"wrote {save(fig, args.out, 'ch07_apply_filter.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
