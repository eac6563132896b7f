"""Schemathesis over the server's own OpenAPI schema (valid and invalid bodies, wrong methods, odd strings): no
request may produce a 5xx. The server's max_tokens cap is small so generated requests that do run finish fast."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.test_server import ServerProcess

KEY = "fuzz-key"


def schemathesis_cli() -> str:
    pytest.importorskip("schemathesis")
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.is_file() else shutil.which("schemathesis")
    if found is None:
        pytest.skip("missing dependency: the schemathesis command is not installed")
    return found


@pytest.mark.slow
def test_fuzzing_the_openapi_schema_finds_no_server_error(tiny_dir, tmp_path):
    cli = schemathesis_cli()
    server = ServerProcess(tiny_dir, "--api-key", KEY, "--model-name", "tiny", "--context", "256",
                           "--max-tokens-limit", "8", "--max-body-bytes", "65536")
    try:
        result = subprocess.run(
            [cli, "run", server.url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", "40",
             "--workers", "2", "--seed", "1", "-H", f"Authorization: Bearer {KEY}",
             "--report", "junit", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:] + server.output()[-4000:]
        assert "generated" in result.stdout  # it really ran cases
        health = server.health()
        assert health["steps"] > 0, health  # and some of them reached the model, not only validation
        assert "Traceback" not in server.output()
    finally:
        server.stop()
