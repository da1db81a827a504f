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

import torch
from torch import Tensor

from ._checks import fail


class RNNBaseCompat:
    """Mixed into :class:`rnnkit.RecurrentStack` (which provides ``_names``, ``state_shapes``,
    ``flat_weights`` and torch.nn's layout attributes)."""

    @property
    def _all_weights(self) -> list[list[str]]:
        """Parameter names per layer-direction (``torch.nn.RNNBase._all_weights``)."""
        return [
            # not the running statistics (buffers); a parameter replaced by a plain tensor (the AWD
            # WeightDrop trick: del m._parameters[name]; setattr(m, name, tensor)) stays listed, as in torch
            [a for a in names.values() if a not in self._buffers]  # type: ignore[attr-defined]
            for per in self._names  # type: ignore[attr-defined]
            for names in per
        ]

    @property
    def _flat_weights_names(self) -> list[str]:
        return [a for names in self._all_weights for a in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The parameters named by ``_flat_weights_names`` (read-only here: rnnkit looks its
        parameters up by name at every call, so there is no list to keep in sync)."""
        return [getattr(self, a) for a in self._flat_weights_names]

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

    def permute_hidden(self, hx, permutation: Tensor | None):
        """The state (a tensor, or a tuple for the LSTM) with its batch (dim 1) reordered."""
        if permutation is None:
            return hx
        if isinstance(hx, tuple):
            return tuple(s.index_select(1, permutation) for s in hx)
        return hx.index_select(1, permutation)
