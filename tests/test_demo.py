"""`newsq demo` as a new user runs it: nothing configured, no Redis at the configured URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TOKENIZER_DIR

DATA = TOKENIZER_DIR.parent / "thucnews/test.txt"


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NEWSQ_")},
        "NEWSQ_BROKER_URL": "redis://127.0.0.1:1/0",  # nothing listens: embedded Redis
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "newsq",
            "demo",
            "--count",
            "50",
            "--data",
            str(DATA),
            "--tokenizer",
            str(TOKENIZER_DIR),
            "--train-samples",
            "300",
        ],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started an embedded Redis" in out
    assert "training the small model on 300 titles" in out and "test accuracy" in out
    assert "The worker now serves small-run" in out  # switched to the trained model first
    assert "50 of 50 articles classified" in out
    assert "latest_predictions" in out
    assert (tmp_path / "newsq.db").exists()
    assert (tmp_path / "models/current/config.json").exists()
    assert list((tmp_path / "runs").glob("run-*/model/config.json"))


def test_the_report_of_a_demo_does_not_import_torch(tmp_path: Path) -> None:
    """A second run has its model: its report must not wait ~6 s for torch and transformers."""
    code = f"""
import json, sys
from db.engine import make_engine
from db.migrate import upgrade
from newsq.demo import report
from newsq.settings import Settings
url = "sqlite:///{tmp_path / "newsq.db"}"
upgrade(url)
report(make_engine(url), [("a", "a title", 3)], 0, 1.0, Settings(database_url=url))
print(json.dumps([m for m in ("torch", "transformers") if m in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Agreement with the file's labels: 0.0%" in out.stdout
    assert json.loads(out.stdout.splitlines()[-1]) == []
