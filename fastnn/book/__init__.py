"""``fastnn.book``: the book's ``common`` package ("Deep Learning from Scratch", O'Reilly Japan), one
module for one, on fastnn's engine.

A learner changes ``from common.layers import Affine`` to ``from fastnn.book.layers import Affine``
and nothing else: the names, signatures, defaults and conventions are the book's, and the
computation runs through fastnn's primitives (fused kernels on numba and CUDA; CuPy arrays stay
on the GPU). The two namespaces:

=====================  =============================================  ===================================
                       ``fastnn.book`` (the book's)                   ``fastnn.layers`` / ``optimizers``
                                                                      (Keras/PyTorch)
=====================  =============================================  ===================================
Dropout                non-inverted (``x * (1 - ratio)`` at            inverted (identity at inference)
                       inference)
Pooling                ``Pooling(pool_h, pool_w, stride=2, pad=0)``   ``MaxPooling2D`` (stride = pool)
RMSprop                ``RMSprop(lr=0.01, decay_rate=0.99)``,         Keras's defaults and epsilon
                       ``p -= lr*g/(sqrt(h) + 1e-7)``
Adam                   epsilon on the uncorrected ``sqrt(v)``         PyTorch's placement
Optimizer parameters   arrays or plain numbers (``{'x': -7.0}``)      arrays
BatchNormalization     1-sample batches in training                   at least 2 samples (book form)
Convolution bias       a scalar is broadcast                          ``(FN,)``
Loss                   ``-log(y + 1e-7)`` (``exact=True`` for         log-sum-exp
                       log-sum-exp)
Default dtype          float64 (the networks)                         float32
=====================  =============================================  ===================================

Modules, as in the book's ``common``: ``functions``, ``gradient``, ``layers``, ``optimizer``,
``multi_layer_net`` (``MultiLayerNet``), ``multi_layer_net_extend`` (``MultiLayerNetExtend``),
``trainer`` (``Trainer``), ``util``. The chapters' networks, by the book's file names:

- ``fastnn.book.two_layer_net.TwoLayerNet`` (also ``fastnn.book.ch05.TwoLayerNet``): chapter 5's
  ReLU network of layers trained by backpropagation.
- ``fastnn.book.ch04.TwoLayerNet``: chapter 4's sigmoid network (``predict`` gives probabilities,
  hand-written ``gradient``). The book has two classes of this name in two folders; the chapter
  module picks one, and the bare ``two_layer_net`` module is chapter 5's, the one later
  chapters build on.
- ``fastnn.book.simple_convnet.SimpleConvNet`` (``fastnn.book.ch07``) and
  ``fastnn.book.deep_convnet.DeepConvNet`` (``fastnn.book.ch08``); ``load_params(file)`` reads
  the book's ``.pkl`` files, admitting only dicts of NumPy arrays (never arbitrary objects).
- ``fastnn.book.layer_naive``: chapter 5's ``MulLayer`` and ``AddLayer`` (``ch05/layer_naive.py``,
  the shopping example's computational graph).

Randomness: without ``seed=``, weights, batches and dropout seeds come from NumPy's global
generator, as in the book, so ``np.random.seed(n)`` makes a script repeatable (and gives the
book's own initial weights). Numerically fragile spots of the book's code and what fastnn does
instead are listed in ``fastnn.book.functions`` and ``fastnn.book.layers``.
"""
__all__ = ["functions", "gradient", "layers", "optimizer", "multi_layer_net", "multi_layer_net_extend",
           "trainer", "util", "two_layer_net", "simple_convnet", "deep_convnet", "ch04", "ch05", "ch07", "ch08"]
