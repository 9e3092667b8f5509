"""The names `--dataset` accepts besides TFDS names, and their sources."""

# name -> callable(data_dir) returning a `Source`, in registration order.
SOURCES = {}


def register(name):
    """Class decorator: `--dataset=name` opens `cls(data_dir)`."""
    def decorate(cls):
        if name in SOURCES:
            raise ValueError(f"dataset {name!r} is registered twice")
        SOURCES[name] = cls
        return cls
    return decorate
