"""Configurations resolved exactly as `python run.py` resolves them.

`resolve(**flags)` runs `config.resolve` on the flag defaults of run.py with
`flags` set as if passed on the command line, so tests train what a user's
command would (presets, loss parameters and checks included).
"""
import config
import run


def defaults():
    return {name: run.FLAGS[name].default for name in run.PROJECT_FLAG_NAMES}


def resolve(**flags):
    """(Config, Source) of a command line setting `flags`."""
    unknown = set(flags) - set(run.PROJECT_FLAG_NAMES)
    if unknown:
        raise KeyError(f"not run.py flags: {sorted(unknown)}")
    values = dict(defaults(), **flags)
    return config.resolve(values, set(flags), defaults())
