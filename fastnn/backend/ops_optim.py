"""The NumPy reference of the optimizer primitives over flat buffers, and their graph-capture
forms (scalars read from a device buffer), part of ``Ops``."""
from __future__ import annotations

import math

import numpy

INF = math.inf

__all__ = ["OptimizerReference"]


class OptimizerReference:
    """``Ops``' optimizer primitives, written against ``self.xp`` only."""

    # ------------------------------------------------------------------ optimizers (flat buffers)
    def _flush(self, s):
        """Set state values below the smallest normal number to zero, in place."""
        s[self.xp.abs(s) < numpy.finfo(s.dtype).tiny] = 0

    def _grad(self, p, g, weight_decay, scale, clipvalue=INF):
        """``g' = clip(scale*g, -clipvalue, clipvalue) + wd*p``, each part only when it does something
        (``clipvalue`` inf or NaN: no clipping; a NaN gradient stays NaN)."""
        dt = p.dtype.type
        g = g * dt(scale) if scale != 1.0 else g
        if clipvalue < INF:
            g = self.xp.clip(g, dt(-clipvalue), dt(clipvalue))
        return g + dt(weight_decay) * p if weight_decay else g

    def sq_norm(self, x):
        """``sum(x^2)`` as a 0-d array of ``x``'s dtype (for global-norm clipping)."""
        return self.xp.asarray(self.xp.vdot(x, x), dtype=x.dtype)

    # Every ``<rule>_step`` ends with ``clipvalue`` (Keras's: each gradient element clipped to
    # [-clipvalue, clipvalue] after the clipnorm ``scale``, before any L2 term; inf: no clipping).
    def sgd_step(self, p, g, lr, weight_decay=0.0, scale=1.0, clipvalue=INF):
        """SGD: ``g' = clip(scale*g) + wd*p; p -= lr*g'``. Updates ``p`` in place."""
        g = self._grad(p, g, weight_decay, scale, clipvalue)
        p -= p.dtype.type(lr) * g

    def momentum_step(self, p, g, v, lr, momentum, weight_decay=0.0, scale=1.0, nesterov=False, clipvalue=INF):
        """Momentum, the book's form: ``v = m*v - lr*g'; p += v``.

        Nesterov (``nesterov=True``) follows ``torch.optim.SGD``: ``v = m*v + g'; p -= lr*(g' + m*v)``.
        ``g' = clip(scale*g) + wd*p``. Updates ``p`` and ``v`` in place.
        """
        dt = p.dtype.type
        g = self._grad(p, g, weight_decay, scale, clipvalue)
        if nesterov:
            v *= dt(momentum)
            v += g
            p -= dt(lr) * (g + dt(momentum) * v)
        else:
            v *= dt(momentum)
            v -= dt(lr) * g
            p += v
        self._flush(v)

    def _decay(self, p, lr, weight_decay):
        """Keras's decoupled weight decay, ``p -= lr*wd*p``, as ``p *= 1 - lr*wd`` (AdamW's form), in place."""
        if weight_decay:
            p *= p.dtype.type(1.0 - lr * weight_decay)

    def adagrad_step(self, p, g, h, lr, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
        """AdaGrad (Duchi et al. 2011) as Keras 3's ``Adagrad`` (``eps`` inside the root; the caller
        starts ``h`` at ``initial_accumulator_value``)::

            p *= 1 - lr*wd;  g' = clip(scale*g);  h += g'^2;  p -= lr*g' / sqrt(h + eps)

        Updates ``p`` and ``h`` in place."""
        dt = p.dtype.type
        g = self._grad(p, g, 0.0, scale, clipvalue)
        self._decay(p, lr, weight_decay)
        h += g * g
        p -= dt(lr) * g / self.xp.sqrt(h + dt(eps))
        self._flush(h)

    def rmsprop_step(self, p, g, h, lr, rho, eps, weight_decay=0.0, scale=1.0, clipvalue=INF):
        """RMSprop (Tieleman & Hinton 2012) as Keras 3's ``RMSprop`` (``eps`` inside the root)::

            p *= 1 - lr*wd;  g' = clip(scale*g);  h = rho*h + (1-rho)*g'^2;  p -= lr*g' / sqrt(h + eps)

        Updates ``p`` and ``h`` in place."""
        dt = p.dtype.type
        g = self._grad(p, g, 0.0, scale, clipvalue)
        self._decay(p, lr, weight_decay)
        h *= dt(rho)
        h += dt(1 - rho) * g * g
        p -= dt(lr) * g / self.xp.sqrt(h + dt(eps))
        self._flush(h)

    def adam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                  decoupled=False, clipvalue=INF):
        """Adam (Kingma & Ba 2015) as ``torch.optim.Adam``, step number ``t >= 1``::

            g' = clip(scale*g) (+ wd*p unless decoupled);  decoupled (AdamW): p *= 1 - lr*wd
            m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2
            p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

        Updates ``p``, ``m`` and ``v`` in place.
        """
        self._adam(p, g, m, v, None, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue)

    def amsgrad_step(self, p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0,
                     decoupled=False, clipvalue=INF):
        """``adam_step`` with AMSGrad (Reddi et al. 2018), as Keras 3's ``Adam(amsgrad=True)`` keeps it:
        after the moments, ``v_hat = max(v_hat, v)`` (NaN propagates) and ``v_hat`` replaces ``v`` in
        the denominator. Updates ``p``, ``m``, ``v`` and ``v_hat`` in place."""
        self._adam(p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue)

    def _adam(self, p, g, m, v, v_hat, lr, beta1, beta2, eps, t, weight_decay, scale, decoupled, clipvalue):
        dt = p.dtype.type
        if decoupled:
            g = self._grad(p, g, 0.0, scale, clipvalue)
            if weight_decay:
                p *= dt(1.0 - lr * weight_decay)
        else:
            g = self._grad(p, g, weight_decay, scale, clipvalue)
        m *= dt(beta1)
        m += dt(1 - beta1) * g
        v *= dt(beta2)
        v += dt(1 - beta2) * g * g
        if v_hat is not None:
            self.xp.maximum(v_hat, v, out=v_hat)
        step_size = dt(lr / (1.0 - beta1 ** t))
        inv_sqrt_bc2 = dt(1.0 / numpy.sqrt(1.0 - beta2 ** t))
        p -= step_size * m / (self.xp.sqrt(v if v_hat is None else v_hat) * inv_sqrt_bc2 + dt(eps))
        for s in (m, v) if v_hat is None else (m, v, v_hat):
            self._flush(s)

    def nadam_step(self, p, g, m, v, lr, beta1, beta2, eps, t, mu_product, weight_decay=0.0, scale=1.0,
                   clipvalue=INF):
        """Nadam (Dozat 2016) as Keras 3's ``Nadam``, step number ``t >= 1``, with its momentum
        schedule ``mu_i = beta1 * (1 - 0.5 * 0.96**i)`` and ``mu_product = mu_1 * ... * mu_t``
        (Keras's ``u_product`` after this step's factor; the caller carries it)::

            p *= 1 - lr*wd;  g' = clip(scale*g)
            m = b1*m + (1-b1)*g';  v = b2*v + (1-b2)*g'^2
            m_hat = mu_{t+1}/(1 - mu_product*mu_{t+1}) * m + (1 - mu_t)/(1 - mu_product) * g'
            p -= lr * m_hat / (sqrt(v)/sqrt(1-b2^t) + eps)

        Updates ``p``, ``m`` and ``v`` in place."""
        dt = p.dtype.type
        c_m, c_g, inv_sqrt_bc2 = nadam_coefficients(lr, beta1, beta2, t, mu_product)
        g = self._grad(p, g, 0.0, scale, clipvalue)
        self._decay(p, lr, weight_decay)
        m *= dt(beta1)
        m += dt(1 - beta1) * g
        v *= dt(beta2)
        v += dt(1 - beta2) * g * g
        p -= (dt(c_m) * m + dt(c_g) * g) / (self.xp.sqrt(v) * dt(inv_sqrt_bc2) + dt(eps))
        self._flush(m)
        self._flush(v)

    def adamax_step(self, p, g, m, u, lr, beta1, beta2, eps, t, weight_decay=0.0, scale=1.0, clipvalue=INF):
        """Adamax (Kingma & Ba 2015, section 7.1) as Keras 3's ``Adamax``, step number ``t >= 1``::

            p *= 1 - lr*wd;  g' = clip(scale*g)
            m = b1*m + (1-b1)*g';  u = max(b2*u, |g'|)  (NaN propagates)
            p -= lr/(1-b1^t) * m / (u + eps)

        Updates ``p``, ``m`` and ``u`` in place."""
        dt = p.dtype.type
        g = self._grad(p, g, 0.0, scale, clipvalue)
        self._decay(p, lr, weight_decay)
        m *= dt(beta1)
        m += dt(1 - beta1) * g
        u *= dt(beta2)
        self.xp.maximum(u, self.xp.abs(g), out=u)
        p -= dt(lr / (1.0 - beta1 ** t)) * m / (u + dt(eps))
        self._flush(m)
        self._flush(u)

    # ------------------------------------------------------------------ graph-capture variants
    # ``fit(cuda_graph=True)`` (fastnn.backend.graphs) replays a captured step, and a captured kernel's
    # scalar arguments are frozen at capture. So the values that change every step travel in a
    # small device buffer instead: ``s = ops.step_scalars(rule, dtype, ...)`` on the host, copied to
    # the device before each replay, and the captured ``ops.step_dev(rule, p, g, slots, s)`` does
    # exactly what ``ops.<rule>_step(p, g, *slots, ...)`` does. Each backend packs ``s`` its own way (here: the
    # arguments themselves; the CUDA kernels: their derived, dtype-rounded scalars), so only the
    # pairing within one backend is defined. Dropout's per-step value is the stream start
    # ``dropout_base(seed, step)``, a 1-element uint64 device array.
    def dropout_mask_dev(self, shape, rate, base, row0=0, *, dtype=numpy.float32, out=None):
        """``dropout_mask`` with ``dropout_base(seed, step)`` read from ``base`` (1 element, uint64)."""
        if out is None:
            raise ValueError("dropout_mask_dev: out is required (a captured mask is a fixed buffer)")
        return self._dropout_mask_at(shape, rate, int(numpy.asarray(self.asnumpy(base)).reshape(-1)[0]), row0,
                                     dtype, out)

    # The optimizer primitives' arguments after their slots, by kind: f float, i int (the step
    # number t, from 1), b bool. Every rule's last argument is clipvalue.
    STEP_ARGS = {"sgd": "ffff", "momentum": "ffffbf", "adagrad": "fffff", "rmsprop": "ffffff",
                 "adam": "ffffiffbf", "amsgrad": "ffffiffbf", "nadam": "ffffiffff", "adamax": "ffffifff"}

    def _step_rule(self, rule, args=None):
        kinds = self.STEP_ARGS.get(rule)
        if kinds is None:
            raise ValueError(f"unknown optimizer primitive {rule!r}; known: {', '.join(self.STEP_ARGS)}")
        if args is not None:
            if len(args) != len(kinds):
                raise ValueError(f"{rule}_step takes {len(kinds)} arguments after its slots, got {len(args)}")
            if "i" in kinds and args[kinds.index("i")] < 1:
                raise ValueError(f"{rule}_scalars: the step number t counts from 1, got {args[kinds.index('i')]}")
        return kinds

    def step_scalars(self, rule, dtype, *args):
        """The per-step values of ``<rule>_step``'s arguments after its slots (``args``, in that
        primitive's order), packed into a float64 host array for ``step_dev``."""
        self._step_rule(rule, args)
        return numpy.array([float(v) for v in args], dtype=numpy.float64)

    def step_dev(self, rule, p, g, slots, s):
        """``<rule>_step(p, g, *slots, ...)`` with its arguments read from ``s`` (``step_scalars``'s
        array, on the device)."""
        kinds = self._step_rule(rule)
        values = [float(v) for v in numpy.asarray(self.asnumpy(s), dtype=numpy.float64).reshape(-1)]
        if len(values) != len(kinds):
            raise ValueError(f"{rule} step_dev: expected {len(kinds)} scalars, got {len(values)}")
        typed = [int(v) if k == "i" else bool(v) if k == "b" else v for k, v in zip(kinds, values)]
        getattr(self, rule + "_step")(p, g, *slots, *typed)


def nadam_mu(beta1, t):
    """Nadam's momentum schedule as Keras 3 has it: ``mu_t = beta1 * (1 - 0.5 * 0.96**t)``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** t)


def nadam_coefficients(lr, beta1, beta2, t, mu_product):
    """``(c_m, c_g, inv_sqrt_bc2)`` of ``nadam_step`` in float64: ``p -= (c_m*m + c_g*g') /
    (sqrt(v)*inv_sqrt_bc2 + eps)``, with ``c_m = lr*mu_{t+1}/(1 - mu_product*mu_{t+1})`` and
    ``c_g = lr*(1 - mu_t)/(1 - mu_product)``."""
    mu_t, mu_next = nadam_mu(beta1, t), nadam_mu(beta1, t + 1)
    return (lr * mu_next / (1.0 - mu_product * mu_next), lr * (1.0 - mu_t) / (1.0 - mu_product),
            1.0 / math.sqrt(1.0 - beta2 ** t))
