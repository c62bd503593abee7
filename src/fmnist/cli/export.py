"""`fmnist export`: ONNX export, checked on the run's validation images."""

from __future__ import annotations

from fmnist.cli.args import add_data_dir, positive_float


def add_parser(commands) -> None:
    export = commands.add_parser(
        "export", help="export a trained model to ONNX, verified against Keras",
        description="Write RUN_DIR/model.onnx (float32, dynamic batch, raw 0..255 pixels in, "
                    "probabilities out) and check it against the Keras model on the run's "
                    "validation images (rebuilt from its seed; the test set is left to "
                    "`evaluate`): probabilities within the tolerance and the same class for "
                    "every image, or nothing is written.")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="(default: onnx)")
    export.add_argument("--out", metavar="FILE", help="(default: RUN_DIR/model.onnx)")
    export.add_argument("--tolerance", type=positive_float, default=1e-4,
                        help="largest allowed probability difference (default: 1e-4)")
    export.add_argument("--quantize", choices=("int8",),
                        help="also write model.int8.onnx: onnxruntime static quantization "
                             "calibrated on the run's training images, kept if it picks the "
                             "float model's class for >= 99%% of the validation images")
    add_data_dir(export)


def run(args) -> int:
    from fmnist import rundir
    from fmnist.data import load_split

    rundir.require_run_dir(args.run_dir, needs=rundir.MODEL)  # before TensorFlow loads
    train_data = load_split("train", args.data_dir)  # never the test set: only evaluate reads it

    from fmnist.export import export_images, export_onnx

    validation, calibration = export_images(args.run_dir, train_data)
    report = export_onnx(args.run_dir, validation, out=args.out, tolerance=args.tolerance)
    print(f"wrote {report['onnx']} (opset {report['opset']}): on the run's {report['images']:,} "
          f"validation images max |p_keras - p_onnx| = {report['max_abs_difference']:.1e} "
          f"(limit {report['tolerance']:.0e}), {report['class_mismatches']} class differences")
    if report["mixed_precision_trained"]:
        print(f"the model was trained in mixed bfloat16; the float32 export agrees with it on "
              f"{100 * report['agreement_with_trained_model']:.2f}% of the classes")
    if args.quantize:
        from fmnist.export import quantize_int8

        quantized = quantize_int8(report["onnx"], calibration, validation)
        print(f"wrote {quantized['onnx']}: same class as the float model for "
              f"{100 * quantized['class_agreement']:.2f}% of {quantized['images']:,} validation "
              f"images, max |p_float - p_int8| = {quantized['max_abs_difference']:.3f}")
    return 0
