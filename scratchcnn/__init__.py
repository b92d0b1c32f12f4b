"""scratchcnn: a CNN written from scratch in NumPy and Numba, serial vs parallel."""

__version__ = "0.1.0"
