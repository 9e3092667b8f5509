"""Layer-wise Adaptive Rate Scaling (LARS) as a Keras 3 optimizer.

LARS (You, Gitman & Ginsburg, 2017, arXiv 1708.03888) scales each variable's
step by a trust ratio η‖w‖/‖g‖, so that every layer moves by roughly the same
fraction of its own norm whatever the scale of its gradient. SimCLR trains with
it at large batch sizes.

The optimizer is written with `keras.ops` only, so it runs on every Keras
backend. Under `tf.distribute`, Keras's base class sums the per-replica
gradients before `update_step` sees them.
"""

import keras
from keras import ops

EETA_DEFAULT = 0.001


@keras.saving.register_keras_serializable(package="simclr")
class LARSOptimizer(keras.optimizers.Optimizer):
    """LARS with coupled weight decay and (optionally Nesterov) momentum.

    For a variable `w` with gradient `g`, learning rate `lr`, momentum `m` and
    momentum slot `v`, each step first adds the weight decay to the gradient,

        g' = g + weight_decay * w      (unless `w` is excluded from decay)

    and then, with `classic_momentum=True`,

        trust = eeta * ‖w‖ / ‖g'‖
        v     = m * v + lr * trust * g'
        w     = w - (m * v + lr * trust * g'   if use_nesterov else v)

    or, with `classic_momentum=False` (the trust ratio measures the update),

        v      = m * v + g'
        update = m * v + g'   if use_nesterov else v
        trust  = eeta * ‖w‖ / ‖update‖
        w      = w - lr * trust * update

    Norms are L2 norms over the whole variable. The trust ratio is 1 when
    either norm is 0, and for variables excluded from layer adaptation.

    This weight decay is part of the gradient, and so passes through the trust
    ratio and the momentum. It is not Keras's decoupled weight decay, which
    this optimizer leaves off.

    Args:
        learning_rate: A float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: Float `m` >= 0, the momentum coefficient.
        use_nesterov: Whether to use Nesterov momentum.
        weight_decay: Float, the coefficient of the decay added to the
            gradient.
        exclude_from_weight_decay: List of strings. A variable whose
            `variable.path` contains any of them gets no weight decay.
        exclude_from_layer_adaptation: List of strings. A variable whose
            `variable.path` contains any of them gets a trust ratio of 1.
            `None` means the same list as `exclude_from_weight_decay`.
        classic_momentum: Whether the learning rate and trust ratio scale the
            gradient before it enters the momentum (`True`) or the update
            after it (`False`).
        eeta: Float, the LARS coefficient η.
        name: Name of the optimizer.
        **kwargs: Other keyword arguments of `keras.optimizers.Optimizer`
            (e.g. `clipnorm`). Keras's own `weight_decay` is not among them.
    """

    def __init__(
        self,
        learning_rate,
        momentum=0.9,
        use_nesterov=False,
        weight_decay=0.0,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        classic_momentum=True,
        eeta=EETA_DEFAULT,
        name="LARSOptimizer",
        **kwargs,
    ):
        # The base class would apply its own decoupled decay if given ours.
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=None,
            name=name,
            **kwargs,
        )
        if momentum < 0:
            raise ValueError(
                f"`momentum` must be >= 0. Received: momentum={momentum}"
            )
        self.momentum = float(momentum)
        self.use_nesterov = bool(use_nesterov)
        self.weight_decay_rate = float(weight_decay)
        self.classic_momentum = bool(classic_momentum)
        self.eeta = float(eeta)
        # Stored under names that do not shadow the base class's
        # `exclude_from_weight_decay()` method.
        self.weight_decay_exclusions = list(exclude_from_weight_decay or [])
        if exclude_from_layer_adaptation is None:
            self.layer_adaptation_exclusions = list(
                self.weight_decay_exclusions
            )
        else:
            self.layer_adaptation_exclusions = list(
                exclude_from_layer_adaptation
            )

    def build(self, var_list):
        """Creates one zero-initialised "momentum" slot per variable."""
        if self.built:
            return
        super().build(var_list)
        self.momentums = self.add_optimizer_variables(var_list, "momentum")
        # Decided here from `variable.path`, because under tf.distribute
        # `update_step` receives a per-replica tf.Variable that has no path.
        self._use_decay = [
            self._use_weight_decay_for(v) for v in var_list
        ]
        self._use_adaptation = [
            self._use_layer_adaptation_for(v) for v in var_list
        ]

    def _use_weight_decay_for(self, variable):
        """Whether `variable` gets weight decay: wd != 0 and no exclusion."""
        if self.weight_decay_rate == 0.0:
            return False
        path = _variable_path(variable)
        return not any(s in path for s in self.weight_decay_exclusions)

    def _use_layer_adaptation_for(self, variable):
        """Whether `variable`'s step is scaled by the trust ratio."""
        path = _variable_path(variable)
        return not any(s in path for s in self.layer_adaptation_exclusions)

    def _trust_ratio(self, weights, direction):
        """Returns eeta·‖weights‖/‖direction‖, or 1 when either norm is 0."""
        w_norm = _l2_norm(weights)
        d_norm = _l2_norm(direction)
        both_positive = ops.logical_and(
            ops.greater(w_norm, 0.0), ops.greater(d_norm, 0.0)
        )
        # Dividing by a placeholder 1 keeps 0/0 out of the graph, so no NaN
        # is computed even on the branch that `where` discards.
        safe_d_norm = ops.where(ops.greater(d_norm, 0.0), d_norm, 1.0)
        return ops.where(
            both_positive,
            self.eeta * w_norm / safe_d_norm,
            ops.ones_like(w_norm),
        )

    def update_step(self, gradient, variable, learning_rate):
        """Applies one LARS step to `variable` (see the class docstring)."""
        index = self._get_variable_index(variable)
        v = self.momentums[index]
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        m = ops.cast(self.momentum, dtype)
        w = ops.convert_to_tensor(variable)
        g = ops.cast(gradient, dtype)

        if self._use_decay[index]:
            g = g + ops.cast(self.weight_decay_rate, dtype) * w

        if self.classic_momentum:
            if self._use_adaptation[index]:
                scaled_lr = lr * self._trust_ratio(w, g)
            else:
                scaled_lr = lr
            next_v = m * v + scaled_lr * g
            if self.use_nesterov:
                update = m * next_v + scaled_lr * g
            else:
                update = next_v
            self.assign(v, next_v)
            self.assign_sub(variable, update)
        else:
            next_v = m * v + g
            if self.use_nesterov:
                update = m * next_v + g
            else:
                update = next_v
            if self._use_adaptation[index]:
                scaled_lr = lr * self._trust_ratio(w, update)
            else:
                scaled_lr = lr
            self.assign(v, next_v)
            self.assign_sub(variable, scaled_lr * update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "use_nesterov": self.use_nesterov,
                # Replaces the base class's (always None) decoupled decay.
                "weight_decay": self.weight_decay_rate,
                "exclude_from_weight_decay": list(
                    self.weight_decay_exclusions
                ),
                "exclude_from_layer_adaptation": list(
                    self.layer_adaptation_exclusions
                ),
                "classic_momentum": self.classic_momentum,
                "eeta": self.eeta,
            }
        )
        return config


def _variable_path(variable):
    """The variable's Keras path, or its name for a non-Keras variable."""
    return getattr(variable, "path", None) or variable.name


def _l2_norm(x):
    """‖x‖₂ over all entries: sqrt(Σ x²)."""
    return ops.sqrt(ops.sum(ops.square(x)))
