"""Diagnostics: vanishing/exploding gradients, the recurrent spectrum, gate activity and
the memory horizon of any recurrent layer (rnnkit's, the time-parallel MinGRU/MinLSTM/
QRNN/LRU, or ``torch.nn``'s).

* :func:`gradient_flow` — ``‖∂L/∂h_t‖`` for every step and layer;
* :func:`jacobian_spectrum`, :func:`recurrent_eigenvalues`, :func:`power_iteration`;
* :func:`decay_spectrum` — the data-dependent decay ``a_t`` of the diagonal linear
  recurrences (MinGRU, MinLSTM, QRNN, LRU), their counterpart of the spectrum;
* :func:`activity` — hidden/cell state and gate values per unit and step;
* :func:`memory_horizon` — the longest lag a cell learns the copy-memory and +1 tasks at;
* :mod:`~rnnkit.diagnostics.plots` — headless PNGs of all of them;
* ``rnnkit diagnose`` / ``python -m rnnkit.diagnostics`` — :func:`main`, :func:`add_arguments`,
  :func:`run`.
"""

from .activity import LayerActivity, activity, standard_gates
from .checkpoint import checkpoint_layer, load_weights
from .gradient_flow import GradientFlow, gradient_flow, readout_loss
from .memory import Budget, HorizonResult, Variant, memory_horizon, parse_variant
from .parallel import DecaySpectrum, decay_spectrum
from .report import add_arguments, main, run
from .spectrum import (
    JacobianSpectrum,
    PowerIteration,
    jacobian_spectrum,
    power_iteration,
    recurrent_eigenvalues,
    recurrent_matrices,
    step_jacobians,
)
from .summary import read_summary
from .trace import Trace, find_recurrent, replay

__all__ = [
    "gradient_flow",
    "GradientFlow",
    "readout_loss",
    "jacobian_spectrum",
    "JacobianSpectrum",
    "step_jacobians",
    "recurrent_eigenvalues",
    "recurrent_matrices",
    "power_iteration",
    "PowerIteration",
    "decay_spectrum",
    "DecaySpectrum",
    "activity",
    "LayerActivity",
    "standard_gates",
    "memory_horizon",
    "HorizonResult",
    "Budget",
    "Variant",
    "parse_variant",
    "replay",
    "Trace",
    "find_recurrent",
    "load_weights",
    "checkpoint_layer",
    "add_arguments",
    "run",
    "main",
    "read_summary",
]
