"""``torch.nn.RNNBase``'s helper methods and weight lists, for code written against torch.nn.

Code around ``torch.nn.LSTM`` reaches beyond ``forward``: wrappers call
``check_forward_args`` or ``permute_hidden`` (as torch.nn's own ``forward`` does), inspect
``_flat_weights_names`` / ``_all_weights``, or read ``_flat_weights``. :class:`RNNBaseCompat`
gives rnnkit's layers the same methods with torch.nn's signatures, results and exception
types (``ValueError`` for a dtype mismatch, ``RuntimeError`` for shapes; rnnkit's
:class:`~rnnkit.RecurrentInputError` is both). The weight lists hold every parameter of a
layer-direction in registration order: torch.nn's names and order for a standard layer, then
the options' own tensors (layer-norm gains, peepholes, ...) after them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from ._checks import fail, kept
from .cells.base import Cell, ParamSpec


class RNNBaseCompat:
    """Mixed into :class:`rnnkit.RecurrentStack` (which provides ``_names``, ``state_shapes``,
    ``flat_weights`` and torch.nn's layout attributes)."""

    @property
    def _all_weights(self) -> list[list[str]]:
        """Parameter names per layer-direction (``torch.nn.RNNBase._all_weights``): the cells'
        specs that are no buffers (batch norm's running statistics), in registration order. Fixed
        at construction as torch's, so built once (a copy per read: the caller may change it). By
        spec, not by what ``_buffers`` holds now: a weight re-registered as a buffer (frozen) left
        the list, and the torch path's check then failed on a zip of unequal lengths; a parameter
        replaced by a plain tensor (AWD WeightDrop: del m._parameters[name]; setattr(m, name,
        tensor)) stays listed, as in torch."""

        def build() -> list[list[str]]:
            cells, names = self.cells, self._names  # type: ignore[attr-defined]
            return [
                [per[s.name] for s in cell.param_specs() if not s.buffer]
                for cell, d in zip(cells, names)
                for per in d
            ]

        return [list(n) for n in kept(self, "_all_weight_names", build)]  # type: ignore[arg-type]

    @property
    def _flat_weights_names(self) -> list[str]:
        return [a for names in self._all_weights for a in names]

    @property
    def _flat_weights(self) -> list[Tensor | None]:
        """The parameters named by ``_flat_weights_names`` (rnnkit looks its parameters up by name
        at every call, so there is no list to keep in sync); ``None`` for a name that holds none
        now, as torch.nn's (a weight-drop wrapper deletes a weight and sets it before each call)."""
        return [getattr(self, a, None) for a in self._flat_weights_names]

    @_flat_weights.setter
    def _flat_weights(self, weights: Sequence[Tensor]) -> None:
        """Code written for torch.nn refreshes torch's list after replacing a weight (AWD-style
        weight drop: ``m._flat_weights = [getattr(m, n) for n in m._flat_weights_names]``); without
        a setter that was an ``AttributeError``. The weights the names hold now are taken as they
        are (nothing to do); any other list, which torch would run with but rnnkit would ignore, is
        refused, naming the way that works."""
        names, weights = self._flat_weights_names, list(weights)
        if len(weights) != len(names):
            fail(f"_flat_weights must hold {len(names)} tensors ({', '.join(names)}), got {len(weights)}")
        for name, w in zip(names, weights):
            now = getattr(self, name, None)  # (a parametrized weight: computed anew, so compared by value)
            if w is now or (isinstance(w, Tensor) and isinstance(now, Tensor) and _same(w, now)):
                continue
            got = f"a tensor of shape {tuple(w.shape)}" if isinstance(w, Tensor) else type(w).__name__
            fail(
                f"_flat_weights: expected the tensor {name} holds, got {got} that differs from it; rnnkit "
                f"reads its weights by name at every call: set it with setattr(module, {name!r}, tensor)"
            )

    def _init_flat_weights(self) -> None:
        """torch.nn rebuilds its ``_flat_weights`` list from the names here, and code that replaced a
        weight by name calls it (it was an ``AttributeError``); rnnkit reads its weights by name at
        every call, so what remains is torch's last step, :meth:`flatten_parameters`."""
        self.flatten_parameters()  # type: ignore[attr-defined]

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """Dtype, rank (3-D dense, 2-D packed data) and feature size of ``input``."""
        ref = self._flat_weights[0]
        if input.dtype != ref.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({ref.dtype}). "
                f"Convert input: input.to({ref.dtype}), or convert model: model.to({input.dtype})"
            )
        expected = 2 if batch_sizes is not None else 3
        if input.dim() != expected:
            fail(f"input must have {expected} dimensions, got {input.dim()} (shape {tuple(input.shape)})")
        if input.size(-1) != self.input_size:  # type: ignore[attr-defined]
            fail(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}"  # type: ignore[attr-defined]
            )

    def _mini_batch(self, input: Tensor, batch_sizes: Tensor | None) -> int:
        if batch_sizes is not None:
            return int(batch_sizes[0])
        return input.size(0) if self.batch_first else input.size(1)  # type: ignore[attr-defined]

    def get_expected_hidden_size(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int, int]:
        """``(num_layers * num_directions, batch, proj_size or hidden_size)``."""
        return self.state_shapes(self._mini_batch(input, batch_sizes))[0]  # type: ignore[attr-defined]

    def check_hidden_size(
        self, hx: Tensor, expected_hidden_size: tuple[int, ...], msg: str = "Expected hidden size {}, got {}"
    ) -> None:
        if hx.size() != expected_hidden_size:
            fail(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden, batch_sizes: Tensor | None) -> None:
        """torch.nn's checks of ``forward``'s arguments: ``hidden`` is the state tensor, or the
        tuple ``(h, c)`` for the LSTM."""
        self.check_input(input, batch_sizes)
        shapes = self.state_shapes(self._mini_batch(input, batch_sizes))  # type: ignore[attr-defined]
        if len(shapes) == 1:
            return self.check_hidden_size(hidden, shapes[0])
        for i, shape in enumerate(shapes):
            self.check_hidden_size(hidden[i], shape, f"Expected hidden[{i}] size {{}}, got {{}}")

    def __prepare_scriptable__(self):
        """What ``torch.jit.script`` asks of a module (and of every submodule) before compiling it."""
        refuse_script(self)

    def permute_hidden(self, hx, permutation: Tensor | None):
        """The state (a tensor, or a tuple for the LSTM) with its batch (dim 1) reordered; a list
        ``[h, c]``, which the LSTM's ``forward`` takes too, gives a tuple, as torch.nn's."""
        if permutation is None:
            return hx
        if isinstance(hx, (tuple, list)):
            return tuple(s.index_select(1, permutation) for s in hx)
        return hx.index_select(1, permutation)


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same numbers (same shape, dtype and device)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def refuse_script(module: nn.Module) -> None:
    """``torch.jit.script`` of ``module`` (or of a model holding it), which it cannot compile: its
    forward dispatches in Python among torch's kernels, rnnkit's fused ones and a loop of any cell.
    TorchScript failed on the first construct it met, in words that named neither the layer nor
    a way out ("Only a single generator is currently supported", "Failed to get source for
    StepMasks.__init__"); this ``RuntimeError`` names both."""
    name = type(module).__name__
    twin = f", or torch.nn.{name} where TorchScript is a must" if hasattr(nn, name) else ""
    raise RuntimeError(
        f"torch.jit.script cannot compile rnnkit.{name} (its forward dispatches in Python); use "
        f"torch.compile, torch.export or torch.jit.trace, which work{twin}"
    )


def weight_storage(module: nn.Module, attr: str) -> list[Tensor]:
    """The tensors that hold ``module.<attr>``: the parameter or buffer itself, or — where a
    torch.nn utility computes the attribute from others — ``torch.nn.utils.parametrize``'s
    originals (and its parametrizations' own parameters), ``prune``'s ``<attr>_orig``, the old
    ``weight_norm``'s ``<attr>_g`` and ``<attr>_v``; none for a plain tensor set in a parameter's
    place (the AWD WeightDrop trick), which is no parameter."""
    if attr in module._parameters or attr in module._buffers:
        t = module._parameters.get(attr, module._buffers.get(attr))
        return [] if t is None else [t]
    if parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]  # type: ignore[index]
        return [*plist.parameters(), *plist.buffers(recurse=False)]
    held = [module._parameters.get(f"{attr}{end}") for end in ("_orig", "_g", "_v")]
    return [t for t in held if t is not None]


def set_held(module: nn.Module, attr: str, value: Tensor) -> None:
    """Make ``module.<attr>`` equal ``value`` where several tensors hold it (see
    :func:`weight_storage`): through the parametrization (its ``right_inverse``, as ``module.<attr>
    = value`` does), or, for the old ``weight_norm``, ``<attr>_g = ‖value‖`` and ``<attr>_v =
    value`` (as ``weight_norm`` itself starts them); anything else is refused."""
    with torch.no_grad():
        if parametrize.is_parametrized(module, attr):
            setattr(module, attr, value)
            return
        hook = _weight_norm_hook(module, attr)
        if hook is not None:
            getattr(module, attr + "_g").copy_(torch.norm_except_dim(value, 2, hook.dim))
            getattr(module, attr + "_v").copy_(value)
            setattr(module, attr, hook.compute_weight(module))  # as weight_norm leaves it
            return
    n = len(weight_storage(module, attr))
    fail(f"cannot set {attr}: expected a parametrization or weight_norm to hold it, got {n} tensors")


def _weight_norm_hook(module: nn.Module, attr: str) -> WeightNorm | None:
    """The old ``weight_norm``'s forward pre-hook that computes ``module.<attr>``, if any."""
    hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, WeightNorm) and h.name == attr]
    return hooks[0] if hooks else None


def computed(module: nn.Module, attr: str) -> Tensor:
    """``module.<attr>`` from the tensors that hold it now (the old ``weight_norm`` sets the
    attribute only before each forward: after a redraw of ``_g``/``_v`` it is stale)."""
    hook = _weight_norm_hook(module, attr)
    return getattr(module, attr) if hook is None else hook.compute_weight(module)


def reference(module: nn.Module, attr: str) -> Tensor:
    """A tensor of ``module.<attr>``'s dtype and device (the checks' reference), read without
    computing it: where a parametrization computes the attribute, the tensor that holds it (an
    orthogonal map, or a spectral norm's power step in training, per read would be one more per
    call than torch.nn's; ``parametrize.is_parametrized`` inlined: it costs ~1 µs per call)."""
    plist = module._modules.get("parametrizations")
    held = weight_storage(module, attr) if plist is not None and attr in plist._modules else None
    return held[0] if held else getattr(module, attr)


def reset_like_torch(module: nn.Module, layers: Sequence[tuple[Cell, dict[str, str]]]) -> None:
    """``reset_parameters`` of ``module``, whose ``layers`` are ``(cell, {base name: attribute})``
    per layer-direction: as ``torch.nn.RNNBase.reset_parameters`` (``for w in
    self.parameters(): init.uniform_(w, ...)``) every parameter is drawn in ``module.parameters()``
    order (registration order, then pruned ``_orig`` s, then parametrizations: the same RNG draws
    as torch.nn after the same change), with the init of the spec whose weight it holds (torch's
    uniform one for a parameter the user added, such as torchnlp WeightDrop's ``<name>_raw``).
    Writing into ``getattr(module, attr)`` instead would be lost when the attribute is computed
    (a parametrized or pruned weight). A cell that overrides :meth:`Cell.reset_parameters` (a cell
    of the generic protocol with its own initialization) keeps it: its tensors are left to it, drawn
    per layer-direction as before. What the cell changes after the draws (the forget-gate bias) in a
    tensor held by several (weight norm's ``_g``/``_v``) is set through what computes it."""
    own = {id(cell) for cell, _ in layers if type(cell).reset_parameters is not Cell.reset_parameters}
    owner: dict[int, tuple[Cell, ParamSpec]] = {}
    for cell, names in layers:
        for spec in cell.param_specs():
            for t in weight_storage(module, names[spec.name]):
                owner[id(t)] = (cell, spec)
    other = (layers[0][0], ParamSpec("", (), "uniform"))  # a parameter added by the user: torch's draw
    for t in module.parameters():
        cell, spec = owner.get(id(t), other)
        if id(cell) not in own:
            cell.init_tensor(spec, t)
    for t in module.buffers():
        if id(t) in owner and id(owner[id(t)][0]) not in own:
            cell, spec = owner[id(t)]
            cell.init_tensor(spec, t)
    for cell, names in layers:  # the forget-gate bias goes where the bias is held
        held, several = {}, {}
        for base, attr in names.items():
            ts = weight_storage(module, attr)
            if len(ts) > 1:  # computed (weight norm): the cell changes a copy, set through what computes it
                held[base] = computed(module, attr).detach().clone()
                several[base] = held[base].clone()
            elif ts or hasattr(module, attr):  # none: a plain tensor in a parameter's place
                held[base] = ts[0] if ts else getattr(module, attr)
            # else nothing holds it (a weight-drop wrapper sets it before each call from its own
            # parameter, drawn above as torch.nn draws it)
        if id(cell) in own:
            cell.reset_parameters(held)
        else:
            cell.after_reset(held)
        for base, before in several.items():
            if not torch.equal(held[base], before):  # unchanged: the draws stay torch.nn's
                set_held(module, names[base], held[base])
