"""Chapter 8, ``train_deepnet.py``: the book's ``DeepConvNet`` trained with Adam, its weights saved.

``DeepConvNet()`` (``fastnn.book.deep_convnet``: ``(conv-relu-conv-relu-pool) x 3 - affine-relu-dropout -
affine-dropout - softmax``, He initial weights, the book's non-inverted Dropout 0.5) takes 28x28
images: its first affine layer expects ``64*4*4`` inputs. The 8x8 digits are resized to 20x20 and
centred in 28x28 as MNIST's are (``_book.mnist_like``); the first 1400 of the 1437 training
digits are used, so that ``Trainer``'s epochs (``i % (train_size / batch_size) == 0``) fall on
whole steps. As the book: ``Trainer(..., epochs=20, mini_batch_size=100, optimizer='Adam',
optimizer_param={'lr': 0.001}, evaluate_sample_num_per_epoch=1000)`` then
``network.save_params("deep_convnet_params.pkl")`` (to ``OUT/``, for ``ch08_misclassified.py`` and
``ch08_half_float_network.py``). ``--quick`` trains 3 epochs (42 steps), evaluates on 100 samples
an epoch, and builds the network with ``dtype="float32"`` (a fastnn extra): in float64, as the
book computes, its 42 steps take about twice as long (some 15 s on one core). The saved file holds
the weights; the other two scripts load them into the book's float64 network. Over seeds 0-9 the
quick run ends at test accuracy 0.65-0.82.

Prints the book's ``=== epoch:N, train acc:..., test acc:... ===`` lines, then ``loss_first`` and
``loss_last`` (means of the first and last 10 batch losses) and ``test_acc`` (all 360 test
digits). Writes ``ch08_train_deepnet.png``: the batch loss and the accuracies per epoch.

    python examples/book/ch08_train_deepnet.py [--quick] [--out DIR] [--backend NAME] [--seed N]
"""
from __future__ import annotations

import sys

import numpy as np

from fastnn.book.deep_convnet import DeepConvNet
from fastnn.book.trainer import Trainer
from fastnn.datasets import load_digits

from _book import mnist_like, new_figure, parse_args, save

PARAMS = "deep_convnet_params.pkl"


def load_mnist_like():
    """``(x_train, t_train), (x_test, t_test)``: the digits as ``(N, 1, 28, 28)``, 1400 for training."""
    (x_train, t_train), (x_test, t_test) = load_digits(flatten=False)
    return (mnist_like(x_train[:1400]), t_train[:1400]), (mnist_like(x_test), t_test)


def train_deepnet(network, quick):
    """The book's ``train_deepnet.py``; returns the ``Trainer`` (its lists hold the curves)."""
    (x_train, t_train), (x_test, t_test) = load_mnist_like()
    trainer = Trainer(network, x_train, t_train, x_test, t_test,
                      epochs=3 if quick else 20, mini_batch_size=100,
                      optimizer="Adam", optimizer_param={"lr": 0.001},
                      evaluate_sample_num_per_epoch=100 if quick else 1000, verbose=False)
    trainer.train()
    for epoch, (train_acc, test_acc) in enumerate(zip(trainer.train_acc_list, trainer.test_acc_list), start=1):
        print(f"=== epoch:{epoch}, train acc:{train_acc}, test acc:{test_acc} ===")
    return trainer


def main(argv=None):
    args = parse_args(__doc__, argv, params=PARAMS)
    network = DeepConvNet(dtype="float32") if args.quick else DeepConvNet()
    trainer = train_deepnet(network, args.quick)
    network.save_params(args.params)
    print("Saved Network Parameters! " + args.params)

    _, (x_test, t_test) = load_mnist_like()
    test_acc = network.accuracy(x_test, t_test)
    losses = trainer.train_loss_list
    print(f"loss_first {np.mean(losses[:10]):.4f}")
    print(f"loss_last {np.mean(losses[-10:]):.4f}")
    print(f"test_acc {test_acc:.4f}")

    fig = new_figure(11, 4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set(xlabel="iteration", ylabel="loss", title="batch loss (Dropout on, as in training)")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    x = np.arange(1, len(trainer.train_acc_list) + 1)
    ax.plot(x, trainer.train_acc_list, marker="o", label="train (start of epoch)")
    ax.plot(x, trainer.test_acc_list, marker="s", linestyle="--", label="test (start of epoch)")
    ax.axhline(test_acc, color="C2", lw=1, label=f"test after training: {test_acc:.3f}")
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.suptitle("DeepConvNet on the digits resized to 28x28, Adam lr 0.001, batch 100")
    fig.tight_layout()
    print(f"wrote {save(fig, args.out, 'ch08_train_deepnet.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
