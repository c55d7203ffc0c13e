"""Configuration: frozen dataclasses, validated on construction, defaults in exactly one place.

The dataclass defaults are the published settings. ``PRESETS`` holds the only other defaults: the
embedded dataset's, sized for a 2-core CPU. ``resolve`` applies a preset and then the user's explicit
overrides; the resolved config is saved beside every result. The CLI maps one flag onto each field,
and each field's one-line doc (``field_doc``) is the flag's help.

This module imports nothing of vdfast: the fields that name an entry of another module's registry
(the method, the student architecture, the generator size) are checked against the names that
registry gives :func:`register_names` (``vdfast.api`` registers them, and ``import vdfast`` imports
it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable

INITS = ("real", "noise", "herding", "kcenter")
DEVICES = ("auto", "cpu", "cuda")
# differentiable siamese augmentation (vdfast.augment): the names a DistillConfig.dsa may join
DSA_STRATEGIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DECODERS = ("auto", "pyav", "dali")  # video decoders of `vdfast prepare` (vdfast.data.dali)


class ConfigError(ValueError):
    """An impossible or unknown option; the message names the valid choices."""


def dsa_names(strategy: str) -> tuple[str, ...]:
    """The augmentations a DSA strategy joins with ``_`` (``""``: none); :class:`ConfigError`
    naming the unknown ones."""
    names = tuple(n for n in strategy.split("_") if n)
    bad = [n for n in names if n not in DSA_STRATEGIES]
    if bad:
        raise ConfigError(f"dsa: unknown augmentation {', '.join(bad)}; choose among "
                          f"{', '.join(DSA_STRATEGIES)} joined by '_' (e.g. "
                          f"color_crop_cutout_flip_scale_rotate)")
    return names


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(map(str, choices))}")


# registry -> a function giving its valid names (filled by register_names; config imports no registry)
_NAMES: dict[str, Callable[[], Iterable[str]]] = {}


def register_names(registry: str, names: Callable[[], Iterable[str]]) -> None:
    """Declare where the names of ``registry`` come from: ``"method"`` (the method registry),
    ``"student"`` (student architectures), ``"generator"`` (GVD's generator sizes), ``"layout"``
    (dataset layouts of ``vdfast prepare``, with ``auto``). ``names`` is
    called when a config naming one is built (a late lookup: the registry is imported then)."""
    _NAMES[registry] = names


def _name(label, value, registry):
    """``value`` checked against ``registry``'s names, when it has registered them (importing
    vdfast registers every registry before a config can be built)."""
    if registry in _NAMES:
        _choice(label, value, tuple(_NAMES[registry]()))


def check_types(cls, values: dict, prefix: str = "") -> None:
    """:class:`ConfigError` naming the field when a value in ``values`` does not have the type of
    ``cls``'s field (its default's type): an int field takes an int (not a bool, not 1.5), a float
    field an int or a float (not a bool), a bool field a bool, a str field a str."""
    import numbers

    for f in fields(cls):
        if f.name not in values or f.name in SECTIONS or f.default is dataclasses.MISSING:
            continue
        v, want = values[f.name], type(f.default)
        if want is bool:
            ok, what = isinstance(v, bool), "true or false (a bool)"
        elif want is int:
            ok, what = isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"
        elif want is float:
            ok, what = isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"
        elif want is str:
            ok, what = isinstance(v, str), "a string"
        else:
            continue
        if not ok:
            raise ConfigError(f"{prefix}{f.name}={v!r} must be {what}, got {type(v).__name__}")


def _f(default, doc: str, **meta):
    """A field with a default and its one-line doc (shown by ``vdfast ... --help``); ``meta``:
    ``cli_type``, the flag's type when the default's type is not it (a None default)."""
    return field(default=default, metadata={"doc": doc, **meta})


def field_doc(f: dataclasses.Field) -> str:
    """The one-line doc of a config field ("" when it has none)."""
    return f.metadata.get("doc", "")


def _positive(name, value, allow_zero=False):
    # `not value >= 0` is true for NaN too; an infinite step size or count is no setting either
    if value is None or not value >= 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


@dataclass(frozen=True)
class NetConfig:
    """The ConvNet3D used to embed (DM, herding, k-center) and as the default student."""

    width: int = _f(64, "channels of each ConvNet3D block")
    depth: int = _f(3, "number of conv blocks (each halves the spatial size)")
    # instance: the DC family's and the S2D reference's ConvNet3D (`net_norm` instancenorm)
    norm: str = _f("instance", "normalisation after each conv: none | instance | batch")

    def __post_init__(self):
        _positive("net width", self.width)
        _positive("net depth", self.depth)
        _choice("net norm", self.norm, ("none", "instance", "batch"))


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation protocol: fresh students trained on the synthetic set, tested on real clips."""

    students: int = _f(3, "fresh students trained per evaluated set (the table reports mean and spread)")
    student: str = _f("convnet3d", "student architecture (a name from vdfast.models.STUDENTS)")
    epochs: int = _f(500, "training epochs of each student on the synthetic set")
    lr: float = _f(0.01, "students' SGD learning rate")
    momentum: float = _f(0.9, "students' SGD momentum")
    weight_decay: float = _f(5e-4, "students' SGD weight decay")
    batch: int = _f(256, "students' batch size (synthetic videos per step)")
    standardize: bool = _f(True, "scale each batch by its own scalar mean/std (the protocol)")
    soft_temperature: float = _f(1.0, "KL temperature when the synset carries soft labels")
    learned_lr: bool = _f(True, "train students at a synset's learned lr (MTT's syn_lr) if it has one")
    baselines: bool = _f(True, "also evaluate random real clips at the same ipc")
    full: bool = _f(True, "also train on the full training set")
    full_epochs: int = _f(30, "epochs of the student trained on the full training set")
    full_students: int = _f(1, "students trained on the full training set")
    batched: str = _f("on", "on: a row's students trained as one batched network; off: one by one")
    batch_students: int = _f(0, "students per batched network (0: what half the free memory holds)")

    def __post_init__(self):
        if isinstance(self.batched, bool):  # the API may say batched=False
            object.__setattr__(self, "batched", "on" if self.batched else "off")
        _name("eval student", self.student, "student")
        _choice("eval batched", self.batched, ("on", "off"))
        for n in ("students", "epochs", "batch", "full_epochs", "full_students"):
            _positive(n, getattr(self, n))
        _positive("eval batch_students", self.batch_students, allow_zero=True)
        _positive("eval lr", self.lr)


# ---- method sections: each method owns one dataclass here (flags --<section>-<field>) ----------
@dataclass(frozen=True)
class MTTConfig:
    """MTT (trajectory matching) and its expert buffers.

    Published video settings at ipc 1 (the S2D reference's ``sh/baseline/MTT.sh`` and README):
    syn_steps 10, expert_epochs 1, max_start_epoch 10, initial student lr 0.01 learned
    (``learn_lr``), the whole synset per step, pixel lr 1e5; 30 experts of 50 epochs, SGD lr 0.01
    without momentum, batch 256. ``lr_img`` replaces the top-level ``lr_img`` (DM's) for the pixels
    MTT optimises (the reference's 1e5 goes with its instance-normalised network)."""

    buffer: str = _f("", "expert directory; empty: buffers/<data>-<net>-<training> under $VDFAST_BUFFERS or "
                         "./buffers, trained on first use")
    num_experts: int = _f(30, "expert trajectories in the buffer")
    buffer_epochs: int = _f(50, "epochs each expert trains (rows saved: buffer_epochs + 1)")
    buffer_lr: float = _f(0.01, "experts' SGD learning rate")
    buffer_batch: int = _f(256, "experts' batch size")
    buffer_momentum: float = _f(0.0, "experts' SGD momentum")
    buffer_seed: int = _f(0, "seed of the experts' initialisations and data orders (expert i: seeds from "
                             "(seed, i))")
    syn_steps: int = _f(10, "unrolled student steps per iteration")
    expert_epochs: int = _f(1, "target = expert epoch start + expert_epochs")
    max_start_epoch: int = _f(10, "start epoch drawn from [0, max_start_epoch)")
    # the S2D reference's video MTT: 1e5 (README: `bash MTT.sh 0 miniUCF101 1e5 1`, VPC 1),
    # with the instance-normalised ConvNet3D (NetConfig.norm); see DistillConfig.lr_img
    lr_img: float = _f(1e5, "SGD learning rate of the synthetic pixels MTT optimises (replaces lr_img, "
                               "DM's)")
    lr_lr: float = _f(1e-5, "learning rate of the learnable student step size")
    lr_teacher: float = _f(0.01, "initial student step size")
    learn_lr: bool = _f(True, "learn the student step size (syn_lr) along with the pixels")
    batch_syn: int = _f(0, "synthetic videos per unrolled step (0: all)")
    unroll: str = _f("graph", "graph: keep the whole second-order graph (fastest); recompute: exact "
                              "step-by-step reverse pass, memory of one step")
    chunk: int = _f(0, "videos per forward inside a step (0: the step's batch at once); with "
                       "unroll=recompute, bounds memory independently of ipc")

    def __post_init__(self):
        for n in ("num_experts", "buffer_epochs", "buffer_batch", "syn_steps", "expert_epochs",
                  "max_start_epoch"):
            _positive(f"mtt {n}", getattr(self, n))
        for n in ("buffer_lr", "lr_img", "lr_teacher"):
            _positive(f"mtt {n}", getattr(self, n))
        _positive("mtt lr_lr", self.lr_lr, allow_zero=True)
        _positive("mtt batch_syn", self.batch_syn, allow_zero=True)
        _positive("mtt chunk", self.chunk, allow_zero=True)
        _choice("mtt unroll", self.unroll, ("graph", "recompute"))
        if not 0 <= self.buffer_momentum < 1:
            raise ConfigError(f"mtt buffer_momentum must be in [0, 1), got {self.buffer_momentum}")
        if self.max_start_epoch + self.expert_epochs > self.buffer_epochs:
            raise ConfigError(
                f"mtt max_start_epoch ({self.max_start_epoch}) + expert_epochs ({self.expert_epochs}) "
                f"exceeds buffer_epochs ({self.buffer_epochs}); lower --mtt-max-start-epoch or raise "
                f"--mtt-buffer-epochs")


@dataclass(frozen=True)
class DCConfig:
    """DC (gradient matching; Zhao, Mopuri & Bilen 2021). One iteration = a fresh random network,
    then ``outer_loop`` synset updates with ``inner_loop`` epochs of network training on the
    synthetic set between them. ``outer_loop``/``inner_loop`` 0: the paper's table by ipc
    (1: 1/1, 10: 10/50, 20: 20/25, 30: 30/20, 40: 40/15, 50: 50/10; other ipc: the largest entry
    at or below it)."""

    outer_loop: int = _f(0, "synset updates per iteration (0: the paper's table by ipc)")
    inner_loop: int = _f(0, "network-training epochs between synset updates (0: the paper's table by ipc)")
    batch_real: int = _f(256, "real clips per class per outer step")
    batch_train: int = _f(256, "synthetic clips per network-training step (inner loop)")
    lr_net: float = _f(0.01, "plain SGD of the network in the inner loop")
    lr_img: float = _f(0.1, "SGD(momentum=cfg.momentum) on pixel synsets (replaces lr_img, DM's)")
    batched: bool = _f(False, "all classes' gradients in one vmap (exact; more memory; for GPUs)")

    def __post_init__(self):
        for n in ("outer_loop", "inner_loop"):
            _positive(f"dc {n}", getattr(self, n), allow_zero=True)
        for n in ("batch_real", "batch_train", "lr_net", "lr_img"):
            _positive(f"dc {n}", getattr(self, n))


@dataclass(frozen=True)
class FRePoConfig:
    """FRePo (Zhou, Nezhadarya & Ba 2022): kernel ridge regression from synthetic to real
    ``embed`` features of a pool of online-trained networks; learnable labels; Adam."""

    pool_size: int = _f(10, "online models; one per step, round-robin")
    reset_every: int = _f(100, "a model is re-initialised after this many updates")
    train_all: bool = _f(False, "True: every pool model takes a step each iteration")
    batch_real: int = _f(1024, "real clips per step in all (balanced: batch_real // nc per class)")
    reg: float = _f(1e-6, "ridge: lambda = reg * tr(K_ss) / N")
    lr_img: float = _f(3e-4, "Adam on pixel synsets (replaces lr_img, DM's)")
    lr_label: float = _f(3e-4, "Adam on the label targets")
    lr_net: float = _f(3e-4, "Adam of the online models")
    schedule: str = _f("cosine", "of the synset/label learning rates over the run: cosine | constant")
    learn_labels: bool = _f(True, "learn the synthetic label targets along with the pixels")
    label_margin: float = _f(0.5, "hinge keeping each label's own class this far above the others")
    margin_weight: float = _f(1.0, "weight of the label-margin hinge in the loss (0: off)")
    label_confidence: float = _f(0.9, "evaluation soft labels: softmax(labels / tau), tau set so the "
                                      "initial labels give this probability to their class")

    def __post_init__(self):
        for n in ("pool_size", "reset_every", "batch_real", "reg", "lr_img", "lr_label", "lr_net"):
            _positive(f"frepo {n}", getattr(self, n))
        _positive("frepo label_margin", self.label_margin, allow_zero=True)
        _positive("frepo margin_weight", self.margin_weight, allow_zero=True)
        _choice("frepo schedule", self.schedule, ("cosine", "constant"))
        if not 0 < self.label_confidence < 1:
            raise ConfigError(f"frepo label_confidence must be in (0, 1), got {self.label_confidence}")


@dataclass(frozen=True)
class S2DConfig:
    """Static-dynamic disentanglement: static memory, dynamic memory, integrator.

    Learning rates and momentum of 0 / < 0 mean "the published value for the objective" (the
    ``s2d-<objective>`` method), from :attr:`PUBLISHED`: DM lr_D 1e-4, lr_H 1e-5, SGD momentum 0.95;
    MTT lr_D 1e4, lr_H 1e-3 (the objective's own momentum). DC and FRePo have no published values
    in the spec: vdfast's own (DC: DC's pixel lr for D; FRePo: Adam-sized), tune them explicitly.
    """

    pairing: str = _f("multi", "\"multi\": spc = dpc = 2 ipc, redrawn per call; \"1:1\": spc = dpc = ipc")
    lr_dynamic: float = _f(0.0, "0: published for the objective")
    lr_integrator: float = _f(0.0, "0: published for the objective")
    momentum: float = _f(-1.0, "< 0: published for the objective (or the objective's own)")
    integrator_init: str = _f("identity", "\"identity\": videos start as the still image + a little motion; "
                                          "\"default\": Conv3d init")
    static_method: str = _f("dc", "image method of static learning: \"dc\" (the paper) or \"dm\"")
    static_iterations: int = _f(1000, "iterations of static learning (0: keep the initial static memory)")
    static_lr: float = _f(0.0, "0: the image method's usual lr (DC 0.1, DM 1.0)")
    static_batch_real: int = _f(256, "real frames per class per iteration")
    static_width: int = _f(128, "channels of static learning's ConvNet2D")
    static_depth: int = _f(4, "blocks of static learning's ConvNet2D")
    static_norm: str = _f("instance", "normalisation in static learning's ConvNet2D: none | instance | "
                                      "batch")
    static_path: str = _f("", "bring your own static memory (static.safetensors dir/file, or an s2d synset "
                              "dir)")
    static_cache: str = _f("", "directory where learned static memories are kept and reused")

    PUBLISHED = {"dm": (1e-4, 1e-5, 0.95), "mtt": (1e4, 1e-3, None), "dc": (0.1, 1e-3, None),
                 "frepo": (1e-3, 1e-4, None)}

    def __post_init__(self):
        _choice("s2d pairing", self.pairing, ("multi", "1:1"))
        _choice("s2d integrator_init", self.integrator_init, ("identity", "default"))
        _choice("s2d static_method", self.static_method, ("dc", "dm"))
        _choice("s2d static_norm", self.static_norm, ("none", "instance", "batch"))
        _positive("s2d lr_dynamic", self.lr_dynamic, allow_zero=True)
        _positive("s2d lr_integrator", self.lr_integrator, allow_zero=True)
        _positive("s2d static_lr", self.static_lr, allow_zero=True)
        for n in ("static_iterations", "static_batch_real", "static_width", "static_depth"):
            _positive(f"s2d {n}", getattr(self, n), allow_zero=n == "static_iterations")
        if self.momentum >= 1:
            raise ConfigError(f"s2d momentum must be < 1 (< 0: the published value), got {self.momentum}")

    def optim(self, objective: str) -> tuple[float, float, float | None]:
        """(lr of D, lr of H, momentum or None for the objective's own) for ``s2d-<objective>``."""
        if objective not in self.PUBLISHED:
            raise ConfigError(f"s2d has no settings for objective {objective!r}; "
                              f"choose from {', '.join(self.PUBLISHED)}")
        lr_d, lr_h, mom = self.PUBLISHED[objective]
        return (self.lr_dynamic or lr_d, self.lr_integrator or lr_h,
                self.momentum if self.momentum >= 0 else mom)


@dataclass(frozen=True)
class GVDConfig:
    """GVD: generator, mode guidance with frame-wise decay, MVIC, soft labels.

    Stages (autoencoder, train latents, generator, modes, samples, teacher) are cached under
    ``workdir`` (empty: ``<run out>/gvd`` when the run has one, else not kept) and resume there.
    """

    workdir: str = _f("", "stage cache / checkpoints; keyed by each stage's settings")
    autoencoder: str = _f("", "a local diffusers AutoencoderKL folder; empty: train vdfast's")
    ae_down: int = _f(8, "spatial factor of the trained autoencoder (4 or 8)")
    ae_width: int = _f(64, "base channels of the trained autoencoder")
    ae_steps: int = _f(20000, "autoencoder training steps")
    ae_batch: int = _f(64, "frames per step")
    ae_lr: float = _f(2e-4, "autoencoder Adam learning rate")
    generator: str = _f("XL", "VideoDiT size: tiny | small | S | B | L | XL")
    generator_init: str = _f("", "local weights to start from: a vdfast gen_final.safetensors (or .pt) or a diffusers "
                                 "LatteTransformer3DModel folder (loaded where names and shapes match, "
                                 "report in the gen stage); empty: random initialisation")
    patch: int = _f(2, "generator patch size on the latents")
    gen_steps: int = _f(100000, "diffusion training steps (train split only)")
    gen_batch: int = _f(32, "generator batch size (latent videos per step)")
    gen_lr: float = _f(1e-4, "generator AdamW learning rate")
    ema: float = _f(0.9999, "decay of the generator's exponential moving average (the sampled weights)")
    p_uncond: float = _f(0.1, "class dropout for classifier-free guidance")
    train_timesteps: int = _f(1000, "diffusion schedule length")
    schedule: str = _f("linear", "linear (betas 1e-4 .. 0.02, DDPM) | cosine")
    prediction: str = _f("eps", "what the generator predicts: eps (noise) | v (velocity)")
    min_snr: float = _f(0.0, "min-SNR-gamma loss weighting (0: off, uniform weights)")
    class_tokens: bool = _f(False, "also add the class embedding to every token (besides adaLN)")
    lr_schedule: str = _f("constant", "generator lr after warm-up: constant | cosine (decay to 0)")
    checkpoint_every: int = _f(1000, "training steps between checkpoints (autoencoder, generator)")
    sampler: str = _f("ddpm", "ddpm | ddim")
    steps: int = _f(50, "sampling steps")
    cfg_scale: float = _f(4.0, "classifier-free guidance scale (0: unconditional)")
    lam: float = _f(0.1, "mode guidance strength (0: off)")
    rho: float = _f(0.0, "last frame's share of lam (1: no frame-wise decay)")
    t_stop: float = _f(0.5, "guide while t >= t_stop * train_timesteps (the noisier part)")
    segments: int = _f(2, "MVIC segments per instance (1: off)")
    select: int = _f(1, "candidates per instance (own noise, same guide); >1 keeps the one the teacher "
                        "gives the highest probability of its class (vdfast's addition, not in the paper; "
                        "1: off)")
    kmeans_iters: int = _f(50, "k-means iterations that find each class's modes")
    chunk: int = _f(32, "instances generated at once (peak memory independent of ipc)")
    soft_labels: bool = _f(True, "store the teacher's soft labels in the synset")
    temperature: float = _f(1.0, "soft labels softmax(logits / T); match --eval-soft-temperature")
    teacher_epochs: int = _f(30, "epochs of the teacher trained on the real training set (soft labels, "
                                 "select)")
    store_as: str = _f("uint8", "decoded videos kept as uint8 pixels or fp16 normalised")
    keep_latents: bool = _f(False, "also store the fp16 latents in the synset")
    attention: str = _f("auto", "the generator's attention: auto | xformers | sdpa (auto: xformers' "
                                "memory_efficient_attention on a CUDA device when xformers imports, "
                                "else torch's scaled_dot_product_attention; the two agree to float "
                                "rounding). The backend that ran is recorded in the run's config.json "
                                "and the synset's gvd metadata")

    def __post_init__(self):
        _name("gvd generator", self.generator, "generator")
        _choice("gvd sampler", self.sampler, ("ddpm", "ddim"))
        _choice("gvd schedule", self.schedule, ("linear", "cosine"))
        _choice("gvd prediction", self.prediction, ("eps", "v"))
        _choice("gvd lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _choice("gvd store_as", self.store_as, ("uint8", "fp16"))
        _choice("gvd attention", self.attention, ("auto", "xformers", "sdpa"))
        _choice("gvd ae_down", self.ae_down, (2, 4, 8, 16))
        for n in ("ae_width", "ae_steps", "ae_batch", "ae_lr", "patch", "gen_steps", "gen_batch",
                  "gen_lr", "train_timesteps", "steps", "segments", "select", "kmeans_iters", "chunk",
                  "teacher_epochs", "temperature"):
            _positive(f"gvd {n}", getattr(self, n))
        _positive("gvd checkpoint_every", self.checkpoint_every, allow_zero=True)
        _positive("gvd lam", self.lam, allow_zero=True)
        _positive("gvd cfg_scale", self.cfg_scale, allow_zero=True)
        _positive("gvd min_snr", self.min_snr, allow_zero=True)
        for n in ("rho", "t_stop", "p_uncond"):
            if not 0.0 <= getattr(self, n) <= 1.0:
                raise ConfigError(f"gvd {n} must be in [0, 1], got {getattr(self, n)}")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"gvd ema must be in [0, 1), got {self.ema}")
        if self.steps > self.train_timesteps:
            raise ConfigError(f"gvd steps ({self.steps}) exceed train_timesteps "
                              f"({self.train_timesteps})")


@dataclass(frozen=True)
class ComposeConfig:
    """compose: real clips scored by a teacher and composed into instances, one pass, no bilevel
    optimisation (vdfast.methods.compose). Each instance of a class joins ``segments`` temporal
    segments (T / segments frames each) of as many different train videos, the ones the teacher is
    most sure of; soft labels from the same teacher. The teacher is cached under ``workdir``
    (empty: ``<run out>/compose``), keyed by its settings, like GVD's."""

    workdir: str = _f("", "teacher and score cache; keyed by their settings")
    teacher: str = _f("", "a local safetensors file of the --net ConvNet3D's weights to use as the teacher; "
                          "empty: train one on the train split")
    teacher_epochs: int = _f(30, "epochs of the teacher trained on the real train split")
    segments: int = _f(2, "videos per instance, T / segments frames from each (1: whole clips)")
    stride: int = _f(0, "frames between the starts of a video's candidate segments (0: half a segment)")
    tiles: int = _f(1, "spatial tiling: each instance is a tiles x tiles grid, each cell another video's "
                       "segment downscaled by tiles (1: whole frames)")
    score: str = _f("logprob", "how the teacher ranks a segment: logprob (of its class) | margin "
                               "(its class's logit minus the best other)")
    select: str = _f("top", "which videos fill a class's instances: top (the best-scored) | herding | "
                            "kcenter (chosen by the teacher's features among the pool x ipc x segments "
                            "best-scored, for a set that covers the class)")
    pool: float = _f(3.0, "with --compose-select herding|kcenter: the candidates, as a multiple of "
                          "ipc x segments (capped at the class's videos)")
    features: str = _f("teacher", "with --compose-select herding|kcenter: the space they work in: "
                                  "teacher (its pooled features) | random (a random network's "
                                  "flattened features, the herding baseline's)")
    soft_labels: bool = _f(True, "store the teacher's soft labels (mean over an instance's segments)")
    temperature: float = _f(1.0, "soft labels softmax(logits / T); the students' KL uses the same T")
    chunk: int = _f(64, "clips scored at once (peak memory independent of the class's size)")

    def __post_init__(self):
        _choice("compose score", self.score, ("logprob", "margin"))
        _choice("compose select", self.select, ("top", "herding", "kcenter"))
        _choice("compose features", self.features, ("teacher", "random"))
        if self.pool < 1:
            raise ConfigError(f"compose pool must be at least 1 (got {self.pool}): the candidates "
                             f"are pool x ipc x segments videos")
        for n in ("teacher_epochs", "segments", "tiles", "temperature", "chunk"):
            _positive(f"compose {n}", getattr(self, n))
        _positive("compose stride", self.stride, allow_zero=True)


@dataclass(frozen=True)
class DistillConfig:
    """One distillation run: the method, its budget and optimiser, and one section per method
    (``net``, ``eval``, ``mtt``, ``dc``, ``frepo``, ``s2d``, ``gvd``, ``compose``). Saved as the run's
    ``config.json``."""

    method: str = _f("dm", "distillation method (see `vdfast info` or vdfast.methods.names())")
    ipc: int = _f(1, "synthetic videos per class")
    iterations: int = _f(5000, "synset updates (0: the initialisation itself)")
    # The S2D reference's video DM: 30 (README: `bash DM.sh 0 miniUCF101 30 1`, VPC 1;
    # sh/baseline/DM.sh: batch_real 64, 5000 iterations) with an instance-normalised ConvNet3D (the
    # DC family's default net_norm, NetConfig.norm). The two go together: without normalisation
    # 30 diverges (PhotoMotion, 8x32^2).
    lr_img: float = _f(30.0, "SGD learning rate of the synthetic pixels (DM; other methods have their own)")
    momentum: float = _f(0.5, "SGD momentum of the synthetic pixels")
    batch_real: int = _f(64, "real clips per class per iteration (DM)")
    embed_chunk: int = _f(0, "clips per embedding forward; 0: from free memory on a GPU, 16 on a CPU")
    init: str = _f("real", "synset initialisation: real (random real clips) | noise | herding | kcenter "
                           "(the clips the coreset picks; pixel synsets)")
    seed: int = _f(0, "seed of every random draw of the run")
    device: str = _f("auto", "auto | cpu | cuda (auto: CUDA when available)")
    checkpoint_every: int = _f(200, "iterations between checkpoints (0: only at the end)")
    profile: int = _f(0, "record this many loop iterations into OUT/profile/ (torch.profiler)")
    dm_bank: int = _f(0, "DM (dm, s2d-dm, static learning with dm): K random networks with cached real "
                         "class means (vdfast.methods.dm_bank); 0: off, a new network and new real clips "
                         "every iteration (the published DM)")
    dm_bank_clips: int = _f(0, "real clips per class and network in the bank's means (0: all)")
    dm_bank_dtype: str = _f("float32", "the bank's stored dtype: float32 | float16")
    dm_bank_heldout: int = _f(0, "DM with a bank (dm, s2d-dm): H fresh random networks, drawn apart "
                                 "from the bank's, on which the synset's DM loss is measured (no "
                                 "gradient) beside its loss on H of the bank's own, in the run's "
                                 "history (does the synset fit the bank or the data?); 0: off")
    dm_bank_heldout_every: int = _f(100, "iterations between held-out-network measurements (also "
                                         "at the start and the end; 0: only there)")
    dsa: str = _f("", "DM (dm, s2d-dm): differentiable siamese augmentation of the real and synthetic "
                      "batch of each step (vdfast.augment), names joined by '_' among "
                      "color, crop, cutout, flip, scale, rotate; empty: off (the published video DM)")
    net: NetConfig = field(default_factory=NetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mtt: MTTConfig = field(default_factory=MTTConfig)
    dc: DCConfig = field(default_factory=DCConfig)
    frepo: FRePoConfig = field(default_factory=FRePoConfig)
    s2d: S2DConfig = field(default_factory=S2DConfig)
    gvd: GVDConfig = field(default_factory=GVDConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)

    def __post_init__(self):
        check_types(DistillConfig, self.__dict__)
        for name, cls in SECTIONS.items():  # nested sections may arrive as dicts (from JSON)
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, cls(**getattr(self, name)))
        _name("method", self.method, "method")
        _choice("init", self.init, INITS)
        _choice("device", self.device, DEVICES)
        _positive("ipc", self.ipc)
        _positive("iterations", self.iterations, allow_zero=True)
        _positive("batch_real", self.batch_real)
        _positive("embed_chunk", self.embed_chunk, allow_zero=True)
        _positive("lr_img", self.lr_img)
        _positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _positive("profile", self.profile, allow_zero=True)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        self._check_bank()
        self._check_dsa()
        if self.init in ("herding", "kcenter") and (self.method.startswith("s2d-")
                                                    or self.method in ("gvd", "static", "compose")):
            raise ConfigError(f"init={self.init!r} chooses pixel clips; {self.method!r} does not start "
                              f"from pixel clips (use init=real)")

    def _check_dsa(self):
        names = dsa_names(self.dsa)
        if names and self.method not in ("dm", "s2d-dm"):
            raise ConfigError(f"--dsa serves DM (methods dm and s2d-dm); {self.method!r} does not use it")
        if names and self.dm_bank:
            raise ConfigError("--dsa augments the real clips of every step, which the network bank "
                              "(--dm-bank) caches unaugmented; use one of them")

    def _check_bank(self):
        _positive("dm_bank", self.dm_bank, allow_zero=True)
        _positive("dm_bank_clips", self.dm_bank_clips, allow_zero=True)
        _choice("dm_bank_dtype", self.dm_bank_dtype, ("float32", "float16"))
        _positive("dm_bank_heldout", self.dm_bank_heldout, allow_zero=True)
        _positive("dm_bank_heldout_every", self.dm_bank_heldout_every, allow_zero=True)
        if self.dm_bank_heldout and (not self.dm_bank or self.method not in ("dm", "s2d-dm")):
            raise ConfigError(f"dm_bank_heldout={self.dm_bank_heldout} measures the DM loop's bank: "
                              f"it needs --dm-bank K and method dm or s2d-dm (got dm_bank="
                              f"{self.dm_bank}, method {self.method!r})")
        if not self.dm_bank:
            if self.dm_bank_clips:
                raise ConfigError(f"dm_bank_clips={self.dm_bank_clips} needs a bank: pass --dm-bank K "
                                  f"(K >= 1 networks), or drop --dm-bank-clips")
            return
        static_dm = self.s2d.static_method == "dm" and (self.method.startswith("s2d-")
                                                        or self.method == "static")
        if self.method not in ("dm", "s2d-dm") and not static_dm:
            raise ConfigError(f"--dm-bank serves DM: methods dm and s2d-dm, and static learning with "
                              f"--s2d-static-method dm (s2d-* and static); {self.method!r} with "
                              f"static method {self.s2d.static_method!r} does not use it")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PrepareConfig:
    """How ``vdfast prepare`` (:func:`vdfast.prepare`) decodes a dataset folder into a store;
    validated here, once. ``classes`` takes names or one comma-separated string."""

    layout: str = _f("auto", "dataset layout: auto | ucf101 | miniucf | hmdb51 | kinetics | ssv2 | frames "
                             "| folder (auto: detected from the folder)")
    frames: int = _f(16, "frames per clip")
    gap: int = _f(4, "take every gap-th frame of the video")
    size: int = _f(112, "clip side in pixels (short side resized to it, then centre-cropped)")
    split: int = _f(1, "official split number (UCF101, HMDB51)")
    classes: tuple = _f(None, "comma-separated subset of class names (default: all)", cli_type=str)
    workers: int = _f(0, "parallel decode processes (0 or 1: decode in this process); with --decoder "
                         "dali, reader pipelines run at once")
    annotations: str = _f(None, "split/annotation files, if not beside the videos", cli_type=str)
    test_fraction: float = _f(0.2, "held-out share per class (plain class folders)")
    seed: int = _f(0, "seed of the held-out draw of plain class folders")
    decoder: str = _f("auto", "auto | pyav | dali (auto: DALI/NVDEC on a GPU when DALI is installed, "
                              "else PyAV)")
    test_clips: int = _f(3, "clips per test video, at random positions seeded by the file's path (the "
                            "evaluation protocol averages over 3); 1: the centred clip only")

    def __post_init__(self):
        if isinstance(self.classes, str):  # "a,b,c" from the command line
            object.__setattr__(self, "classes", tuple(c.strip() for c in self.classes.split(",")
                                                      if c.strip()) or None)
        elif self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        w = self.workers
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ConfigError(f"prepare workers={w!r} must be an integer >= 0 (0 or 1: decode in "
                              f"this process)")
        t = self.test_clips
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(f"test_clips must be an integer >= 1 (clips per test video), got {t!r}")
        check_types(PrepareConfig, self.__dict__, "prepare ")
        if self.frames < 1 or self.size < 8 or self.gap < 1:
            raise ConfigError(f"impossible clip spec: frames={self.frames}, gap={self.gap}, "
                              f"size={self.size} (need frames >= 1, gap >= 1, size >= 8)")
        _choice("prepare decoder", self.decoder, DECODERS)
        for n in ("layout", "annotations"):
            v = getattr(self, n)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"prepare {n}={v!r} must be a string")
        if self.layout not in (None, ""):  # checked against the layout registry before any folder exists
            _name("prepare layout", self.layout, "layout")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The embedded dataset's defaults (8 frames at 32x32, 12 classes): a 2-core CPU finishes the main
# job (distill + 3+3 students + the full-data student) in a few minutes.
PRESETS: dict[str, dict] = {
    "published": {},
    "builtin": {
        "iterations": 200, "batch_real": 16, "lr_img": 1.0, "checkpoint_every": 50,
        # the embedded set's tuned network and rates predate the video defaults: kept as they were
        "net": {"width": 32, "depth": 2, "norm": "none"},
        "eval": {"epochs": 200, "batch": 64, "full_epochs": 20},
        # MTT: 3 experts x 6 epochs (~1 min each on 2 cores); lr 0.05 because 0.01 without
        # momentum barely moves a 12-class expert in 6 epochs
        "mtt": {"num_experts": 3, "buffer_epochs": 6, "buffer_lr": 0.05, "buffer_batch": 64,
                "max_start_epoch": 4, "lr_teacher": 0.05, "lr_img": 1000.0},
        # DC: ipc 1 -> 1 outer / 1 inner step per iteration; lr_img 1 (0.1, the image setting,
        # barely moves the pixels in 200 iterations)
        "dc": {"batch_real": 16, "batch_train": 64, "lr_img": 1.0},
        # FRePo: a 4-model pool living ~100 iterations each; Adam lr 0.01 (3e-4 is for 500K steps)
        "frepo": {"batch_real": 192, "pool_size": 4, "reset_every": 25, "lr_img": 0.01,
                  "lr_label": 0.01},
        # S2D: static learning with DM on a 3-block ConvNet2D (32x32 frames), 100 iterations; lr of D
        # and H tuned for s2d-dm on this data (the published 1e-4 / 1e-5 barely move D in 200
        # iterations here); other objectives: pass --s2d-lr-dynamic / --s2d-lr-integrator
        "s2d": {"static_method": "dm", "static_iterations": 100, "static_width": 32,
                "static_depth": 3, "static_batch_real": 16, "lr_dynamic": 1.0,
                "lr_integrator": 1e-5},
        # GVD (docs/gvd.md): every value below is vdfast's choice for a CPU run of ~17 min on 2
        # processes (~27 min on one; the published constants are the dataclass defaults).
        # v-prediction + class tokens + min-SNR-5 + cosine lr (tried together) beat the eps recipe
        # on the teacher-agreement proxy; mode guidance is stronger (lam 0.5) and longer (t_stop
        # 0.3); 15000 generator steps (5000 tied random real clips at ipc 5, 15000 beat them)
        "gvd": {"ae_down": 4, "ae_width": 16, "ae_steps": 600, "ae_batch": 32, "ae_lr": 1e-3,
                "generator": "tiny", "gen_steps": 15000, "gen_batch": 32, "gen_lr": 1e-3,
                "ema": 0.995, "checkpoint_every": 250, "prediction": "v", "class_tokens": True,
                "min_snr": 5.0, "lr_schedule": "cosine", "steps": 25, "lam": 0.5, "t_stop": 0.3,
                "teacher_epochs": 20},
    },
}


def _derived(base: str, **changes) -> dict:
    """Preset ``base`` with ``changes`` (a section's dict updates that section's keys)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in PRESETS[base].items()}
    for k, v in changes.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


# Stores of 8 frames at 32x32 with tens of classes (the quality benchmark's CPU size,
# benchmarks/quality.py on PhotoMotion): the builtin preset's budgets with a width-16, instance-
# normalised network (a width-32 ConvNet3D costs ~4x the time of a student step on a 2-core CPU;
# instance norm, the reference's, gave the full train set 34.7 % against 31.0 % without) and
# students of 150 epochs; DM's lr 100 (30 and more diverge without normalisation; with it, 100 gave
# 12.0 % at ipc 1 on the validation split). Tuned on PhotoMotion's validation split (split 2),
# never its test split.
#
# compose on this data (validation split, ipc 5, seed 0, 3 students, soft labels; docs/compose.md):
# a 100-epoch teacher (30: 24.7 %, soft labels worse than hard), whole clips (segments 1) chosen by
# herding on the teacher's features among its 3 x ipc best: 29.7 % against herding's 24.9 %.
PRESETS["small"] = _derived(
    "builtin", iterations=400, lr_img=100.0,
    net={"width": 16, "depth": 2, "norm": "instance"},
    eval={"epochs": 150, "batch": 64, "full_epochs": 20},
    compose={"teacher_epochs": 100, "segments": 1, "select": "herding", "pool": 3.0},
)


# nested sections of DistillConfig: CLI prefix / override key -> dataclass
SECTIONS: dict[str, type] = {"net": NetConfig, "eval": EvalConfig, "mtt": MTTConfig, "dc": DCConfig,
                             "frepo": FRePoConfig, "s2d": S2DConfig, "gvd": GVDConfig,
                             "compose": ComposeConfig}


def resolve(preset: str = "published", **overrides) -> DistillConfig:
    """A DistillConfig from a preset plus explicit overrides.

    Overrides may be flat (``lr_img=0.5``), dotted for nested sections (``"net.width": 32``,
    ``"eval.epochs": 100``), or nested dicts (``eval={"epochs": 100}``). ``None`` values are ignored.
    """
    _choice("preset", preset, PRESETS)
    merged: dict = {k: {} for k in SECTIONS}
    known = {f.name for f in fields(DistillConfig)} - set(SECTIONS)
    sub = {k: {f.name for f in fields(cls)} for k, cls in SECTIONS.items()}
    for source in (PRESETS[preset], overrides):
        for k, v in source.items():
            if v is None:
                continue
            if k in SECTIONS and isinstance(v, dict):
                for kk, vv in v.items():
                    _set_sub(merged, sub, k, kk, vv)
            elif "." in k:
                head, tail = k.split(".", 1)
                if head not in sub:
                    raise ConfigError(f"unknown option {k!r}; sections: {', '.join(SECTIONS)}")
                _set_sub(merged, sub, head, tail, v)
            elif k in known:
                merged[k] = v
            else:
                raise ConfigError(f"unknown option {k!r}; valid options: {', '.join(sorted(known))}, "
                                  f"or a section field like net.width ({', '.join(SECTIONS)})")
    check_types(DistillConfig, merged)
    for k, cls in SECTIONS.items():
        check_types(cls, merged[k], f"{k}.")
        merged[k] = cls(**merged[k])
    return DistillConfig(**merged)


def _set_sub(merged, sub, head, key, value):
    if value is None:
        return
    if key not in sub[head]:
        raise ConfigError(f"unknown option {head}.{key}; valid: {', '.join(sorted(sub[head]))}")
    merged[head][key] = value


def from_dict(d: dict) -> DistillConfig:
    """Inverse of ``DistillConfig.to_dict`` (used when loading a saved run)."""
    d = dict(d)
    check_types(DistillConfig, d)
    for k, cls in SECTIONS.items():
        check_types(cls, d.get(k, {}), f"{k}.")
        d[k] = cls(**d.get(k, {}))
    return DistillConfig(**d)
