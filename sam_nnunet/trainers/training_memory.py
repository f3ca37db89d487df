"""Training memory of any network, estimated by tracing one nnU-Net training step on fake tensors.

No per-network formula: the network is built and trained for two steps under ``FakeTensorMode`` (tensors with
shapes, dtypes and devices but no data, so a ViT-B at a 128^3 patch costs seconds and no memory), with the loss the
trainer builds (its own ``_build_loss``: auxiliary losses included), and a dispatch mode counts the bytes of every
live tensor storage. The peak of that count over the steps is the estimate: it holds
the parameters and buffers, the batch, the activations autograd saves (only where a trainable path needs them: a
frozen encoder run without gradient saves nothing), temporaries of each operation's outputs, gradients of the
trainable parameters and the optimiser state (AdamW: two tensors per trainable parameter, created in the first step).

What it cannot see: workspace that kernels allocate internally (cuDNN / oneDNN scratch), allocator rounding and
fragmentation, the CUDA context. The check against measured peaks is ``sam_nnunet.planners.measure`` and
documentation/planner.md.
"""
import pydoc
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary


def class_path(cls: type) -> str:
    """The dotted path ``pydoc.locate`` finds a class by (``TrainingSetup.trainer``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _upper_bound(nbytes) -> int:
    """An int, or the largest value a symbolic size can take (outputs of data-dependent size: the bound the fake
    implementation put on it, e.g. all elements of a boolean mask)."""
    if isinstance(nbytes, int):
        return nbytes
    node = nbytes.node
    return int(node.shape_env.bound_sympy(node.expr).upper)


class LiveTensorMemory(TorchDispatchMode):
    """While active, counts the bytes of live tensor storages produced by any operation: ``current`` and ``peak``.

    A storage is counted once however many views share it, from the operation that creates it until it is freed
    (a weak-reference callback). Tensors created before the mode was entered are added with ``track``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())

    def reset_peak(self) -> None:
        self.peak = self.current

    def _add(self, storage) -> None:
        if storage in self._live:
            return
        nbytes = _upper_bound(storage.nbytes())
        self._live[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self._add(out.untyped_storage())
        elif isinstance(out, (tuple, list, dict)):
            self.track(tree_flatten(out)[0])
        return out


def training_step(network: nn.Module, optimizer: torch.optim.Optimizer, loss: nn.Module, data: torch.Tensor,
                  target: Any, clicks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """nnU-Net's ``train_step`` as it runs without a grad scaler (CPU, fp32): zero_grad(set_to_none), forward, loss,
    backward, gradient-norm clipping at 12, optimiser step. Returns the detached loss. ``clicks``: (point_coords,
    point_labels) passed to the network with the patch, as the prompted trainers do."""
    optimizer.zero_grad(set_to_none=True)
    output = network(data) if clicks is None else network(data, *clicks)
    value = loss(output, target)
    del output
    value.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
    optimizer.step()
    return value.detach()


@dataclass
class TrainingSetup:
    """Everything that decides a training step's memory, JSON-serialisable (it crosses process boundaries).

    Arguments:
      network_class: dotted path of the network, as in the plans' ``architecture.network_class_name``.
      arch_kwargs: the plans' ``architecture.arch_kwargs``.
      input_channels: channels of the patch (dataset.json ``channel_names``).
      labels: dataset.json ``labels``.
      regions_class_order: dataset.json ``regions_class_order`` (region-based training) or None.
      batch_dice: the configuration's ``batch_dice`` (loss only; no effect on memory worth noting).
      deep_supervision_scales: the trainer's deep-supervision scales (finest first, nnU-Net's format), or None for
        a trainer that trains without deep supervision (SAMTrainerBase's default).
      trainer: dotted class path (``class_path``) of the trainer whose loss the step uses (its own ``_build_loss``:
        e.g. SAM2_3dMedTrainer's segmentation + auxiliary losses on the network's dict output), or None for nnU-Net's
        loss. A path, not a name: this module sits below the trainers' registry.
      clicks_per_class, random_clicks: click prompts per training patch of a prompted trainer (its network takes
        ``(x, point_coords, point_labels)``): positive clicks per foreground class or region, clicks anywhere; 0 and
        0 for a network that takes none. The step gets every click slot filled (``make_clicks``): the most memory.
    """
    network_class: str
    arch_kwargs: Dict
    input_channels: int
    labels: Dict
    regions_class_order: Optional[List[int]] = None
    batch_dice: bool = False
    deep_supervision_scales: Optional[List[List[float]]] = None
    trainer: Optional[str] = None
    clicks_per_class: int = 0
    random_clicks: int = 0

    def label_manager(self):
        from nnunetv2.utilities.label_handling.label_handling import LabelManager
        return LabelManager(self.labels, self.regions_class_order)

    def build_network(self) -> nn.Module:
        """The network the way nnU-Net builds it from plans (deep supervision off, as our trainers train it)."""
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        return get_network_from_plans(self.network_class, self.arch_kwargs, [], self.input_channels,
                                      self.label_manager().num_segmentation_heads, allow_init=False,
                                      deep_supervision=self.deep_supervision_scales is not None)

    def build_loss(self) -> nn.Module:
        """The loss the trainer trains with, built by its own ``_build_loss`` (nnU-Net's: Dice+CE, or Dice+BCE for
        regions, wrapped for deep supervision; a method may wrap or replace it).

        The trainer is not constructed (that needs plans, a dataset and a device): ``_build_loss`` runs on a bare
        instance holding what nnU-Net's ``_build_loss`` reads."""
        from types import SimpleNamespace
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        cls = nnUNetTrainer if self.trainer is None else pydoc.locate(self.trainer)
        if not isinstance(cls, type):
            raise ValueError(f"no trainer class at {self.trainer!r}")
        trainer_state = cls.__new__(cls)
        vars(trainer_state).update(
            label_manager=self.label_manager(), configuration_manager=SimpleNamespace(batch_dice=self.batch_dice),
            is_ddp=False, enable_deep_supervision=self.deep_supervision_scales is not None,
            _do_i_compile=lambda: False, _get_deep_supervision_scales=lambda: self.deep_supervision_scales,
            print_to_log_file=lambda *args, **kwargs: None)
        return cls._build_loss(trainer_state)

    @staticmethod
    def build_optimizer(network: nn.Module) -> torch.optim.Optimizer:
        """What SAMTrainerBase trains with: AdamW over the trainable parameters only. ``foreach=True`` is what AdamW
        uses on CUDA by default (on the CPU it would step parameter by parameter): one temporary the size of the
        trainable parameters more, and a much shorter trace."""
        return torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4, foreach=True)

    def make_batch(self, patch_size: Sequence[int], batch_size: int) -> Tuple[torch.Tensor, Any]:
        """A batch as nnU-Net's data loader delivers it: float32 data, int16 label map (bool region maps); with deep
        supervision a list of targets at every scale (DownsampleSegForDSTransform's sizes)."""
        lm = self.label_manager()
        data = torch.randn(batch_size, self.input_channels, *patch_size)

        def target(shape):
            if lm.has_regions:
                channels = len(lm.foreground_regions) + (lm.ignore_label is not None)
                return torch.rand(batch_size, channels, *shape) > 0.5
            return torch.randint(0, lm.num_segmentation_heads, (batch_size, 1, *shape), dtype=torch.int16)

        if self.deep_supervision_scales is None:
            return data, target(patch_size)
        return data, [target([round(p * f) for p, f in zip(patch_size, scale)])
                      for scale in self.deep_supervision_scales]

    def make_clicks(self, patch_size: Sequence[int], batch_size: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Clicks of a prompted trainer's training step with every slot used (every class present, no patch left
        without clicks), in ``sam_nnunet.prompts.clicks``'s format: point_coords (B, N, 3) voxel coordinates,
        point_labels (B, N) positive clicks cycling over the foreground classes / regions; None without clicks."""
        lm = self.label_manager()
        channels = list(range(lm.num_segmentation_heads)) if lm.has_regions else \
            list(range(1, lm.num_segmentation_heads))
        n = self.clicks_per_class * len(channels) + self.random_clicks
        if n == 0:
            return None
        labels = torch.tensor([2 * channels[i % len(channels)] for i in range(n)]).expand(batch_size, n).clone()
        coords = torch.rand(batch_size, n, 3) * (torch.tensor(patch_size, dtype=torch.float32) - 1)
        return coords, labels


@dataclass(frozen=True)
class TrainingMemoryEstimate:
    """Peak tensor memory of training one network at one patch and batch size.

    peak_bytes: peak over two training steps of all live tensors (parameters included).
    persistent_bytes: what stays between steps (parameters, buffers, gradients, optimiser state).
    parameter_bytes: parameters and buffers alone.
    """
    patch_size: Tuple[int, ...]
    batch_size: int
    peak_bytes: int
    persistent_bytes: int
    parameter_bytes: int

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 1e9


class TrainingMemoryEstimator:
    """Estimates the peak training memory of one network at any patch and batch size (results cached).

    The network is built once on fake tensors. Each estimate traces what every step of a running training holds:
    the optimiser state exists (created here by one optimiser step on zero gradients, as AdamW creates it in the
    first step), last step's gradients are alive when the batch arrives, then one full training step runs.

    Arguments:
      setup: the network, channels and labels.
    """

    def __init__(self, setup: TrainingSetup) -> None:
        from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException
        from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

        self.setup = setup
        self._fake = _fake_mode()
        try:
            with self._fake:
                self.network = setup.build_network()
        except (DataDependentOutputException, DynamicOutputShapeException, GuardOnDataDependentSymNode):
            # a constructor that reads tensor values (SAM 2's Hiera: ``.item()`` on its drop-path schedule) cannot
            # run on fake tensors: build it for real, then swap every parameter and buffer for a fake copy (real
            # memory of the parameters only while building). Tensors the network keeps as plain attributes (SAM 2's
            # rotary tables) stay real: the mode converts them where an operation uses them.
            self._fake = _fake_mode(allow_non_fake_inputs=True)
            self.network = _to_fake(setup.build_network(), self._fake)
        with self._fake:
            self.loss = setup.build_loss()
        self.network.train()
        self._cache: Dict[Tuple[Tuple[int, ...], int], TrainingMemoryEstimate] = {}

    def __call__(self, patch_size: Sequence[int], batch_size: int) -> TrainingMemoryEstimate:
        key = (tuple(int(p) for p in patch_size), int(batch_size))
        if key not in self._cache:
            self._cache[key] = self._trace(*key)
        return self._cache[key]

    def predicted_peak_bytes(self, patch_size: Sequence[int], batch_size: int) -> Optional[float]:
        """The peak predicted from the estimates traced so far, as a function of ``batch * voxels``: linear between
        the traced sizes, extended along the line through the two nearest beyond them (below the smallest, its
        persistent memory at zero voxels), or None before any trace. A guide for searches only; plans use traced
        estimates."""
        if not self._cache:
            return None
        peaks: Dict[float, float] = {}
        for (p, b), e in self._cache.items():
            x = b * float(np.prod(p))
            peaks[x] = max(peaks.get(x, 0.0), float(e.peak_bytes))
        smallest = min(self._cache.items(), key=lambda item: item[0][1] * float(np.prod(item[0][0])))[1]
        peaks.setdefault(0.0, float(smallest.persistent_bytes))
        xs, ys = zip(*sorted(peaks.items()))
        x = batch_size * float(np.prod(patch_size))
        if x <= xs[-1]:
            return float(np.interp(x, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return ys[-1] + slope * (x - xs[-1])

    def _trace(self, patch_size: Tuple[int, ...], batch_size: int) -> TrainingMemoryEstimate:
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        memory = LiveTensorMemory()
        try:
            with self._fake, memory:
                memory.track(self.network.parameters())
                memory.track(self.network.buffers())
                parameter_bytes = memory.current
                optimizer = self.setup.build_optimizer(self.network)
                for p in trainable:
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                data, target = self.setup.make_batch(patch_size, batch_size)
                clicks = self.setup.make_clicks(patch_size, batch_size)
                training_step(self.network, optimizer, self.loss, data, target, clicks)
                del data, target, clicks
                persistent = memory.current
                del optimizer
        finally:
            for p in trainable:
                p.grad = None
        return TrainingMemoryEstimate(patch_size, batch_size, memory.peak, persistent, parameter_bytes)


def _fake_mode(allow_non_fake_inputs: bool = False):
    """A FakeTensorMode with static shapes that also runs operations whose output size depends on the data (boolean
    masks: SAM's prompt encoder zeroes its padding points with ``embedding[labels == -1] = 0``): their outputs get
    an unbacked symbolic size, counted at its upper bound (``LiveTensorMemory``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return FakeTensorMode(allow_non_fake_inputs=allow_non_fake_inputs, static_shapes=True,
                          shape_env=ShapeEnv(allow_dynamic_output_shape_ops=True))


def _to_fake(module: nn.Module, fake_mode) -> nn.Module:
    """Replace the parameters and buffers of a real module by fake tensors of ``fake_mode`` (same shapes, dtypes,
    devices, ``requires_grad``); the real ones are freed with the caller's references."""
    done: Dict[int, torch.Tensor] = {}  # shared (tied) tensors stay shared
    with torch.no_grad():
        for m in module.modules():
            for name, p in m._parameters.items():
                if p is not None:
                    if id(p) not in done:
                        done[id(p)] = nn.Parameter(fake_mode.from_tensor(p), requires_grad=p.requires_grad)
                    m._parameters[name] = done[id(p)]
            for name, b in m._buffers.items():
                if b is not None:
                    if id(b) not in done:
                        done[id(b)] = fake_mode.from_tensor(b)
                    m._buffers[name] = done[id(b)]
    return module
