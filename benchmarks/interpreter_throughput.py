"""Benchmark: noisy-evaluation throughput of the LCE interpreter vs Keras on the same BNN.

The BNN is `larq_l1inf.cli.build_demo_model` (4 binary convolutions -> `LceBconv2d`). Each
round draws one Algorithm 1 noise batch over n images (`evaluation.noisy_inputs`) and
feeds the same noisy images to Keras (`model.predict`, batch 128) and to the flatbuffer
(`deploy.TFLiteModel`, fixed batch 1 by default, `--tflite-batch` to convert with another),
interleaved. Reports images/s of each (noise generation timed apart) and the ratio, plus
how many predictions differ.

    .venv/bin/python benchmarks/interpreter_throughput.py            # ~1-2 min
"""

import argparse
import json
import os
import platform
import time

import numpy as np

from larq_l1inf import deploy, evaluation
from larq_l1inf._keras import tf
from larq_l1inf.cli import build_demo_model
from larq_l1inf.utils import write_json


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images per round")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="interpreter threads")
    p.add_argument("--keras-batch", type=int, default=128)
    p.add_argument("--tflite-batch", type=int, default=1, help="flatbuffer batch size")
    p.add_argument("--out", default="docs/measurements/interpreter_throughput.json")
    args = p.parse_args()

    tf.keras.utils.set_random_seed(0)
    model = build_demo_model((args.size, args.size, 3), width=args.width)
    flatbuffer = deploy.convert(
        model, on_failure="raise", batch_size=None if args.tflite_batch == 1 else args.tflite_batch
    )
    tflite = deploy.TFLiteModel(flatbuffer, num_threads=args.threads)
    x = np.random.default_rng(0).random((args.n, args.size, args.size, 3)).astype(np.float32)
    model.predict(x[:8], verbose=0)
    tflite.predict(x[:max(8, args.tflite_batch)], verbose=False)

    noise_t, keras_t, tflite_t, differ = [], [], [], []
    for r in range(args.rounds):
        t = time.perf_counter()
        xn = evaluation.noisy_inputs(x, "environmental", (1 / 255, 4 / 255), seed=0, draw=r)
        noise_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        pk = model.predict(xn, batch_size=args.keras_batch, verbose=0)
        keras_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        pt = tflite.predict(xn, verbose=False)
        tflite_t.append(time.perf_counter() - t)
        differ.append(int(np.sum(pk.argmax(1) != pt.argmax(1))))
        print(f"round {r + 1}: noise {noise_t[-1]:.2f}s keras {keras_t[-1]:.2f}s "
              f"tflite {tflite_t[-1]:.2f}s")
    n = args.n
    out = {
        "benchmark": "interpreter_throughput",
        "n_images": n,
        "input_shape": [args.size, args.size, 3],
        "width": args.width,
        "rounds": args.rounds,
        "keras_batch": args.keras_batch,
        "tflite_batch": args.tflite_batch,
        "interpreter_threads": args.threads,
        "noise_images_per_s": n / min(noise_t),
        "keras_images_per_s": n / min(keras_t),
        "tflite_images_per_s": n / min(tflite_t),
        "tflite_over_keras_throughput": min(keras_t) / min(tflite_t),
        "noisy_evaluation_images_per_s": {
            "keras": n / (min(noise_t) + min(keras_t)),
            "tflite": n / (min(noise_t) + min(tflite_t)),
        },
        "predictions_differing_per_round": differ,
        "seconds": {"noise": noise_t, "keras": keras_t, "tflite": tflite_t},
        "op_counts": deploy.op_counts(flatbuffer),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "load_average_at_end": os.getloadavg(),
        "note": "untrained weights (throughput does not depend on them); x86 build of LCE.",
    }
    print(json.dumps({k: out[k] for k in ("keras_images_per_s", "tflite_images_per_s",
                                           "tflite_over_keras_throughput")}, indent=2))
    write_json(out, args.out)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
