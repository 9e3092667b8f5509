r"""Time and peak memory of one forward and backward pass of each loss, whole
and chunked (`--loss_chunk_size`).

    python bench/loss.py                                   # every loss, 2N = 512 ... 65536
    python bench/loss.py --losses=ntxent --sizes=4096,16384 --chunk_size=1024
    python bench/loss.py --backend=jax --smoke             # tiny sizes, seconds

For each 2N of `--sizes` (z1, z2 of N = 2N/2 rows of d = `--dim` standard
normal entries) and each loss of `--losses` (default: every loss of
`objective.LOSSES`), the whole-matrix loss and, for the losses of
`chunked_loss.LOSSES` with `--chunk_size` > 0, the chunked one are measured,
each in a fresh process so that its peak resident memory (getrusage's
ru_maxrss) is its own. A process compiles loss and gradients with respect to
z1 and z2 as one program (`tf.function`, `jax.jit`), runs `--warmup` passes
(compilation included), then times `--repeats` passes, and prints one JSON
line:

    {"loss", "two_n", "d", "chunk_size" (null: whole), "backend", "device",
     "ms_fwd_bwd": {"median", "min", "max", "repeats"},
     "peak_rss_mib", "start_rss_mib" (resident memory before the first pass:
     the framework and the inputs), and "peak_device_mib" on a GPU}

A measurement whose similarity matrices would need more than `--max_mib`
(`estimated_mib`: the n x m float32 entries, times the copies the whole loss
keeps for its gradient) prints {..., "skipped": why} instead of running, and
one whose process fails or runs past `--timeout` seconds prints
{..., "error": why}.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SIZES = ",".join(str(512 * 2 ** k) for k in range(8))  # 512 ... 65536
SMOKE = dict(sizes="64", repeats=2, warmup=1, chunk_size=24, dim=16)
# Float32 copies of the (2N)^2 similarity entries a whole-matrix loss keeps
# through its gradient: peak minus start RSS at 2N = 8192 was up to 3.0 times
# (2N)^2 x 4 bytes under TensorFlow (ntxent, dcl, hard; 1.35 for dhel, 0.31
# for swd) and 1.9 under JAX (ntxent).
WHOLE_COPIES = 4
# The chunked loss's [2N, C] blocks, with what else it holds: peak minus
# start RSS was 5.4 times 2N x C x 4 bytes for ntxent at 2N = 16384,
# C = 1024 under TensorFlow, 3.3 under JAX.
BLOCK_COPIES = 8


def estimated_mib(loss, two_n, chunk_size):
    """Memory of the loss's similarity entries: (2N)^2 for the whole loss (2N
    anchor rows, or N rows twice, against 2N or N candidates; swd has none),
    2N x C for the chunked one, at float32 and the copies above."""
    if chunk_size:
        entries, copies = two_n * min(chunk_size, two_n), BLOCK_COPIES
    elif loss == "swd":
        return 0.0
    else:
        entries, copies = two_n * two_n, WHOLE_COPIES
    return entries * 4 * copies / 2 ** 20


def current_rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def device_name():
    import keras
    if keras.backend.backend() == "jax":
        import jax
        device = jax.devices()[0]
        if device.platform != "cpu":
            return device.device_kind
    else:
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"cpu ({os.cpu_count()} cores)"


def peak_device_mib():
    """Peak accelerator memory of this process, None on a CPU."""
    import keras
    if keras.backend.backend() == "jax":
        import jax
        device = jax.devices()[0]
        if device.platform == "cpu":
            return None
        return device.memory_stats()["peak_bytes_in_use"] / 2 ** 20
    import tensorflow as tf
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def loss_and_grad_fn(loss, chunk_size):
    """A compiled function (z1, z2) -> (loss, dz1, dz2) of the backend."""
    import keras

    import objective
    # swd draws its projections: a fixed seed (and a traced-safe one under jit).
    extra = {"seed": 0} if loss == "swd" else {}

    def value(z1, z2):
        return objective.compute_loss(loss, z1, z2, chunk_size=chunk_size, **extra)

    if keras.backend.backend() == "jax":
        import jax
        fn = jax.jit(jax.value_and_grad(value, argnums=(0, 1)))
        return lambda z1, z2: jax.block_until_ready(fn(z1, z2))
    import tensorflow as tf

    @tf.function
    def fn(z1, z2):
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            result = value(z1, z2)
        return result, tape.gradient(result, [z1, z2])

    def run(z1, z2):
        result, grads = fn(z1, z2)
        return float(result), [g.numpy() for g in grads]
    return run


def measure(spec):
    """The JSON record of one measurement, in this process."""
    import keras
    import numpy as np
    from keras import ops

    rows = spec["two_n"] // 2
    rng = np.random.default_rng(0)
    z1 = ops.convert_to_tensor(rng.standard_normal((rows, spec["d"]), dtype=np.float32))
    z2 = ops.convert_to_tensor(rng.standard_normal((rows, spec["d"]), dtype=np.float32))
    fn = loss_and_grad_fn(spec["loss"], spec["chunk_size"])
    start_rss = current_rss_mib()
    for _ in range(spec["warmup"]):
        fn(z1, z2)
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        fn(z1, z2)
        times.append((time.perf_counter() - start) * 1e3)
    record = dict(
        {k: spec[k] for k in ("loss", "two_n", "d", "chunk_size")},
        backend=keras.backend.backend(), device=device_name(),
        ms_fwd_bwd=dict(median=round(float(np.median(times)), 3),
                        min=round(min(times), 3), max=round(max(times), 3),
                        repeats=len(times)),
        # ru_maxrss is in KiB on Linux.
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        start_rss_mib=round(start_rss, 1))
    device_peak = peak_device_mib()
    if device_peak is not None:
        record["peak_device_mib"] = round(device_peak, 1)
    return record


def run_child(spec, backend, timeout):
    """The record of one measurement in a fresh process."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as run.py sets it
    base = {k: spec[k] for k in ("loss", "two_n", "d", "chunk_size")}
    base["backend"] = backend
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(base, error=f"ran past --timeout={timeout} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [""])[-1]
        return dict(base, error=f"exit status {done.returncode}: {why}")
    return json.loads(lines[-1])


def measurements(args):
    """(spec, skip reason or None) of every measurement of the flags."""
    import chunked_loss
    import objective
    losses = args.losses.split(",") if args.losses else list(objective.LOSSES)
    unknown = sorted(set(losses) - set(objective.LOSSES))
    if unknown:
        raise SystemExit(f"bench/loss.py: error: unknown loss {', '.join(unknown)}; "
                         f"expected some of {', '.join(objective.LOSSES)}")
    for two_n in (int(s) for s in args.sizes.split(",")):
        for loss in losses:
            chunks = [None]
            if args.chunk_size > 0 and loss in chunked_loss.LOSSES:
                chunks.append(args.chunk_size)
            for chunk_size in chunks:
                spec = dict(loss=loss, two_n=two_n, d=args.dim, chunk_size=chunk_size,
                            repeats=args.repeats, warmup=args.warmup)
                need = estimated_mib(loss, two_n, chunk_size)
                skip = None
                if need > args.max_mib:
                    skip = (f"needs ~{need:.0f} MiB of similarity entries, over "
                            f"--max_mib={args.max_mib}")
                yield spec, skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--losses", default="", help="comma-separated (default: all)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="2N values, comma-separated")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk_size", type=int, default=1024,
                        help="C of the chunked losses (0: whole-matrix only)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max_mib", type=int, default=4096,
                        help="skip a measurement estimated to need more")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        choices=("tensorflow", "jax"))
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny sizes in seconds: {SMOKE} unless given")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
        for name, value in SMOKE.items():
            if name not in given:
                setattr(args, name, value)
    return args


def main(argv):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return
    # The parent only lists the losses: numpy, the lightest Keras backend.
    os.environ["KERAS_BACKEND"] = "numpy"
    for spec, skip in measurements(args):
        if skip:
            record = dict({k: spec[k] for k in ("loss", "two_n", "d", "chunk_size")},
                          backend=args.backend, skipped=skip)
        else:
            record = run_child(spec, args.backend, args.timeout)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
