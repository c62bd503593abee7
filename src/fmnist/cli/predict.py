"""`fmnist predict`: classify image files."""

from __future__ import annotations

import sys
from pathlib import Path

from fmnist.cli.args import add_model_source, int_at_least
from fmnist.errors import FmnistError


def add_parser(commands) -> None:
    predict = commands.add_parser(
        "predict", help="classify image files with a trained model (or the bundled one)",
        description="Classify image files (PNG, JPEG, ...: photos, scans, drawings). Each "
                    "image is converted like Fashion-MNIST's own: grayscale, inverted when "
                    "its background is light, cropped to the object, fitted into 28x28. "
                    "The first argument is the model when it is a run directory, a .keras "
                    "or a .onnx file; without one, the model bundled with fmnist answers. "
                    "Each answer says whether the image looks like a garment at all.")
    predict.add_argument("inputs", nargs="+", metavar="[MODEL] IMAGE",
                         help="a run directory, .keras or .onnx file (optional), then images")
    add_model_source(predict, positional=False)
    predict.add_argument("--top-k", type=int_at_least(1), default=3,
                         help="classes to show per image (default: 3)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per image and line, instead of a table")
    predict.add_argument("--explain", metavar="OUT.png",
                         help="also write where the model looked (occlusion saliency over the "
                              "28x28 input) to OUT.png; with several images, OUT-1.png, ...")
    predict.set_defaults(subparser=predict)


# What an image file's name ends in; a first argument that is missing and ends otherwise
# was meant as the model (a mistyped run directory), and is reported as one.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".pnm", ".pfm")


def split_model(inputs: list[str]) -> tuple[str | None, list[str]]:
    """(model, images): the first input is the model when it is a directory, .keras or .onnx
    file, or a missing path with no image suffix followed by more inputs."""
    first = Path(inputs[0])
    meant_as_model = (not first.exists() and len(inputs) > 1
                      and first.suffix.lower() not in IMAGE_SUFFIXES)
    if first.is_dir() or first.suffix.lower() in (".keras", ".onnx") or meant_as_model:
        if len(inputs) == 1:
            raise FmnistError(f"no images given after the model {inputs[0]}; pass image files")
        return inputs[0], inputs[1:]
    return None, inputs


def explain_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{index}{path.suffix or '.png'}") for index in range(1, count + 1)]


def run(args) -> int:
    import json

    from fmnist.images import ImageInputError, load_for_model, quiet_pillow_warnings
    from fmnist.predict import Predictor, default_model_line, locate

    quiet_pillow_warnings()
    model, images = split_model(args.inputs)
    files = locate(model, args.engine)  # a bad path fails here, before TensorFlow loads
    missing = [name for name in images if not Path(name).is_file()]
    if missing:
        raise FmnistError(f"no such image file: {missing[0]}" +
                          (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if files.default:
        print(default_model_line(files), file=sys.stderr)
    processed, failures = {}, 0
    for name in images:
        try:
            processed[name] = load_for_model(name, name)
        except ImageInputError as error:
            failures += 1
            print(json.dumps({"image": name, "error": str(error)}) if args.json else
                  f"fmnist predict: error: {error}", file=sys.stdout if args.json else sys.stderr)
    if processed:
        predictor = Predictor.load(model, args.engine)
        predictions = predictor.predict(list(processed.values()), k=args.top_k)
        if args.explain:
            from fmnist.rundir import write_bytes
            from fmnist.saliency import overlay_png

            for path, prediction in zip(explain_paths(args.explain, len(predictions)), predictions):
                predictor.explain(prediction)
                write_bytes(path, overlay_png(prediction.pixels, prediction.saliency))
        for name, prediction in zip(processed, predictions):
            if args.json:
                print(json.dumps({"image": name, **prediction.to_dict()}))
                continue
            print(name)
            if prediction.in_distribution is False:
                print(f"  does not look like a garment (out-of-distribution score "
                      f"{prediction.ood_score:.1f}, threshold {predictor.threshold:.1f}); "
                      "the classes below are a guess")
            for rank, score in enumerate(prediction.top_k, 1):
                print(f"  {rank}. {score.label:<12} {100 * score.probability:6.2f}%")
        if args.explain:
            print(f"saliency: {', '.join(map(str, explain_paths(args.explain, len(predictions))))}",
                  file=sys.stderr)
    return 1 if failures else 0
