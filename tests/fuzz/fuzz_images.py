"""atheris (coverage-guided, libFuzzer) over fmnist's image path: bytes -> 28x28 input.

Every input must either convert to a uint8 (28, 28) array or raise ImageInputError with
a 4xx status; anything else is a crash, which libFuzzer saves as ``crash-<sha1>`` (see
``-artifact_prefix``). Pillow's Python plugins and fmnist are instrumented, so mutations
that reach new branches of a format's parser are kept.

    python tests/fuzz/fuzz_images.py CORPUS_DIR [MORE_DIRS...] -max_total_time=60

The seed corpus is written by ``python tests/fuzz/corpus.py CORPUS_DIR``; ``make fuzz``
does both. A crash found becomes a file in tests/fuzz/regressions/, which the suite
replays (tests/test_fuzz.py, tests/test_serve.py).
"""

import sys

import atheris

with atheris.instrument_imports(include=["PIL", "fmnist"]):
    from PIL import Image

    from fmnist.images import ImageInputError, load_for_model

    Image.init()  # Pillow imports its format plugins lazily: here, so they are instrumented

# Smaller than the server's 40 MP so each run stays fast; the 413 path is the same code.
FUZZ_MAX_PIXELS = 4_000_000


def test_one_input(data: bytes) -> None:
    try:
        processed = load_for_model(data, "fuzzed", max_pixels=FUZZ_MAX_PIXELS)
    except ImageInputError as error:
        if not 400 <= error.status < 500:
            raise
        return
    if processed.pixels.shape != (28, 28) or processed.pixels.dtype.name != "uint8":
        raise AssertionError(f"converted to {processed.pixels.dtype} {processed.pixels.shape}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
