"""Hiding what native libraries write to file descriptor 2 while they load.

TensorFlow's C++ runtime announces itself (oneDNN, missing CUDA) on file
descriptor 2 as it loads and finds its devices; those lines bypass every
log level, and a user's error message should be the only line they see.
run.py and the experiment drivers import TensorFlow inside `hidden()`.
Only the standard library is used: this module is imported before
TensorFlow.
"""
import contextlib
import os
import sys


@contextlib.contextmanager
def hidden():
    """File descriptor 2 points at os.devnull inside the block, and is
    restored after it. Left alone when the user sets TF_CPP_MIN_LOG_LEVEL
    to ask for TensorFlow's logs."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
