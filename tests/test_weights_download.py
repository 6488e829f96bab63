"""``--weights imagenet``: downloaded into Keras' cache by ``keras.utils.get_file`` as Keras does,
hash-checked, reused; offline refuses. For every backbone of the registry.

Never the internet: a local HTTP server on 127.0.0.1 (port 0, a thread of this process) stands in for
the published URL (``MEDXCEPT_WEIGHTS_URL``) and records every request; each test sets the expected
hash (the backbone's registry entry, ``weights_hash``) to that of the file it serves. One test serves a real
'notop' weights file per backbone in Keras' legacy HDF5 layout (random values, built here) and checks that
``build_model`` loads exactly those values, so download -> cache -> load is the code path users run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from medxcept.errors import WeightsError
from medxcept.models import network as mx
from medxcept.models.backbones import BACKBONES

IMAGENET_FILE = BACKBONES["xception"].weights_file

REPO = Path(__file__).resolve().parent.parent


class _Server:
    """Serves ``files`` ({url path: bytes}) and records the request paths."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/keras-applications/xception/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve(self, body: bytes, backbone: str = "xception") -> None:
        self.files["/keras-applications/xception/" + BACKBONES[backbone].weights_file] = body

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = _Server()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(mx.URL_ENV, srv.base)
    monkeypatch.delenv(mx.OFFLINE_ENV, raising=False)
    yield srv
    srv.close()


def _expect(monkeypatch, body: bytes, backbone: str = "xception", algorithm: str = "md5") -> None:
    """Make the hash of ``body`` the one the backbone's registry entry expects."""
    digest = hashlib.new(algorithm, body).hexdigest()
    monkeypatch.setitem(BACKBONES, backbone, dataclasses.replace(BACKBONES[backbone], weights_hash=digest))


def _stand_in(monkeypatch, server, body: bytes, backbone: str = "xception") -> None:
    """Serve ``body`` and make its hash (the kind Keras' source gives: MD5 or SHA-256) the expected one."""
    server.serve(body, backbone)
    _expect(monkeypatch, body, backbone, "sha256" if len(BACKBONES[backbone].weights_hash) == 64 else "md5")


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "keras" / "models"


def test_published_url_and_cache_path_are_keras_own(monkeypatch, tmp_path):
    monkeypatch.delenv(mx.URL_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    xception = pytest.importorskip("keras.src.applications.xception")
    assert mx.imagenet_weights_url() == xception.WEIGHTS_PATH_NO_TOP
    assert mx.imagenet_weights_path() == tmp_path / "models" / IMAGENET_FILE


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_missing_file_is_downloaded_hash_checked_and_then_reused(server, monkeypatch, tmp_path, backbone):
    body = np.random.default_rng(0).bytes(300_000)
    _stand_in(monkeypatch, server, body, backbone)
    info = mx.resolve_weights("imagenet", backbone)
    name = BACKBONES[backbone].weights_file
    path = _cache(tmp_path) / name
    assert info.kind == "imagenet" and info.pretrained and Path(info.path) == path and info.backbone == backbone
    assert path.read_bytes() == body
    assert server.requests == ["/keras-applications/xception/" + name]
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == [name], "nothing else left behind"
    mx.resolve_weights("imagenet", backbone)
    assert len(server.requests) == 1, "a cached file with the right hash is reused without a request"
    # the file is only that backbone's: another backbone's weights are refused by build_model
    other = next(b for b in sorted(BACKBONES) if b != backbone)
    with pytest.raises(WeightsError, match=f"resolved for {backbone} do not fit the backbone {other}"):
        mx.build_model(image_px=71, n_classes=2, weights=info, backbone=other)


def test_valid_cached_file_makes_no_request_even_offline(server, monkeypatch, tmp_path):
    body = b"cached weights"
    _stand_in(monkeypatch, server, b"something else")
    _expect(monkeypatch, body)
    _cache(tmp_path).mkdir(parents=True)
    (_cache(tmp_path) / IMAGENET_FILE).write_bytes(body)
    assert mx.resolve_weights("imagenet").path == str(_cache(tmp_path) / IMAGENET_FILE)
    monkeypatch.setenv(mx.OFFLINE_ENV, "1")
    assert mx.resolve_weights("imagenet").pretrained
    assert server.requests == []


def test_corrupt_download_is_refused_and_nothing_is_left_in_the_cache(server, monkeypatch, tmp_path):
    good = np.random.default_rng(1).bytes(100_000)
    _expect(monkeypatch, good)
    server.serve(good[:-1] + b"X")  # one byte differs
    with pytest.raises(WeightsError) as exc:
        mx.resolve_weights("imagenet")
    msg = str(exc.value)
    assert "\n" not in msg
    assert server.base + IMAGENET_FILE in msg and str(_cache(tmp_path) / IMAGENET_FILE) in msg
    assert hashlib.md5(good[:-1] + b"X").hexdigest() in msg and "nothing was kept" in msg
    assert list(_cache(tmp_path).iterdir()) == [], "neither the corrupt file nor a .part may stay"
    assert len(server.requests) == 1


def test_cached_corrupt_file_is_downloaded_again(server, monkeypatch, tmp_path):
    body = np.random.default_rng(2).bytes(50_000)
    _stand_in(monkeypatch, server, body)
    _cache(tmp_path).mkdir(parents=True)
    (_cache(tmp_path) / IMAGENET_FILE).write_bytes(body[:1000])  # a truncated earlier copy
    mx.resolve_weights("imagenet")
    assert (_cache(tmp_path) / IMAGENET_FILE).read_bytes() == body and len(server.requests) == 1


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_offline_forbids_the_download_without_any_request(server, monkeypatch, tmp_path, backbone):
    _stand_in(monkeypatch, server, b"weights", backbone)
    monkeypatch.setenv(mx.OFFLINE_ENV, "1")
    name = BACKBONES[backbone].weights_file
    with pytest.raises(WeightsError) as exc:
        mx.resolve_weights("imagenet", backbone)
    msg = str(exc.value)
    assert mx.OFFLINE_ENV in msg and server.base + name in msg and BACKBONES[backbone].label in msg
    assert str(_cache(tmp_path) / name) in msg and "copy it to" in msg
    assert "\n" not in msg
    assert server.requests == []
    assert not (_cache(tmp_path) / name).exists()


def test_unreachable_or_missing_url_is_one_clean_error(server, monkeypatch, tmp_path):
    # 404 from the server
    with pytest.raises(WeightsError, match="could not download") as exc:
        mx.resolve_weights("imagenet")
    assert "Not Found" in str(exc.value) and str(_cache(tmp_path) / IMAGENET_FILE) in str(exc.value)
    # nothing listening
    port = server.httpd.server_address[1]
    server.close()
    monkeypatch.setenv(mx.URL_ENV, f"http://127.0.0.1:{port}/")
    with pytest.raises(WeightsError, match="could not download") as exc:
        mx.resolve_weights("imagenet")
    assert f"http://127.0.0.1:{port}/{IMAGENET_FILE}" in str(exc.value)
    assert list(_cache(tmp_path).iterdir()) == []


def test_cli_refuses_before_any_work_offline_and_on_a_corrupt_download(server, monkeypatch, tmp_path, capsys):
    """Exit 2, one line naming URL and path, no traceback, no run directory, nothing cached.

    ``pipelines.retina.main`` in this process (the server fixture's environment applies; a
    subprocess would first spend about 8 CPU-seconds importing TensorFlow); ``tests/test_cli.py``
    runs the ``python -m`` entry point itself."""
    from pipelines.retina import main

    server.serve(b"not the weights")  # MD5 differs from the published one
    url = server.base + IMAGENET_FILE
    for extra in (["--offline"], []):
        monkeypatch.setenv(mx.OFFLINE_ENV, "0")  # --offline sets it for the process; restored after the test
        capsys.readouterr()
        assert main(["--weights", "imagenet", "--out-dir", str(tmp_path / "r"), *extra]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("medxcept: error:")]
        assert len(lines) == 1 and url in lines[0], err
        assert str(_cache(tmp_path) / IMAGENET_FILE) in lines[0], err
        assert "Traceback" not in err
        assert not (tmp_path / "r").exists(), "no run directory for a run that cannot start"
        assert not _cache(tmp_path).exists() or list(_cache(tmp_path).iterdir()) == []
    assert len(server.requests) == 1, "--offline made no request; the plain run made one"


@pytest.mark.parametrize("backbone", [pytest.param(b, marks=[pytest.mark.xception] if b == "xception" else [])
                                      for b in sorted(BACKBONES)])
def test_downloaded_file_is_loaded_into_the_backbone(server, monkeypatch, tmp_path, backbone):
    """A real 'notop' file (Keras' legacy HDF5 layout, random values) goes through download and load."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(7)
    donor = BACKBONES[backbone].build((71, 71, 3))
    src = tmp_path / "served.h5"
    with h5py.File(src, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, donor)
    _stand_in(monkeypatch, server, src.read_bytes(), backbone)
    info = mx.resolve_weights("imagenet", backbone)
    keras.utils.set_random_seed(8)  # other random values: only the loaded file can make them equal
    model = mx.build_model(image_px=71, n_classes=2, weights=info, backbone=backbone)
    assert mx.backbone_of(model).name == backbone
    got = mx.backbone_base(model).get_weights()
    want = donor.get_weights()
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert len(server.requests) == 1


def test_kfold_fetches_the_weights_before_ingestion(server, monkeypatch, tmp_path):
    from medxcept.config import load_config
    from medxcept.workflows.cv import run_cv

    monkeypatch.setenv(mx.OFFLINE_ENV, "1")
    cfg = load_config(overrides={"model.weights": "imagenet", "out_dir": str(tmp_path / "cv")})
    with pytest.raises(WeightsError, match="forbids downloading"):
        run_cv(cfg, spec=None)  # the cohort would be ingested next: it is never touched
    assert not (tmp_path / "cv").exists() and server.requests == []
