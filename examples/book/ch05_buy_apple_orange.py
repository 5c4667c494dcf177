"""Chapter 5, ``buy_apple.py`` and ``buy_apple_orange.py``: backpropagation through a computational
graph of ``MulLayer`` and ``AddLayer`` (``fastnn.book.layer_naive``, the book's ``ch05/layer_naive.py``).

Two apples at 100 each with 10% tax, then two apples at 100 and three oranges at 150 with 10% tax:
the forward pass gives the price (220 and 715), the backward pass from ``dprice = 1`` the derivative
of the price with respect to every input (the book's figures 5-16 and 5-17). Prints ``price CASE
VALUE`` and ``grad CASE NAME VALUE`` lines; ``--quick`` changes nothing (it takes no time).

    python examples/book/ch05_buy_apple_orange.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

from fastnn.book.layer_naive import AddLayer, MulLayer

from _book import parse_args


def buy_apple():
    apple, apple_num, tax = 100, 2, 1.1
    mul_apple_layer, mul_tax_layer = MulLayer(), MulLayer()
    apple_price = mul_apple_layer.forward(apple, apple_num)  # forward
    price = mul_tax_layer.forward(apple_price, tax)
    dprice = 1  # backward
    dapple_price, dtax = mul_tax_layer.backward(dprice)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    return price, {"dapple": dapple, "dapple_num": dapple_num, "dtax": dtax}


def buy_apple_orange():
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple_layer, mul_orange_layer = MulLayer(), MulLayer()
    add_apple_orange_layer, mul_tax_layer = AddLayer(), MulLayer()
    apple_price = mul_apple_layer.forward(apple, apple_num)  # forward
    orange_price = mul_orange_layer.forward(orange, orange_num)
    all_price = add_apple_orange_layer.forward(apple_price, orange_price)
    price = mul_tax_layer.forward(all_price, tax)
    dprice = 1  # backward
    dall_price, dtax = mul_tax_layer.backward(dprice)
    dapple_price, dorange_price = add_apple_orange_layer.backward(dall_price)
    dorange, dorange_num = mul_orange_layer.backward(dorange_price)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    return price, {"dapple_num": dapple_num, "dapple": dapple, "dorange": dorange, "dorange_num": dorange_num,
                   "dtax": dtax}


def main(argv=None):
    parse_args(__doc__, argv)
    for case, run in (("apple", buy_apple), ("apple_orange", buy_apple_orange)):
        price, grads = run()
        print(f"price {case} {price:g}")
        for name, g in grads.items():
            print(f"grad {case} {name} {g:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
