"""fmnist: Fashion-MNIST classification with verified data and honest validation.

Importing this package is cheap and changes nothing: no environment variable is set,
no TensorFlow or Keras is imported. The modules that train, evaluate or export call
:func:`fmnist.runtime.prepare_tensorflow` just before their first TensorFlow import.
"""

__version__ = "0.1.0"

from fmnist.data import CLASS_NAMES  # noqa: E402

__all__ = ["CLASS_NAMES", "__version__"]
