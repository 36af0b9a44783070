"""`--mode=eval`: the latest checkpoint of a workdir on the test set, without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mnist_jax import checkpoint, config as config_lib, data as data_lib, metrics, train


def evaluate_workdir(
    workdir: str | Path, config: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """Evaluates the workdir's latest checkpoint on the test split of `config.data` (default:
    the data the run trained on) and writes eval_results.json."""
    workdir = Path(workdir)
    model, params, saved = checkpoint.restore_model(workdir)
    data_config = saved.data
    results = workdir / "results.json"
    if config is not None and config_lib.to_dict(config.data) != config_lib.to_dict(saved.data):
        data_config = config.data  # The user asked for other data.
    elif results.exists():
        done = metrics.read_json(results)
        data_config = data_lib.data_config_used(
            saved.data, done["data_source"], done.get("data_location", "")
        )
    train_split, test, source, location = data_lib.load_train_test(data_config)
    engine = train.Engine(
        model,
        train.make_optimizer(saved.optimizer),
        batch_size=1,
        num_train=len(train_split),
    )
    m = engine.eval_split(params, engine.put_eval(test, saved.eval_batch_size))
    result = {
        "test": {"log_loss": m["log_loss"], "accuracy": m["accuracy"], "size": len(test)},
        "confusion_matrix": m["confusion_matrix"].tolist(),
        "data_source": source,
        "data_location": location,
    }
    logging.info(
        "eval of %s: test log_loss %.4f accuracy %.2f%% (%d digits, %s)",
        workdir,
        m["log_loss"],
        100 * m["accuracy"],
        len(test),
        source,
    )
    print(f"test accuracy {100 * m['accuracy']:.2f}% log_loss {m['log_loss']:.4f} ({source})")
    if jax.process_index() == 0:
        metrics.write_json(workdir / "eval_results.json", result)
    return result


def predict_probs(model, params, images: np.ndarray, batch: int = 10_000) -> np.ndarray:
    """Class probabilities (n, classes) for uint8 images (n, 784)."""
    apply = jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, train.scale_images(x))))
    return np.concatenate(
        [np.asarray(apply(params, images[i : i + batch])) for i in range(0, len(images), batch)]
    )
