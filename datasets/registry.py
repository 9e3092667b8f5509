"""The names `--dataset` accepts besides TFDS names, and their sources."""

# name -> callable(data_dir, **options) returning a `Source`, in
# registration order.
SOURCES = {}
# name -> the option keywords (flag names) its source takes.
OPTIONS = {}


def register(name, options=()):
    """Class decorator: `--dataset=name` opens `cls(data_dir, **options)`,
    with the flags named in `options` (e.g. "digit_sizes") as keywords."""
    def decorate(cls):
        if name in SOURCES:
            raise ValueError(f"dataset {name!r} is registered twice")
        SOURCES[name] = cls
        OPTIONS[name] = tuple(options)
        return cls
    return decorate
