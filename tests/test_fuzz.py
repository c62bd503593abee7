"""The fuzzers, bounded for CI: atheris over the image path, schemathesis over the API.

``make fuzz FUZZ_SECONDS=N`` runs both for as long as asked. Here atheris gets
``FMNIST_FUZZ_SECONDS`` (default 15) and schemathesis ``FMNIST_FUZZ_EXAMPLES`` examples
per operation (default 60): together well under the two minutes the suite can spare.
Inputs that once crashed (tests/fuzz/regressions/) are replayed first, every run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from corpus import REGRESSIONS, regression_files, valid_files, write_seed_corpus
from fmnist.images import ImageInputError, load_for_model

HARNESS = Path(__file__).parent / "fuzz" / "fuzz_images.py"
FUZZ_SECONDS = int(os.environ.get("FMNIST_FUZZ_SECONDS", "15"))
FUZZ_EXAMPLES = int(os.environ.get("FMNIST_FUZZ_EXAMPLES", "60"))


@pytest.mark.parametrize("name", sorted(regression_files()) or ["(none yet)"])
def test_regressions_found_by_the_fuzzers_stay_fixed(name):
    if name == "(none yet)":
        assert not [p for p in REGRESSIONS.glob("*") if p.name != "README.md"], "files not read"
        return
    try:
        processed = load_for_model((REGRESSIONS / name).read_bytes(), name)
    except ImageInputError as error:
        assert 400 <= error.status < 500 and name in str(error)
    else:
        assert processed.pixels.shape == (28, 28)


@pytest.mark.parametrize("name", sorted(valid_files()))
def test_every_seed_file_converts(name):
    """The seed corpus is valid: each format and mode reaches the end of the path."""
    assert load_for_model(valid_files()[name], name).pixels.shape == (28, 28)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris has wheels for Linux x86_64 only")
def test_atheris_finds_no_crash_in_the_image_path(tmp_path):
    corpus = tmp_path / "corpus"
    write_seed_corpus(corpus)
    for name, payload in regression_files().items():
        (corpus / name).write_bytes(payload)
    result = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), f"-max_total_time={FUZZ_SECONDS}",
         "-timeout=20", "-rss_limit_mb=3072", f"-artifact_prefix={tmp_path}/", "-seed=1"],
        capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, cwd=tmp_path)
    crashes = sorted(path.name for path in tmp_path.glob("crash-*")) + sorted(
        path.name for path in tmp_path.glob("timeout-*")) + sorted(tmp_path.glob("oom-*"))
    assert result.returncode == 0 and not crashes, (
        f"atheris found {crashes}: copy them into tests/fuzz/regressions/ and fix the "
        f"cause\n{result.stderr[-3000:]}")
    assert "Done" in result.stderr  # it ran to its time limit, not into a wall


@pytest.mark.realdata
def test_schemathesis_gets_no_5xx_from_the_api(trained_run):
    """Requests derived from the app's OpenAPI schema, valid and invalid (schemathesis'
    positive and negative modes), against every operation: none may get a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import given

    from fmnist.predict import Predictor
    from fmnist.serve import create_app

    app = create_app(Predictor.load(trained_run), max_upload_bytes=1_000_000, max_images=8)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                           schemathesis.GenerationMode.NEGATIVE])
    failures, operations, calls = [], [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def no_server_error(case):
            response = case.call()
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append((operation.label, response.status_code, response.text[:300]))
            assert response.status_code < 500

        try:
            no_server_error()
        except AssertionError:
            pass  # collected above, with the operation's name
    assert {"POST /v1/predict", "POST /v1/predict/pixels", "GET /v1/model"} <= set(operations)
    assert not failures, failures
    assert len(calls) >= 2 * FUZZ_EXAMPLES and 200 in calls and any(400 <= s < 500 for s in calls)
