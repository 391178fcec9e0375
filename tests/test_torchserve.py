"""TorchServe round trip: tools/serve/archive.py builds the .mar of the bundled shapes model, a real
`torchserve` serves it on 127.0.0.1 (ports chosen free, start-up bounded, stopped by the test also when it
fails), images are posted, and the JSON equals the local eager detections within float rounding (scores
1e-4, box corners 0.01 px: the network runs in ONNX Runtime on the server, in PyTorch here).

Needs Java 17 and the `serve` extra (torchserve, torch-model-archiver); without them it skips with the
reason, except under CI=true, where it fails (.ci/run installs the extra).

The model is served with batches of 2 (BATCH_SIZE, waiting up to MAX_BATCH_DELAY_MS for the second request), so
that a bad and a good request sent together share one batch: each gets its own answer."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools" / "serve"))
import demo  # noqa: E402

START_TIMEOUT_S = 120
SCORE_ATOL = 1e-4
BOX_ATOL_PX = 1e-2
BATCH_SIZE, MAX_BATCH_DELAY_MS = 2, 2000


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the TorchServe test (.ci/run installs the serve extra)")
    pytest.skip(reason)


def _torchserve() -> str:
    """The torchserve launcher beside this Python, or skip/fail naming what is missing."""
    if shutil.which("java") is None:
        _missing("java not found (TorchServe needs Java 17)")
    launcher = Path(sys.executable).with_name("torchserve")
    if not launcher.is_file() or not Path(sys.executable).with_name("torch-model-archiver").is_file():
        _missing('torchserve / torch-model-archiver not installed: pip install -e ".[serve]"')
    pytest.importorskip("onnxruntime", reason="the archive's handler runs ONNX Runtime (the dev extra)")
    return str(launcher)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        return getattr(err, "code", 0), str(err)


def _post(url: str, body: bytes, content_type: str = "application/octet-stream") -> dict:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _post_status(url: str, body: bytes, answers: dict, key: str) -> None:
    """POST and store (HTTP status, body text) under answers[key]; for threads."""
    try:
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=60) as response:
            answers[key] = (response.status, response.read().decode())
    except urllib.error.HTTPError as err:
        answers[key] = (err.code, err.read().decode())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A running TorchServe with the bundled model as "ssd"; yields its inference URL; always stopped."""
    launcher = _torchserve()
    import archive  # tools/serve/archive.py

    home = tmp_path_factory.mktemp("torchserve")
    archive.build_archive(None, home / "store", "ssd")
    ports = {name: _free_port() for name in ("inference", "management", "metrics", "grpc_i", "grpc_m")}
    (home / "config.properties").write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{ports['inference']}",
                f"management_address=http://127.0.0.1:{ports['management']}",
                f"metrics_address=http://127.0.0.1:{ports['metrics']}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                f"grpc_inference_port={ports['grpc_i']}",
                f"grpc_management_port={ports['grpc_m']}",
                "default_workers_per_model=1",
                "install_py_dep_per_model=false",
                "disable_system_metrics=true",
                # The model's batching (TorchServe reads it for the models loaded at start-up).
                "models="
                + json.dumps(
                    {
                        "ssd": {
                            "1.0": {
                                "defaultVersion": True,
                                "marName": "ssd.mar",
                                "minWorkers": 1,
                                "maxWorkers": 1,
                                "batchSize": BATCH_SIZE,
                                "maxBatchDelay": MAX_BATCH_DELAY_MS,
                            }
                        }
                    }
                ),
                "",
            ]
        )
    )
    # PYTHONPATH: the worker imports `ssd` from this checkout (not another install); TMPDIR: TorchServe's
    # pid file and Java's temporary files stay in this test's folder.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(home), "SSD_SERVE_THREADS": "1"}
    command = [
        launcher, "--start", "--foreground", "--ncs", "--disable-token-auth",
        "--model-store", str(home / "store"), "--models", "ssd=ssd.mar",
        "--ts-config", str(home / "config.properties"),
    ]  # fmt: skip
    log = open(home / "torchserve.log", "w")  # noqa: SIM115  (closed in the finally below)
    process = subprocess.Popen(
        command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{ports['inference']}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # ready when the model's worker answers (TorchServe loads models after the ping is up)
            status, description = _get(f"http://127.0.0.1:{ports['management']}/models/ssd")
            if status == 200 and '"status": "READY"' in description:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (home / "torchserve.log").read_text()[-3000:]
                pytest.fail(
                    f"TorchServe did not get ready in {START_TIMEOUT_S} s (exit {process.poll()}):\n{tail}"
                )
            time.sleep(1)
        yield url, home
    finally:
        # The launcher, Java and its Python workers share a session started above: stop that group only.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


def _png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) RGB -> PNG bytes (lossless)."""
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def _assert_detections_equal(served: dict, image: np.ndarray) -> None:
    """The served JSON equals the local eager model's detections of `image` (all scores) within rounding."""
    from ssd.modeling.model_zoo import load_detector

    loaded = load_detector(None, None, ["MODEL.DEVICE", "cpu"])
    local = demo.Detector(loaded, score_threshold=0.0)  # all detections, as the server returns them
    with torch.no_grad():
        expected = local.detect(local.prepare(image), *image.shape[:2])
    assert served["image_size"] == list(image.shape[:2])
    detections = served["detections"]
    assert len(detections) == len(expected["scores"]) > 0
    assert [d["class_id"] for d in detections] == expected["labels"].tolist()
    assert [d["class_name"] for d in detections] == [loaded.class_names[i] for i in expected["labels"]]
    np.testing.assert_allclose([d["score"] for d in detections], expected["scores"], atol=SCORE_ATOL)
    np.testing.assert_allclose([d["box_xyxy"] for d in detections], expected["boxes"], atol=BOX_ATOL_PX)


def test_served_json_equals_local_detections(server):
    url, _ = server
    images = [image for _, image, _ in demo.synthetic_images()][:3]
    images.append(cv2.resize(images[0], (420, 250)))  # another size and aspect: boxes in its own pixels
    for image in images:
        _assert_detections_equal(_post(f"{url}/predictions/ssd", _png(image)), image)
    # The same image as base64 text (as TorchServe's own image handlers accept it).
    text = base64.b64encode(_png(images[0]))
    _assert_detections_equal(_post(f"{url}/predictions/ssd", text, "text/plain"), images[0])


def test_a_body_that_is_not_an_image_is_an_error(server, tmp_path):
    from image_fakes import png_bomb

    url, _ = server
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{url}/predictions/ssd", b"not an image")
    assert err.value.code == 400
    # A PNG whose header says 60000 x 60000 (OpenCV alone would raise): refused from the header, 413.
    bomb = png_bomb(tmp_path / "bomb.png", 60000, 60000, rows=8).read_bytes()
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(f"{url}/predictions/ssd", bomb)
    assert err.value.code == 413
    assert json.loads(err.value.read()) == {
        "error": f"the request image ({len(bomb)} bytes): 60000 x 60000 = 3,600,000,000 pixels, above "
        "INPUT.MAX_IMAGE_PIXELS 150000000; not decoded. Downscale the image, or raise INPUT.MAX_IMAGE_PIXELS "
        "(0 = no limit)"
    }


def test_a_bad_request_does_not_fail_the_good_one_in_its_batch(server):
    url, home = server
    image = next(demo.synthetic_images())[1]
    answers: dict[str, tuple[int, str]] = {}
    threads = [
        threading.Thread(target=_post_status, args=(f"{url}/predictions/ssd", body, answers, key))
        for key, body in (("bad", b"not an image"), ("good", _png(image)))
    ]
    for thread in threads:  # both within MAX_BATCH_DELAY_MS: TorchServe puts them in one batch of 2
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    status, text = answers["bad"]
    assert status == 400, text
    assert json.loads(text) == {
        "error": "cannot decode image file (corrupt or not an image): the request image (12 bytes) "
        "(OpenCV reads JPEG, PNG, BMP, WebP, TIFF, ...)"
    }
    status, text = answers["good"]
    assert status == 200, text
    _assert_detections_equal(json.loads(text), image)
    # The handler logs each batch it answers: the two requests were one batch, one of them refused.
    model_log = (home / "logs" / "model_log.log").read_text()
    assert "SSDHandler: batch of 2 requests, 1 refused" in model_log
