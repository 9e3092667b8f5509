"""The flags of `run.py`: the original release's 48, then this project's.

Defined here, once, and parsed by `run.py`; the benchmarks and tests read
them too. Nothing here imports TensorFlow, so a run's configuration is
built the same way where it is not installed (`bench/train_step.py
--backend=jax`): `parsed()` gives the values that `config.resolve` (or, with
the runs on disk, `run_record.resolve`) turns into a `config.Config`.
"""
import sys

from absl import flags

import config
from config import CHOICES

FLAGS = flags.FLAGS

# ---------------------------------------------------------------------------
# The original's 48 flags. Defaults are the original's; the documented
# deviations are `dataset` (embedded digits), `use_tpu` (False: the strategy is
# detected) and `width_multiplier` (a float). Flags left unset take the
# dataset's preset (`Source.preset()`, applied by `config.resolve`).
# ---------------------------------------------------------------------------
flags.DEFINE_float("learning_rate", 0.3, "Initial learning rate per batch size of 256.")
flags.DEFINE_enum("learning_rate_scaling", "linear", list(CHOICES["learning_rate_scaling"]),
                  "How to scale the learning rate as a function of batch size.")
flags.DEFINE_float("warmup_epochs", 10, "Number of epochs of warmup.")
flags.DEFINE_float("weight_decay", 1e-6, "Amount of weight decay to use.")
flags.DEFINE_float("batch_norm_decay", 0.9, "Batch norm decay parameter.")
flags.DEFINE_integer("train_batch_size", 512, "Global batch size for training.")
flags.DEFINE_string("train_split", "train", "Split for training.")
flags.DEFINE_integer("train_epochs", 100, "Number of epochs to train for.")
flags.DEFINE_integer("train_steps", 0, "Number of steps to train for. If provided, overrides train_epochs.")
flags.DEFINE_integer("eval_steps", 0, "Number of steps to eval for. If not provided, evals over entire dataset.")
flags.DEFINE_integer("eval_batch_size", 256, "Global batch size for eval.")
flags.DEFINE_integer("checkpoint_epochs", 1, "Number of epochs between checkpoints.")
flags.DEFINE_integer("checkpoint_steps", 0,
                     "Number of steps between checkpoints. If provided, overrides checkpoint_epochs.")
flags.DEFINE_string("eval_split", "validation", "Split for evaluation.")
flags.DEFINE_string("dataset", "digits",
                    "Dataset: 'digits' (embedded), 'digits_on_photos' and 'multi_digits' (generated "
                    "from installed packages), 'digits_on_flowers' (tf_flowers + mnist from "
                    "--data_dir), 'image_folder' (needs --data_dir) or a TFDS name read from "
                    "--data_dir. Flags left unset take the dataset's preset: for digits "
                    "see each flag; images up to 32 px get a CIFAR-stem ResNet-18 at batch 128, "
                    "up to 160 px a ResNet-18 at their own size; larger ones the original's "
                    "defaults (README, 'Flags that matter').")
flags.DEFINE_bool("cache_dataset", False, "Whether to cache the entire dataset in memory.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "train_then_eval"],
                  "Whether to perform training or evaluation. eval evaluates the newest "
                  "checkpoint of --model_dir (see --eval_wait_secs) with the model and data "
                  "flags of its flags.json.")
flags.DEFINE_enum("train_mode", "pretrain", list(CHOICES["train_mode"]),
                  "The train mode controls different objectives and trainable components: pretrain "
                  "(contrastive), finetune (supervised), autoencoder (the encoder with a decoder and a "
                  "reconstruction loss, the baseline of the feature-suppression study).")
flags.DEFINE_bool("lineareval_while_pretraining", True,
                  "Whether to finetune supervised head while pretraining.")
flags.DEFINE_string("checkpoint", None, "Loading from the given checkpoint (prefix or run directory) for "
                    "fine-tuning if a finetuning checkpoint does not already exist in model_dir; "
                    "its run's architecture flags apply.")
flags.DEFINE_bool("zero_init_logits_layer", False, "If True, zero initialize layers after avg_pool for supervised learning.")
flags.DEFINE_integer("fine_tune_after_block", -1,
                     "The layers after which block that we will fine-tune. -1 means fine-tuning everything. "
                     "0 means fine-tuning after stem block. 4 means fine-tuning just the linear head.")
flags.DEFINE_string("master", None, "Address/name of the TensorFlow master to use. By default, use an in-process master.")
flags.DEFINE_string("model_dir", None, "Model directory for training (default: runs/<dataset>_<mode>_<loss>_<time>).")
flags.DEFINE_string("data_dir", None, "Directory where dataset is stored.")
flags.DEFINE_bool("use_tpu", False, "Whether to run on TPU (also implied by --tpu_name or --master).")
flags.DEFINE_string("tpu_name", None, "The Cloud TPU to use for training.")
flags.DEFINE_string("tpu_zone", None, "GCE zone where the Cloud TPU is located in.")
flags.DEFINE_string("gcp_project", None, "Project name for the Cloud TPU-enabled project.")
flags.DEFINE_enum("optimizer", "lars", list(CHOICES["optimizer"]), "Optimizer to use.")
flags.DEFINE_float("momentum", 0.9, "Momentum parameter.")
flags.DEFINE_string("eval_name", None, "Name for eval (names the eval summary folder).")
flags.DEFINE_integer("keep_checkpoint_max", 5, "Maximum number of checkpoints to keep.")
flags.DEFINE_integer("keep_hub_module_max", 1,
                     "Maximum number of Hub modules (SavedModels in model_dir/saved_model/<step>) to keep; "
                     "0 exports none.")
flags.DEFINE_float("temperature", 0.1, "Temperature parameter for contrastive loss (unset: the loss's own).")
flags.DEFINE_boolean("hidden_norm", True, "L2-normalise the projections before the contrastive loss.")
flags.DEFINE_enum("proj_head_mode", "nonlinear", list(CHOICES["proj_head_mode"]), "How the head projection is done.")
flags.DEFINE_integer("proj_out_dim", 128, "Number of head projection dimension.")
flags.DEFINE_integer("num_proj_layers", 3, "Number of non-linear head layers.")
flags.DEFINE_integer("ft_proj_selector", 0, "Which layer of the projection head to use during fine-tuning. "
                     "0 means no projection head, and -1 means the final layer.")
flags.DEFINE_boolean("global_bn", True, "Whether to aggregate BN statistics across distributed cores.")
flags.DEFINE_float("width_multiplier", 1, "Multiplier to change width of network (fractions allowed).")
flags.DEFINE_integer("resnet_depth", 50, "Depth of ResNet: 18, 34, 50, 101, 152 or 200.")
flags.DEFINE_float("sk_ratio", 0.0,
                   "If it is bigger than 0, it enables selective kernels in bottleneck blocks "
                   "(ResNet-50 and deeper), ResNet-D projection shortcuts and, unless the "
                   "CIFAR stem is used, the ResNet-D deep stem. Recommendation: 0.0625.")
flags.DEFINE_float("se_ratio", 0.0, "If it is bigger than 0, it will enable SE.")
flags.DEFINE_integer("image_size", 224, "Input image size.")
flags.DEFINE_float("color_jitter_strength", 1.0,
                   "The strength of color jittering (0 turns colour distortion off, grayscale included).")
flags.DEFINE_boolean("use_blur", True, "Whether or not to use Gaussian blur for augmentation during pretraining.")

# ---------------------------------------------------------------------------
# Flags this project adds.
# ---------------------------------------------------------------------------
flags.DEFINE_enum("loss", "ntxent", list(CHOICES["loss"]), "Contrastive objective (see README, 'Losses').")
flags.DEFINE_enum("prior", None, list(CHOICES["prior"]),
                  "swd: prior the representations are matched to (default uniform_hypersphere).")
flags.DEFINE_float("lambda_weight", None, "decoupled/swd/simple/align_uniform: weight λ of the distribution term.")
flags.DEFINE_float("gen_loss_scale", None, "decoupled/swd: overall scale s of the generalized loss (default 1).")
flags.DEFINE_bool("dhel_include_augs", None, "dhel: add the second view's energy term (default True).")
flags.DEFINE_enum("kcl_kernel", None, list(CHOICES["kcl_kernel"]), "kcl: kernel (default gaussian).")
flags.DEFINE_float("kcl_t", None, "kcl: kernel parameter t (default 2; > 0, or != 0 for riesz).")
flags.DEFINE_float("kcl_gamma", None, "kcl: weight γ of the uniformity term (default 16).")
flags.DEFINE_integer("hard_num_negatives", None, "hard: negatives kept per anchor (default all).")
flags.DEFINE_integer("loss_chunk_size", None,
                     "ntxent/dcl/dhel/decoupled: the same loss computed over blocks of this many "
                     "candidate rows, its memory growing with n·C instead of n·B (unset: whole "
                     "matrices).")
flags.DEFINE_enum("precision", "float32", list(CHOICES["precision"]),
                  "Arithmetic of the layers: float32, or mixed_bfloat16 / mixed_float16 (compute in the "
                  "reduced type, float32 variables; the losses, normalisation and softmax stay float32; "
                  "float16 with dynamic loss scaling). Exported SavedModels compute in float32.")
flags.DEFINE_float("align_alpha", None, "align_uniform: exponent α of the alignment term (default 2).")
flags.DEFINE_float("unif_t", None, "align_uniform: t of the uniformity term (default 2).")
flags.DEFINE_integer("num_rand_bits", 0,
                     "RandBits (Chen & Li 2021): K channels appended to every view, the bits of a hash "
                     "of the image into 2^K buckets, the same in both views and at evaluation "
                     "(datasets/rand_bits.py); the encoder's input has 3 + K channels.")
flags.DEFINE_list("digit_sizes", None,
                  "digits_on_photos, digits_on_flowers: the pasted digit's size in pixels; "
                  "multi_digits: the large and the small digit's sizes, e.g. 20,8 (unset: the "
                  "dataset's own).")
flags.DEFINE_float("crop_min_area", 0.08, "Smallest area fraction of the random resized crop.")
flags.DEFINE_bool("augment_in_step", False,
                  "Make the training views inside the compiled training step (augment.py, keras.ops) "
                  "from the uint8 images and random draws the input pipeline delivers, instead of "
                  "in the tf.data pipeline: the same augmentation and law, on the step's devices.")
flags.DEFINE_float("probe_learning_rate", 0.0,
                   "Learning rate per batch size of 256 of the online linear probe (pretrain with "
                   "--lineareval_while_pretraining), on the same warm-up and cosine schedule as --learning_rate; "
                   "0 trains the probe with the main optimizer, as the original does.")
flags.DEFINE_float("probe_weight_decay", None,
                   "Weight decay of the online probe (pretrain with --lineareval_while_pretraining), an "
                   "explicit wd·½Σw² term on the head variables --weight_decay would decay (kernel and bias; "
                   "the kernel only under LARS); unset: --weight_decay, as the original.")
flags.DEFINE_bool("probe_batch_norm", False,
                  "Standardise the supervised head's input with batch norm without scale or offset "
                  "(the MAE linear probe); the original feeds the features as they are.")
flags.DEFINE_enum("probe_view", "augmented", list(CHOICES["probe_view"]),
                  "What the online probe trains on while pretraining: the augmented views, as the original "
                  "does, or clean, the evaluation view of each training image, encoded in inference mode "
                  "as at evaluation (one extra forward pass per step).")
flags.DEFINE_bool("use_flip", True, "Random horizontal flips in training (the original always flips).")
flags.DEFINE_bool("partial_checkpoint", False,
                  "With --checkpoint: initialise only the variables whose path and shape match "
                  "(a checkpoint of another depth, width or stem) and list every one skipped; "
                  "the architecture flags given here then apply. Without it, a checkpoint whose "
                  "encoder does not match is refused.")
flags.DEFINE_integer("eval_wait_secs", 0,
                     "--mode=eval beside a training run, as the original's eval mode: after "
                     "evaluating the newest checkpoint, wait for each newer one and evaluate it, "
                     "until the run's last step, or until this many seconds pass without a new "
                     "checkpoint (the trainer stopped). 0: evaluate the newest one and exit.")
flags.DEFINE_bool("compute_baselines", False,
                  "After eval, also fit logistic regression on raw pixels and on an untrained encoder's features "
                  "(small datasets only).")
flags.DEFINE_integer("seed", 0, "Seed for weight initialisation, augmentations and the SWD projections.")
flags.DEFINE_bool("deterministic", False,
                  "Bit-identical reruns: seeded data order kept through the parallel input pipeline, "
                  "deterministic kernels; a run resumed from a checkpoint continues with the batches an "
                  "uninterrupted one would have seen. Slower input pipeline.")
flags.DEFINE_bool("jit_compile", False,
                  "TensorFlow backend: compile each replica's training step with XLA. Measured 2x "
                  "slower than TensorFlow's own kernels on CPU (bench/README.md); the JAX backend "
                  "always compiles its whole step.")
flags.DEFINE_bool("plot", False,
                  "After evaluating, write plot_training.png (losses, accuracies, the representation "
                  "metrics over steps), plot_embedding.png (PCA of h) and plot_cosines.png (pairwise "
                  "cosines against the uniform law) into --model_dir.")
flags.DEFINE_integer("log_every_steps", 10,
                     "Steps between training summaries and progress lines (0: at checkpoints only).")


PROJECT_FLAGS = tuple(FLAGS.get_flags_for_module(sys.modules[__name__]))
PROJECT_FLAG_NAMES = tuple(f.name for f in PROJECT_FLAGS)
for _name, _check, _message in config.validators():
    flags.register_validator(_name, _check, _message)


def defaults():
    """{flag: default value} of the project's flags."""
    return {name: FLAGS[name].default for name in PROJECT_FLAG_NAMES}


def parsed():
    """(values, present, defaults) of the parsed project flags: {flag:
    value}, the names set on the command line, {flag: default}."""
    values = {name: FLAGS[name].value for name in PROJECT_FLAG_NAMES}
    present = {name for name in PROJECT_FLAG_NAMES if FLAGS[name].present}
    return values, present, defaults()
