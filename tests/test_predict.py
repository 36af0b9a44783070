"""Predict: images of every common mode and size, CSV rows with or without labels, the CLI."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from mnist_jax import data, evaluate, images
from mnist_jax.errors import UserError

from conftest import REPO, make_not_file, small_config, train_results

MODES = ("L", "I;16", "RGB", "RGBA", "P", "1")


@pytest.fixture(scope="module")
def run(tmp_path_factory, idx_dir):
    """A small MLP trained once for this module, and its restored (model, params)."""
    workdir = tmp_path_factory.mktemp("run")
    c = small_config(idx_dir, "dnn", batch_size=50, num_steps=300)
    c.model.hidden_units = (64,)
    train_results(c, workdir)
    model, params, _ = evaluate.restore_model(workdir)
    return workdir, lambda x: evaluate.predict_probs(model, params, np.asarray(x))


@pytest.fixture(scope="module")
def digits(idx_dir):
    train_split, _ = data.load_idx(idx_dir)
    return train_split


def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "mnist_jax.predict", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def render(digit: np.ndarray, mode: str, size=(112, 112), offset=(0, 0), canvas=None, dark=False):
    """A 28x28 MNIST digit drawn as an image file would hold it: scaled to `size`, placed at
    `offset` on a canvas, in `mode` (alpha modes: ink in the alpha channel, transparent paper)."""
    ink = np.asarray(Image.fromarray(digit.reshape(28, 28)).resize(size, Image.Resampling.BILINEAR))
    w, h = canvas or size
    page = np.zeros((h, w), np.uint8)
    page[offset[1] : offset[1] + size[1], offset[0] : offset[0] + size[0]] = ink
    grey = 255 - page if dark else page  # dark: black ink on white paper.
    if mode == "L":
        return Image.fromarray(grey)
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)  # Full 16-bit range.
    if mode == "RGB":
        tint = np.array([1.0, 0.9, 0.8]) if dark else np.ones(3)
        return Image.fromarray((grey[..., None] * tint).astype(np.uint8))
    if mode == "RGBA":
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = 0 if dark else 255  # Ink colour; the paper is transparent.
        rgba[..., 3] = page
        return Image.fromarray(rgba)
    if mode == "P":
        return Image.fromarray(grey).convert("P")
    if mode == "1":
        return Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
    raise ValueError(mode)


def test_16_bit_greyscale_is_scaled_not_binarised(tmp_path, digits):
    digit = digits.images[0]
    for mode in ("L", "I;16"):
        render(digit, mode).save(tmp_path / f"{mode}.png")
    with Image.open(tmp_path / "I;16.png") as img:
        assert img.mode.startswith("I")  # Really a 16-bit file.
    eight, sixteen = (images.image_to_mnist(tmp_path / f"{m}.png") for m in ("L", "I;16"))
    assert np.abs(eight.astype(int) - sixteen).max() <= 1
    assert len(np.unique(sixteen)) > 20  # Grey levels kept: not {0, 255}.


@pytest.mark.parametrize("dark", [False, True], ids=["white-ink", "black-ink"])
def test_digit_in_the_alpha_channel_is_a_digit(tmp_path, digits, dark):
    digit = digits.images[1]
    render(digit, "RGBA", dark=dark).save(tmp_path / "alpha.png")
    render(digit, "L").save(tmp_path / "l.png")
    a, b = images.image_to_mnist(tmp_path / "alpha.png"), images.image_to_mnist(tmp_path / "l.png")
    assert np.abs(a.astype(int) - b).max() <= 2


@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    index=st.integers(0, 59),
    mode=st.sampled_from(MODES),
    side=st.integers(20, 400),
    aspect=st.floats(0.5, 2.0),
    margin=st.integers(0, 60),
    dark=st.booleans(),
)
def test_any_mode_and_size_decodes_to_the_same_prediction(
    run, digits, index, mode, side, aspect, margin, dark
):
    """The same digit drawn in any mode, size and polarity decodes to a valid 28x28 uint8
    digit, predicted as the 8-bit greyscale drawing of the same picture is."""
    digit = digits.images[index]
    size = (side, max(8, round(side * aspect)))
    canvas = (size[0] + 2 * margin, size[1] + 2 * margin)
    picture = render(digit, mode, size, (margin, margin), canvas, dark)
    decoded = images.to_mnist(images.grey_levels(picture))
    assert decoded.dtype == np.uint8 and decoded.shape == (784,) and decoded.max() > 200
    # The reference: that very picture as 8-bit greyscale (1-bit pictures stay binarised).
    reference_grey = render(digit, "L", size, (margin, margin), canvas, dark)
    if mode == "1":
        reference_grey = picture.convert("L")
    reference = images.to_mnist(images.grey_levels(reference_grey))
    assert np.abs(decoded.astype(int) - reference).max() <= 3
    predict = run[1]
    assert predict(decoded[None]).argmax() == predict(reference[None]).argmax()


def _png_header_only(path, w, h):
    """A PNG that declares w x h pixels (Pillow reads the size before any pixel data)."""

    def chunk(kind, body):
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_cli_predicts_the_good_files_and_names_each_bad_one(tmp_path, run, digits):
    workdir, predict = run
    good = []
    for k, mode in enumerate(MODES[:5]):
        path = tmp_path / f"digit{k}.{'jpg' if mode == 'RGB' else 'png'}"
        render(digits.images[k], mode, dark=k % 2 == 1).save(path)
        good.append(path)
    bad = {
        "broken.png": "not a readable image",
        "bomb.png": "too large",  # 15000x15000: Pillow's decompression-bomb limit.
        "wide.png": "image is 5000x10 pixels; the limit is 4096x4096",
        "missing.png": "file not found",
        "blank.png": "no digit found",
        "fifo.png": "is a FIFO, not a regular file",  # A real FIFO: it must not block.
        "folder.png": "is a directory, not a regular file",
    }
    make_not_file(tmp_path / "fifo.png", "fifo")
    make_not_file(tmp_path / "folder.png", "directory")
    (tmp_path / "broken.png").write_text("not an image")
    _png_header_only(tmp_path / "bomb.png", 15000, 15000)
    Image.new("L", (5000, 10)).save(tmp_path / "wide.png")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    args = [str(tmp_path / name) for name in bad] + [str(p) for p in good]
    proc = _cli(f"--workdir={workdir}", *args)
    assert proc.returncode == 1  # Some files failed; the others were still predicted.
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == len(bad)
    for line, (name, message) in zip(errors, bad.items(), strict=True):
        assert name in line and message in line, line
    printed = {ln.split(":")[0]: int(ln.split()[1]) for ln in proc.stdout.splitlines()}
    expected = predict(np.stack([images.image_to_mnist(p) for p in good])).argmax(1)
    assert [printed[str(p)] for p in good] == expected.tolist()


def test_csv_with_and_without_labels(tmp_path, run, digits):
    workdir, predict = run
    labelled, unlabelled = tmp_path / "labelled.csv", tmp_path / "unlabelled.csv"
    data.write_csv(labelled, data.Split(digits.images[:40], digits.labels[:40]))
    np.savetxt(unlabelled, digits.images[:40], fmt="%d", delimiter=",")
    expected = predict(digits.images[:40]).argmax(1)
    for path, has_labels in ((labelled, True), (unlabelled, False)):
        proc = _cli(f"--workdir={workdir}", f"--csv={path}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("row ")]
        assert [int(ln.split()[2]) for ln in rows] == expected.tolist()
        assert all(("(label " in ln) is has_labels for ln in rows)
        last = proc.stdout.splitlines()[-1]
        if has_labels:
            accuracy = 100 * np.mean(expected == digits.labels[:40])
            assert last == f"accuracy {accuracy:.2f}% on 40 labelled rows"
        else:
            assert not last.startswith("accuracy")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\ufeff" + ",".join(["0"] * 784) + "\n", None),  # A byte-order mark is accepted.
        ("\t".join(["0"] * 785) + "\n", "separated by tabs"),
        (";".join(["0"] * 785) + "\n", "separated by semicolons"),
        ("label," + ",".join(["p"] * 784) + "\n", "remove the header row"),
        (",".join(["0"] * 783) + "\n", "row 1 has 783 columns"),
        (",".join(["0"] * 784) + "\n" + ",".join(["0"] * 785) + "\n", "row 2 has 785 columns"),
        ("3," + ",".join(["0"] * 783) + ",256\n", "row 1 has pixel value 256"),
        ("12," + ",".join(["0"] * 784) + "\n", "row 1 has label 12"),
        ("", "empty CSV"),
    ],
)
def test_csv_problems_are_named(tmp_path, text, message):
    from mnist_jax import predict

    path = tmp_path / "rows.csv"
    path.write_text(text, encoding="utf-8")
    if message is None:
        pixels, labels = predict.read_rows(path)
        assert pixels.shape == (1, 784) and labels is None
    else:
        with pytest.raises(UserError, match=message):
            predict.read_rows(path)


def test_config_is_optional_and_checked_against_the_run(tmp_path, run, digits):
    workdir, _ = run
    path = tmp_path / "d.png"
    render(digits.images[0], "L").save(path)
    proc = _cli(f"--workdir={workdir}", "--config=configs/linear.py", str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "predict uses the run's own config" in errors[0]


def test_arrays_and_pil_images_for_the_python_api(digits):
    digit = digits.images[2]
    assert np.array_equal(images.as_mnist(digit.reshape(28, 28)), digit)
    from_pil = images.as_mnist(render(digit, "RGB", dark=True))
    from_floats = images.as_mnist(np.asarray(render(digit, "L")) / 255.0)
    assert np.abs(from_pil.astype(int) - from_floats).max() <= 3
    with pytest.raises(UserError, match="shape"):
        images.as_mnist(np.zeros((2, 3, 4, 5)))


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_csv_that_is_not_a_file_is_named_before_anything_is_restored(tmp_path, run, kind):
    path = make_not_file(tmp_path / "rows.csv", kind)
    proc = _cli(f"--workdir={run[0]}", f"--csv={path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: {path}: is a {'FIFO' if kind == 'fifo' else 'directory'}" in proc.stderr


def test_predictions_piped_into_head_end_quietly(tmp_path, run, digits):
    """stdout closed before predict writes (as `| head -1` does): exit 1, no traceback."""
    rows = tmp_path / "rows.csv"
    data.write_csv(rows, data.Split(digits.images[:200], digits.labels[:200]))
    read, write = os.pipe()
    os.close(read)  # The reader has gone: every write gets EPIPE.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "mnist_jax.predict", f"--workdir={run[0]}", f"--csv={rows}"]
    proc = subprocess.run(cmd, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True,
                          env=env, timeout=120)  # fmt: skip
    os.close(write)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "BrokenPipe" not in proc.stderr and "error:" not in proc.stderr
