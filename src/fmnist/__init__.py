"""fmnist: Fashion-MNIST classification with verified data and honest validation.

Importing this package is cheap: TensorFlow and Keras are imported only by the
modules that train, evaluate or predict.
"""

import os

# Keras 3 reads KERAS_BACKEND when it is first imported; fmnist is built and
# measured on TensorFlow, but a user's explicit choice (jax, torch) wins.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from fmnist.runtime import configure_tensorflow_environment  # noqa: E402

# oneDNN kernels on every x86 CPU, quiet C++ logs: both must precede TensorFlow's import.
configure_tensorflow_environment()

__version__ = "0.1.0"

from fmnist.data import CLASS_NAMES  # noqa: E402  (after the backend default)

__all__ = ["CLASS_NAMES", "__version__"]
