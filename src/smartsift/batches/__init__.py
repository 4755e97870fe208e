"""The data path: slicing and joining nested batches, padding, and indexed datasets.

Example:
    >>> import torch
    >>> from smartsift.batches.structure import select
    >>> select({"x": torch.arange(4)}, torch.tensor([1, 3]))["x"].tolist()
    [1, 3]
"""

__all__: list[str] = []
