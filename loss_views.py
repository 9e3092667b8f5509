"""The two views of a batch as the contrastive losses see them.

`Views` holds a replica's local projections z1, z2 ([n, d], row i of each is
a view of the same example), the rows gathered from every replica
(z1_all, z2_all, [B, d]) and where the local rows sit among them, with the
helpers the losses of `objective.py` and their chunked forms in
`chunked_loss.py` share. Everything is float32, whatever the input dtype.

Only `keras` and `keras.ops` are used, so the module runs on any backend.
"""
import numpy as np
from keras import ops

# Floor of the squared norm in `l2_normalize`: 1e-12 is a normal float32, so
# a zero row maps to zero instead of 0/0.
NORM_EPSILON = 1e-12


class Views:
    """The local rows, the global rows and where the local rows sit in them.

    Args:
        z1, z2: [n, d] local rows.
        z1_all, z2_all: [B, d] rows of every replica, or both None on a
            single device, where they are z1 and z2.
        replica_id: this replica's index: its rows are
            z*_all[replica_id * n : (replica_id + 1) * n]; an int or a scalar
            integer tensor, 0 without the gathered rows.

    Attributes:
        z1, z2, z1_all, z2_all: the rows, float32.
        global_index: [n] int32, replica_id * n + i.
        self_mask: [n, B] bool, True at (i, global_index[i]): the anchor's own
            row in its view, and its positive in the other view.
        global_size: B when static, else None.  global_rows: B, an int or a
            scalar tensor.  dim: d.

    Raises:
        ValueError: inconsistent shapes, one of z1_all and z2_all, a
            replica_id other than 0 without them, or fewer than 2 rows.
    """

    def __init__(self, z1, z2, z1_all=None, z2_all=None, replica_id=0):
        if (z1_all is None) != (z2_all is None):
            raise ValueError("Pass both z1_all and z2_all, or neither.")
        self.z1, self.z2 = as_float32(z1), as_float32(z2)
        check_rows("z1", self.z1, None)
        check_rows("z2", self.z2, self.z1)
        if z1_all is None:
            check_single_device(replica_id)
            self.z1_all, self.z2_all = self.z1, self.z2
        else:
            self.z1_all, self.z2_all = as_float32(z1_all), as_float32(z2_all)
            check_rows("z1_all", self.z1_all, self.z1, same_rows=False)
            check_rows("z2_all", self.z2_all, self.z1_all)
        self.dim = self.z1.shape[1]
        self.global_size, self.global_rows = rows(self.z1_all)
        if self.global_size is not None and self.global_size < 2:
            raise ValueError("The global batch needs at least 2 rows, got "
                             f"{self.global_size}.")
        self.global_index = global_index(replica_id, rows(self.z1)[1])
        columns = ops.arange(self.global_rows, dtype="int32")
        self.self_mask = ops.equal(self.global_index[:, None], columns[None, :])

    def normalized(self):
        """A copy whose four matrices have L2-normalised rows."""
        copy = object.__new__(Views)
        copy.__dict__.update(self.__dict__)
        for name in ("z1", "z2", "z1_all", "z2_all"):
            setattr(copy, name, l2_normalize(getattr(self, name)))
        return copy

    def directions(self):
        """(anchor, partner, same-view global rows, other-view global rows)
        for view 1 then view 2 as the anchor."""
        return ((self.z1, self.z2, self.z1_all, self.z2_all),
                (self.z2, self.z1, self.z2_all, self.z1_all))


def l2_normalize(x):
    """Rows of `x` (cast to float32) scaled to unit norm:
    x / sqrt(max(||x||^2, 1e-12)); a zero row stays zero."""
    x = as_float32(x)
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, NORM_EPSILON))


def as_float32(x):
    return ops.cast(ops.convert_to_tensor(x), "float32")


def rows(x):
    """(static row count or None, row count as an int or a scalar tensor)."""
    static = x.shape[0]
    return static, (static if static is not None else ops.shape(x)[0])


def global_index(replica_id, local_rows):
    """[n] int32 global positions replica_id * n + i of the local rows."""
    offset = ops.cast(replica_id, "int32") * local_rows
    return offset + ops.arange(local_rows, dtype="int32")


def check_single_device(replica_id):
    if isinstance(replica_id, (int, np.integer)) and replica_id != 0:
        raise ValueError(
            f"replica_id={replica_id} needs the gathered rows (z1_all, "
            "z2_all); without them the local rows are the whole batch and "
            "replica_id must be 0.")


def check_rows(what, x, like, same_rows=True):
    """x must be a matrix; with `like`, of its width (and row count)."""
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(
            f"{what} must be an [rows, d] matrix, got shape {shape}.")
    if like is not None:
        expected = tuple(like.shape) if same_rows else (shape[0], like.shape[1])
        if shape != expected:
            raise ValueError(f"{what} must have shape {expected}, got {shape}.")


def check_positive(what, value):
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{what} must be > 0, got {value!r}.")


def logits(anchors, candidates, temperature):
    """[n, m] matrix anchors_i . candidates_j / temperature."""
    return ops.matmul(anchors, ops.transpose(candidates)) / temperature


def rowdot(x, y):
    """[n] row-wise dot products x_i . y_i."""
    return ops.sum(x * y, axis=1)


def mask(logits, where):
    """`logits` with -inf where `where` is True: exact, and safe in any
    dtype, unlike a large finite offset."""
    return ops.where(where, -np.inf, logits)


def alignment(views):
    """1/(2 B d) sum_i ||z1_i - z2_i||^2 (local anchors), the mean over all
    entries, halved.  Works for unnormalised rows too."""
    return 0.5 * ops.mean(ops.square(views.z1 - views.z2))
