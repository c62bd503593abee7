"""The process TensorFlow runs in: environment defaults and a quiet first import.

Both must act before TensorFlow is first imported, and neither imports it: the CLI
calls them at start-up, and `fmnist --help` stays instant.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile

from fmnist.hardware import is_x86

# Lines TensorFlow's C++ side prints to stderr on import whatever TF_CPP_MIN_LOG_LEVEL
# says (absl logs them before its logging is initialized): notices, not problems.
IMPORT_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def configure_tensorflow_environment(environ=None, x86: bool | None = None) -> None:
    """Environment defaults that must be set before TensorFlow is first imported.

    - ``TF_ENABLE_ONEDNN_OPTS=1`` on x86: TensorFlow turns its oneDNN kernels on by
      default only on CPUs with AVX512_VNNI/BF16 or AMX; on AVX2 CPUs it falls back to
      Eigen, whose convolutions are slower (the experiment note on AVX2 speed measures
      it on a cnn-fast epoch).
    - ``TF_CPP_MIN_LOG_LEVEL=2``: hide TensorFlow's C++ info and warning lines; errors
      still show.

    A user's own setting of either variable wins.
    """
    environ = os.environ if environ is None else environ
    if x86 is None:
        x86 = is_x86()
    if x86:
        environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def prepare_tensorflow(environ=None) -> None:
    """Defaults for a process about to import Keras or TensorFlow; a user's own settings win.

    ``KERAS_BACKEND=tensorflow`` (fmnist is built and measured on it; jax or torch may be
    chosen explicitly), :func:`configure_tensorflow_environment` and
    :func:`share_the_gpu`. The CLI calls this at start-up; library modules call it just
    before their first TensorFlow import, so that ``import fmnist`` itself changes nothing.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault("KERAS_BACKEND", "tensorflow")
    configure_tensorflow_environment(environ)
    share_the_gpu(environ)


def share_the_gpu(environ=None) -> None:
    """Let a process take GPU memory as it needs it, not most of the card up front.

    TensorFlow and JAX both claim nearly all of a GPU's memory at their first GPU op.
    `fmnist bench train` measures the GPU in its own process, then trains in child
    processes: on an H100 under JAX every child then failed its first convolution with
    cudaErrorMemoryAllocation. ``TF_FORCE_GPU_ALLOW_GROWTH=true`` and
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` make both allocate on demand; a user's own
    setting wins.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def is_import_notice(line: str) -> bool:
    return any(notice in line for notice in IMPORT_NOTICES)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the usual way, and runs its first import with the process's
    stderr (file descriptor 2, where C++ logs go) captured; afterwards every captured
    line but the known notices is written back, so real errors still show."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports find it in sys.modules
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr(is_import_notice):
            self.loader.exec_module(module)


class filtered_stderr:
    """Capture file descriptor 2 in a temporary file; on exit, write back the lines for
    which ``drop(line)`` is false. A file, not a pipe: a chatty import cannot block."""

    def __init__(self, drop):
        self.drop = drop

    def __enter__(self):
        sys.stderr.flush()
        self.capture = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.capture.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.capture.seek(0)
        text = self.capture.read().decode(errors="replace")
        self.capture.close()
        kept = [line for line in text.splitlines(keepends=True) if not self.drop(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


def quiet_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` of this process drop its import notices."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())
