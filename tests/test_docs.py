"""Generated references stay in step with the code they describe."""

from __future__ import annotations

from pathlib import Path

from monitor.outputs.prometheus import metrics_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_reference_is_current():
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown(), (
        "docs/metrics.md is stale: run `python -m monitor.outputs.prometheus > docs/metrics.md`"
    )


def test_readme_links_the_references():
    readme = (ROOT / "README.md").read_text()
    for ref in ("docs/mqtt.md", "docs/metrics.md", "config.example.yaml"):
        assert ref in readme, ref
