"""Small slices of the embedded sample as corpus sources, so a test bake's corpus step takes seconds."""

import gzip
import itertools
import json

import pytest

from fournil.corpus import iter_sample


@pytest.fixture(scope="module")
def sample_sources(tmp_path_factory) -> str:
    """The `corpus.sources` block of a recipe (YAML, indented for a `sources:` key) over sample slices."""
    root = tmp_path_factory.mktemp("sources")
    lines = []
    for category, n in (("fr", 150), ("en", 150), ("code", 10), ("parallel", 600)):
        path = root / f"{category}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in itertools.islice(iter_sample(category), n))
        lines.append(f"    {category}: {{path: {path}, category: {category}, licence: see-sample}}")
    return "\n".join(lines)
