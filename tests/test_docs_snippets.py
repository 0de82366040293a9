"""The Python examples in the README and the docs run as written (with fewer epochs).

Each ```python block is executed in a fresh namespace; ``max_epochs=N`` becomes
``max_epochs=2`` so the check takes seconds, and a block that fits a variable it does not define
(``x``) gets a small count matrix. Nothing else in the text is changed, so a renamed argument,
function or attribute in an example fails here.
"""

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "docs/getting-started.md", "docs/priors.md", "docs/user-guide.md"]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _shortened(code: str) -> str:
    code = re.sub(r"max_epochs=\d+", "max_epochs=2", code)
    # a fit without max_epochs would run the default schedule (up to 1000 epochs)
    return re.sub(r"\.fit\((\w+)\)", r".fit(\1, max_epochs=2)", code)


CASES = [
    pytest.param(doc, i, id=f"{doc}:{i}")
    for doc in DOCUMENTS
    for i, _ in enumerate(_blocks(ROOT / doc))
]


def test_the_documents_have_examples():
    assert len(CASES) >= 4, CASES


@pytest.mark.parametrize("doc, index", CASES)
def test_example_runs(doc, index):
    code = _blocks(ROOT / doc)[index]
    if "import scanpy" in code:
        pytest.importorskip("scanpy")
        pytest.importorskip("igraph")
    rng = np.random.default_rng(0)
    namespace = {"x": rng.poisson(2.0, size=(40, 15)).astype(np.float32)}
    if "adata" in code and "adata =" not in code:  # continues the README's example
        from pyrovae.datasets import pbmc3k

        namespace["adata"] = pbmc3k().to_anndata()[:300].copy()
    if re.search(r"\bwrite_results\(m,", code):
        import pyrovae

        namespace["m"] = pyrovae.NBVAE(latent_dim=3).fit(namespace["adata"], max_epochs=2)
    exec(compile(_shortened(code), f"{doc}[{index}]", "exec"), namespace)
    for name in ("model", "m"):  # the fitted estimator of the example, if it names one
        if name in namespace and hasattr(namespace[name], "trace_"):
            assert len(namespace[name].trace_) == 2
