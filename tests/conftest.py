"""Shared fixtures: the shipped dataset, the bundled model, a tiny fine-tuned model, a real embedding server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("ACE_REQUIRE_EXTRAS") == "1":  # `make test` and so CI: a missing extra is a broken install, not a skip
    import importlib

    def _require(modname: str, *args, **kwargs):
        try:
            return importlib.import_module(modname)
        except ImportError as exc:
            pytest.fail(f"{modname} is not importable ({exc}); `make test` installs the [dev] extras, so the install "
                        "is broken (ACE_REQUIRE_EXTRAS=1 turns this skip into a failure)", pytrace=False)

    pytest.importorskip = _require


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ACE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ace-cache"))


@pytest.fixture(scope="session")
def demo():
    from ace_llamaindex.data.loading import SMALL_DATASET, load_dataset

    return load_dataset(SMALL_DATASET)


@pytest.fixture(scope="session")
def small(demo):
    """Every 4th query of the demo dataset (all categories) over its full corpus: fast on 2 CPU cores."""
    return demo.subset(sorted(demo.queries)[::4])


@pytest.fixture(scope="session")
def base_encoder(tmp_path_factory):
    from ace_llamaindex.embeddings.encoding import CachedEncoder

    return CachedEncoder(cache_dir=tmp_path_factory.mktemp("enc"), show_progress=False)


@pytest.fixture(scope="session")
def tuned_model_dir(tmp_path_factory, small, base_encoder):
    """A real, briefly fine-tuned model (one short epoch on 40 queries)."""
    from ace_llamaindex.mine.mining import HardNegativeMiner, MiningOptions
    from ace_llamaindex.train.training import TrainConfig, train

    examples = HardNegativeMiner("dense", base_encoder, options=MiningOptions(num_negatives=2), show_progress=False).mine(small)
    out = tmp_path_factory.mktemp("models") / "tuned"
    train(examples, out, TrainConfig(epochs=1, batch_size=8, learning_rate=1e-4, val_fraction=0.0))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def embedding_server():
    """A real OpenAI-compatible embedding server (infinity-emb) serving the bundled model on 127.0.0.1.

    Its venv comes from `make infinity-venv` (ACE_INFINITY_BIN); without it the tests skip, unless
    ACE_REQUIRE_INFINITY=1 (as `make test` and CI set), where they fail.
    """
    from ace_llamaindex.embeddings.models import resolve_model

    binary = os.environ.get("ACE_INFINITY_BIN") or shutil.which("infinity_emb")
    if not binary or not Path(binary).exists():
        if os.environ.get("ACE_REQUIRE_INFINITY") == "1":
            pytest.fail("ACE_REQUIRE_INFINITY=1 but no infinity_emb binary; run `make infinity-venv`")
        pytest.skip("infinity_emb not installed (make infinity-venv)")
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"infinity-{port}.log", "w")
    proc = subprocess.Popen(
        [binary, "v2", "--model-id", resolve_model(None), "--served-model-name", "minilm", "--host", "127.0.0.1",
         "--port", str(port), "--engine", "torch", "--device", "cpu", "--no-model-warmup"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _second in range(180):  # wait up to ~3 minutes for the model to load
            if proc.poll() is not None:
                pytest.fail(f"infinity_emb exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"infinity_emb did not come up in 180 s; see {log.name}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
