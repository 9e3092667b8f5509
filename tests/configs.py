"""Configurations resolved exactly as `python run.py` resolves them.

`resolve(**flags)` runs `run_record.resolve` on the flag defaults of run.py
with `flags` set as if passed on the command line, so tests train what a
user's command would (presets, loss parameters and checks included).
"""
import run_flags
import run_record


def defaults():
    return run_flags.defaults()


def resolve(**flags):
    """(Config, Source) of a command line setting `flags`."""
    unknown = set(flags) - set(run_flags.PROJECT_FLAG_NAMES)
    if unknown:
        raise KeyError(f"not run.py flags: {sorted(unknown)}")
    values = dict(defaults(), **flags)
    return run_record.resolve(values, set(flags), defaults())
