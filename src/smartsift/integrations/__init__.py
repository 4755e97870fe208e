"""Integrations of smartsift with training frameworks, one submodule each, imported on demand.

Importing :mod:`smartsift` or this package imports no framework; import the submodule you use:

- :mod:`smartsift.integrations.transformers`: ``enable_sifting(trainer)`` makes a Hugging Face
  ``Trainer`` train on sifted batches (needs ``transformers`` and ``accelerate``).
- :mod:`smartsift.integrations.hf_losses`: per-sample losses of the common Hugging Face heads
  (needs only torch).
- :mod:`smartsift.integrations.lightning`: sifting for a PyTorch Lightning ``Trainer`` (needs
  ``lightning``).
- :mod:`smartsift.integrations.tensorboard`: ``tensorboard_logger(writer)``, a ``log_fn`` that
  writes the loader's stats to a ``SummaryWriter`` (needs ``tensorboard``).
- :mod:`smartsift.integrations.adapter`: what the framework integrations share (the loader
  arguments they pass through, the lazily built loader); needs no framework.

Example:
    >>> import torch
    >>> from smartsift.integrations.hf_losses import loss_for_model
    >>> class TinyForMaskedLM(torch.nn.Module): ...
    >>> loss_for_model(TinyForMaskedLM()).__name__
    'masked_lm_loss'
"""

__all__: list[str] = []
