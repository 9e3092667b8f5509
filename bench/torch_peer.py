r"""A plain PyTorch SimCLR training step, the peer `bench/train_step.py` is
compared with on the same machine.

    python bench/torch_peer.py                                  # ResNet-18, 32 px, batch 128
    python bench/torch_peer.py --workload=resnet50_224 --batch=256 --compile
    python bench/torch_peer.py --smoke                          # seconds, on a CPU too

PyTorch is not a requirement of the project: without torch and torchvision
this script prints one line and exits with status 2.

The step of the workloads of `bench/train_step.py`: a torchvision ResNet
(`resnet18_32`: ResNet-18 with the CIFAR stem, a 3x3 stride-1 convolution
and no max-pool, as the project uses up to 32 px; `resnet50_224`: ResNet-50,
224 px), the project's default projection head (`--num_proj_layers` = 3
layers: linear without bias, batch norm, ReLU, at the encoder's width; the
last one linear to `--proj_out_dim` = 128 and batch norm with scale but no
offset), the online linear probe on the detached features (as the project's
default run), NT-Xent as the project computes it (L2-normalised, both
directions' means summed, in float32) at the temperature of the project's
preset for the workload (0.5 at 32 px, 0.1 at 224 px), and a momentum-SGD
update (no LARS, constant learning rate: the update's cost, not training).
The two views of a batch of B pairs go through the encoder as one batch of
2B images, channels-last, under bfloat16 autocast on a GPU (and on the CPU
with `--precision=bfloat16`), optionally `torch.compile`d (`--compile`: the
forward pass and the loss; the optimizer step stays eager).

Each batch is measured in a fresh process, on synthetic data placed on the
device once: `--warmup` steps (compilation included), then `--repeats`
blocks of `--steps` steps. One JSON line, the format of
`bench/train_step.py` with "backend": "torch":

    {"workload", "batch", "flags" (the command line's), "config", "views",
     "backend", "device", "trainable_params", "ms_per_step": {"median",
     "min", "max", "repeats", "steps", "warmup"}, "cpu_ms_per_step", "pairs_per_s",
     "total_loss", "peak_rss_mib", "start_rss_mib", and "peak_device_mib"
     on a GPU}
"""
import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

# The image size, depth, classes (probe) and batch of each workload, and the
# temperature the project's preset gives images of that size.
WORKLOADS = {
    "resnet18_32": dict(side=32, depth=18, classes=10, batch=128, temperature=0.5),
    "resnet50_224": dict(side=224, depth=50, classes=1000, batch=256, temperature=0.1),
}
CIFAR_STEM_MAX_SIZE = 32  # as model.SMALL_IMAGE_SIDE
SMOKE = dict(workload="resnet18_32", batch=[8], steps=1, repeats=2, warmup=1, image_size=16)
USAGE_STATUS = 2


def fail(message):
    """One line naming the mistake, exit status 2 (the project's rule)."""
    print(f"bench/torch_peer.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_STATUS)


def nt_xent(z1, z2, temperature):
    """NT-Xent of the original release for projections z1, z2 [n, d], in
    float32: Σ over both directions of mean_i (−ab_ii + LSE_j [ab_ij ;
    aa_ij (j ≠ i)]), ab = ẑ1 ẑ2ᵀ / τ, aa = ẑ1 ẑ1ᵀ / τ, ẑ the L2-normalised rows."""
    import torch
    import torch.nn.functional as F
    with torch.autocast(z1.device.type, enabled=False):
        z1 = F.normalize(z1.float(), dim=1)
        z2 = F.normalize(z2.float(), dim=1)
        rows = torch.arange(z1.shape[0], device=z1.device)
        self_mask = torch.eye(z1.shape[0], dtype=torch.bool, device=z1.device)
        total = 0.0
        for anchor, partner in ((z1, z2), (z2, z1)):
            cross = anchor @ partner.T / temperature
            same = (anchor @ anchor.T / temperature).masked_fill(self_mask, float("-inf"))
            total = total + F.cross_entropy(torch.cat([cross, same], dim=1), rows)
    return total


def build_model(depth, image_size, proj_out_dim, num_proj_layers, classes):
    """{"encoder", "head", "probe"}: torchvision's ResNet without its fc
    (CIFAR stem up to 32 px), the projection head and the linear probe."""
    import torchvision
    from torch import nn
    encoder = getattr(torchvision.models, f"resnet{depth}")()
    if image_size <= CIFAR_STEM_MAX_SIZE:
        encoder.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        encoder.maxpool = nn.Identity()
    width = encoder.fc.in_features
    encoder.fc = nn.Identity()
    layers = []
    for _ in range(num_proj_layers - 1):
        layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    last_norm = nn.BatchNorm1d(proj_out_dim)
    last_norm.bias.requires_grad_(False)  # scale only: it stays 0
    layers += [nn.Linear(width, proj_out_dim, bias=False), last_norm]
    return nn.ModuleDict(dict(encoder=encoder, head=nn.Sequential(*layers),
                              probe=nn.Linear(width, classes)))


def measure(spec):
    """The JSON record of one measurement, in this process."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    torch.backends.cudnn.benchmark = True  # the shapes never change: pick the fastest kernels
    device = torch.device("cuda" if cuda else "cpu")
    bfloat16 = spec["precision"] == "bfloat16" or (spec["precision"] == "auto" and cuda)
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    side, batch = spec["image_size"], spec["batch"]
    model = build_model(spec["depth"], side, spec["proj_out_dim"], spec["num_proj_layers"],
                        spec["classes"]).to(device, memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-6)
    # The two views of each pair, stacked along the batch: rows 0..B-1 and B..2B-1.
    images = torch.rand(2 * batch, 3, side, side, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, spec["classes"], (batch,), device=device)

    def loss_fn(images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            h = model["encoder"](images)
            z = model["head"](h)
            logits = model["probe"](h.detach())
        z1, z2 = z.chunk(2)
        probe_loss = F.cross_entropy(logits.float(), labels.repeat(2))
        return nt_xent(z1, z2, spec["temperature"]) + probe_loss

    if spec["compile"]:
        loss_fn = torch.compile(loss_fn)

    def run_steps(count):
        for _ in range(count):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(images, labels)
            loss.backward()
            optimizer.step()
        return float(loss)  # waits for the device

    model.train()
    start_rss = current_rss_mib()
    if spec["warmup"]:
        run_steps(spec["warmup"])
    times, cpu_times = [], []
    for _ in range(spec["repeats"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = run_steps(spec["steps"])
        times.append((time.perf_counter() - start) / spec["steps"] * 1e3)
        cpu_times.append((time.process_time() - cpu_start) / spec["steps"] * 1e3)
    median = float(np.median(times))
    record = dict(
        workload=spec["workload"], batch=batch, flags=spec["flags"],
        config={k: spec[k] for k in ("image_size", "depth", "temperature", "proj_out_dim",
                                     "num_proj_layers", "channels_last", "compile")},
        views=2, backend="torch", device=torch.cuda.get_device_name(0) if cuda
        else f"cpu ({os.cpu_count()} cores)",
        trainable_params=sum(p.numel() for p in params),
        ms_per_step=dict(median=round(median, 3), min=round(min(times), 3),
                         max=round(max(times), 3), repeats=len(times), steps=spec["steps"],
                         warmup=spec["warmup"]),
        cpu_ms_per_step=round(float(np.median(cpu_times)), 3),
        pairs_per_s=round(batch / (median / 1e3), 2), total_loss=round(loss, 6),
        # ru_maxrss is in KiB on Linux.
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        start_rss_mib=round(start_rss, 1))
    record["config"]["precision"] = "bfloat16" if bfloat16 else "float32"
    record["config"]["torch"] = torch.__version__
    if cuda:
        record["peak_device_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return record


def current_rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_child(spec, timeout):
    """The record of one measurement in a fresh process."""
    base = dict(workload=spec["workload"], batch=spec["batch"], flags=spec["flags"],
                backend="torch")
    try:
        done = subprocess.run([sys.executable, __file__, f"--child={json.dumps(spec)}"],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(base, error=f"ran past --timeout={timeout} s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [""])[-1]
        return dict(base, error=f"exit status {done.returncode}: {why}")
    return json.loads(lines[-1])


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit status 2."""

    def error(self, message):
        fail(message)


def batches(value):
    """The positive integers of a comma-separated option."""
    items = [item.strip() for item in value.split(",")]
    if not all(item.isdigit() and int(item) > 0 for item in items):
        raise argparse.ArgumentTypeError(f"{value!r} is not a list of positive integers")
    return [int(item) for item in items]


def parse_args(argv):
    parser = Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--workload", default="resnet18_32", choices=tuple(WORKLOADS))
    parser.add_argument("--batch", type=batches, help="pairs per step, comma-separated "
                        "(default: the workload's)")
    parser.add_argument("--image_size", type=int, help="default: the workload's")
    parser.add_argument("--temperature", type=float,
                        help="default: the project's preset for the workload's images")
    parser.add_argument("--proj_out_dim", type=int, default=128)
    parser.add_argument("--num_proj_layers", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "bfloat16", "float32"),
                        help="auto: bfloat16 autocast on a GPU, float32 on the CPU")
    parser.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks")
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    parser.add_argument("--smoke", action="store_true", help=f"seconds: {SMOKE} unless given")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
        for name, value in SMOKE.items():
            if name not in given:
                setattr(args, name, value)
    for name in ("steps", "repeats", "image_size", "proj_out_dim", "num_proj_layers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name}={value}; it must be 1 or more")
    if args.warmup < 0:
        fail(f"--warmup={args.warmup}; it must be 0 or more")
    return args


def main(argv):
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return
    missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        fail(f"{' and '.join(missing)} cannot be imported by {sys.executable}; the PyTorch "
             "peer needs torch and torchvision, which the project does not require")
    workload = WORKLOADS[args.workload]
    spec = dict(workload=args.workload, flags=argv, depth=workload["depth"],
                classes=workload["classes"], image_size=args.image_size or workload["side"],
                temperature=args.temperature or workload["temperature"],
                **{k: getattr(args, k) for k in ("proj_out_dim", "num_proj_layers", "precision",
                                                 "channels_last", "compile", "steps",
                                                 "repeats", "warmup")})
    for batch in args.batch or [workload["batch"]]:
        print(json.dumps(run_child(dict(spec, batch=batch), args.timeout)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
