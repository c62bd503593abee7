"""`fmnist predict`: classify image files."""

from __future__ import annotations

import sys

from fmnist.cli.args import add_model_source, int_at_least
from fmnist.errors import FmnistError


def add_parser(commands) -> None:
    predict = commands.add_parser(
        "predict", help="classify image files with a trained model",
        description="Classify image files (PNG, JPEG, ...: photos, scans, drawings). Each "
                    "image is converted like Fashion-MNIST's own: grayscale, inverted when "
                    "its background is light, cropped to the object, fitted into 28x28.")
    add_model_source(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--top-k", type=int_at_least(1), default=3,
                         help="classes to show per image (default: 3)")
    predict.add_argument("--json", action="store_true",
                         help="one JSON object per image and line, instead of a table")
    predict.set_defaults(subparser=predict)


def run(args) -> int:
    import json
    from pathlib import Path

    from fmnist.images import ImageInputError, load_for_model, quiet_pillow_warnings
    from fmnist.predict import Predictor, locate

    quiet_pillow_warnings()
    locate(args.model, args.engine)  # a bad path fails here, before TensorFlow loads
    missing = [name for name in args.images if not Path(name).is_file()]
    if missing:
        raise FmnistError(f"no such image file: {missing[0]}" +
                          (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    processed, failures = {}, 0
    for name in args.images:
        try:
            processed[name] = load_for_model(name, name)
        except ImageInputError as error:
            failures += 1
            print(json.dumps({"image": name, "error": str(error)}) if args.json else
                  f"fmnist predict: error: {error}", file=sys.stdout if args.json else sys.stderr)
    if processed:
        predictor = Predictor.load(args.model, args.engine)
        predictions = predictor.predict(list(processed.values()), k=args.top_k)
        for name, prediction in zip(processed, predictions):
            if args.json:
                print(json.dumps({"image": name, **prediction.to_dict()}))
                continue
            print(name)
            for rank, score in enumerate(prediction.top_k, 1):
                print(f"  {rank}. {score.label:<12} {100 * score.probability:6.2f}%")
    return 1 if failures else 0
