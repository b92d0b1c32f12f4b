"""Classify images with a trained model: ``python -m scratchcnn.predict RUN_OR_NPZ IMAGE...``.

    python -m scratchcnn.predict runs/my-run cat.jpg ship.png        # top 3 classes each
    python -m scratchcnn.predict runs/my-run --from-test 8 --top-k 1  # the first 8 test images

``RUN_OR_NPZ``: a run folder (its ``best.npz``, else ``checkpoint.npz``) or a
weights file. The dataset the weights were trained on -- class names and input
shape -- is read from the checkpoint (or the run's ``config.json``); weights
that record none are CIFAR-10's.

Image files (PNG, JPEG, anything Pillow reads, any size) are converted to RGB
(grayscale for MNIST/Fashion-MNIST models), the shorter side is resized to the
model's input size and the centre cropped to a square (torchvision's
``Resize`` + ``CenterCrop``), then scaled to [0, 1] as in training. MNIST and
Fashion-MNIST images are light objects on a black background: photos of dark
digits on white paper need inverting first.

A file that cannot be used gives one line on stderr and the others still run;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from scratchcnn.train import OneLineParser, int_at_least

PROG = "python -m scratchcnn.predict"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (see ``--help``)."""
    p = OneLineParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Print the most likely classes, with probabilities, for image files "
                    "and/or test images, using the weights of a training run.")
    p.add_argument("weights", metavar="RUN_OR_NPZ",
                   help="run folder (uses best.npz, else checkpoint.npz) or .npz weights file")
    p.add_argument("images", metavar="IMAGE", nargs="*",
                   help="image files (PNG, JPEG, ...; any size: resized and centre-cropped)")
    p.add_argument("--from-test", type=int_at_least(1), metavar="N", default=None,
                   help="also classify the first N images of the dataset's test set")
    p.add_argument("--top-k", type=int_at_least(1), default=3, help="classes shown per image")
    p.add_argument("--data-dir", default=os.environ.get("SCRATCHCNN_DATA", "./data"),
                   help="where the dataset is, for --from-test; default $SCRATCHCNN_DATA if set")
    p.add_argument("--backend", choices=["serial", "parallel"], default="parallel",
                   help="kernel build")
    p.add_argument("--threads", type=int_at_least(1), default=os.cpu_count() or 1,
                   help="Numba threads for the parallel backend")
    return p


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit (never a traceback)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def format_top(probs, names: list[str], k: int) -> str:
    """``"cat 71.2%  dog 12.0%  frog 5.1%"``: the ``k`` most likely classes."""
    import numpy as np

    order = np.argsort(-probs, kind="stable")[:k]
    return "  ".join(f"{names[i]} {100 * probs[i]:.1f}%" for i in order)


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 when every input was classified, 1 when some could not be."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if not args.images and args.from_test is None:
        fail("nothing to classify; pass image files and/or --from-test N (see --help)", 2)
    import warnings

    from scratchcnn.threads import configure_threads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        configure_threads(args.threads)

    import numpy as np

    from scratchcnn.checkpoint import model_weights
    from scratchcnn.data.cifar10 import DataError
    from scratchcnn.data.datasets import load_dataset, recorded_meta, weights_file
    from scratchcnn.data.folder import ImageError, read_image
    from scratchcnn.model import reference_cnn

    try:
        path = weights_file(args.weights)
        meta = recorded_meta(path)
        names, shape = list(meta["label_names"]), tuple(int(v) for v in meta["input_shape"])
        model = reference_cnn(backend=args.backend, input_shape=shape, num_classes=len(names))
        model.load_state_dict(model_weights(path), source=str(path))
    except ValueError as e:
        fail(str(e))
    k = min(args.top_k, len(names))
    print(f"{path}: {meta['name']} model, {len(names)} classes, input {shape}")
    bad = 0
    images, labels = [], []
    for f in args.images:
        try:
            images.append(read_image(f, shape))
            labels.append(f)
        except ImageError as e:
            print(f"{e}", file=sys.stderr)
            bad += 1
    if images:
        probs = model.predict(np.stack(images))
        for f, p in zip(labels, probs):
            print(f"{f}: {format_top(p, names, k)}")
    if args.from_test is not None:
        size = shape[1] if meta["name"] == "folder" else None
        try:
            data = load_dataset(meta["name"], args.data_dir, download=False, image_size=size)
        except DataError as e:
            fail(f"--from-test: {e}")
        n = min(args.from_test, len(data.test_labels))
        probs = model.predict(data.test_images[:n])
        correct = 0
        for i in range(n):
            true = int(data.test_labels[i])
            ok = int(np.argmax(probs[i])) == true
            correct += ok
            print(f"test image {i} (true: {names[true]}): {format_top(probs[i], names, k)}"
                  f"{'' if ok else '   <- wrong'}")
        print(f"{correct} of {n} test images classified correctly")
    if bad:
        print(f"{bad} file(s) could not be classified (see above)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
