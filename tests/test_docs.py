"""The docs stay true: code quotes, generated tables, links, runnable snippets, examples.

- every ``<!-- code: file::symbol -->`` / ``<!-- code: file:A-B -->`` quote in
  docs/*.md and README.md matches the current source (docs/sync_includes.py);
- every ``<!-- include: path -->`` block equals its file (rerun
  ``python docs/sync_includes.py`` after regenerating results);
- every relative link and image resolves to an existing path;
- the README's prose summary of the kernel table (a range of percentages, not a
  figure marker: bench/kernels.py writes Markdown, no JSON) matches the table, and
  its range of the products' percentages matches bench/products.py's JSON;
- every ```` ```python runnable ```` / ```` ```bash runnable ```` block runs with exit
  status 0 (bash from the repository root, this interpreter first on PATH;
  blocks that mention SCRATCHCNN_DATA are skipped without the real dataset);
- the correct kernels of docs/examples/racy_weight_grad.py give exact sums,
  and its racy kernel is right on one thread. Whether the racy kernel goes
  wrong on several threads depends on timing, so it is not asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import load_file_as

ROOT = Path(__file__).resolve().parent.parent
DATA = os.environ.get("SCRATCHCNN_DATA")
HAVE_DATA = bool(DATA) and (Path(DATA) / "cifar-10-batches-py" / "batches.meta").is_file()


docs = load_file_as("docs_sync_includes", ROOT / "docs" / "sync_includes.py")
DOCS = docs.doc_files(ROOT)


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _items(extract):
    return [pytest.param(doc, item, id=f"{_rel(doc)}:{i}")
            for doc in DOCS for i, item in enumerate(extract(doc.read_text()))]


def test_the_guide_exists_and_uses_every_mechanism():
    text = (ROOT / "docs" / "guide.md").read_text()
    assert docs.code_refs(text) and docs.includes(text) and docs.runnable_snippets(text)


@pytest.mark.parametrize(("doc", "ref"), _items(docs.code_refs))
def test_code_quote_matches_source(doc, ref):
    err = docs.check_code_ref(ref, ROOT)
    assert err is None, f"{_rel(doc)}: {err}"


@pytest.mark.parametrize(("doc", "inc"), _items(docs.includes))
def test_include_block_equals_its_file(doc, inc):
    path = ROOT / inc["path"]
    assert path.is_file(), f"{_rel(doc)} includes a missing file {inc['path']}"
    content = path.read_text()
    if content and not content.endswith("\n"):
        content += "\n"
    assert inc["body"] == content, (f"{_rel(doc)}: the include of {inc['path']} is stale: "
                                    f"run python docs/sync_includes.py")


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc):
    missing = [t for t in docs.relative_links(doc.read_text())
               if not (doc.parent / t).exists()]
    assert not missing, f"{_rel(doc)}: links to missing paths: {missing}"


def _github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_anchors_resolve(doc):
    """Links to #anchors (in this file or in another .md file) name an existing heading."""
    text = doc.read_text()
    wrong = []
    for target in docs.LINK_RE.findall(docs.FENCE_RE.sub("", text)):
        if "#" not in target or re.match(r"[a-z]+:", target):
            continue
        path, anchor = target.split("#", 1)
        md = doc if not path else doc.parent / path
        if md.suffix != ".md" or not md.is_file():
            continue
        headings = re.findall(r"^#+ (.+)$", docs.FENCE_RE.sub("", md.read_text()), re.M)
        if anchor not in {_github_slug(h) for h in headings}:
            wrong.append(target)
    assert not wrong, f"{_rel(doc)}: anchors without a heading: {wrong}"


def test_sync_check_is_clean():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "sync_includes.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("doc", "snippet"), _items(docs.runnable_snippets))
def test_runnable_snippet(doc, snippet, tmp_path):
    if "SCRATCHCNN_DATA" in snippet.code and not HAVE_DATA:
        pytest.skip("needs the real CIFAR-10: set SCRATCHCNN_DATA to the folder that contains "
                    "cifar-10-batches-py/")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ.get('PATH', '')}", TMPDIR=str(tmp_path),
               MPLBACKEND="Agg")
    code = textwrap.dedent(snippet.code)
    cmd = [sys.executable, "-c", code] if snippet.lang == "python" else ["bash", "-e", "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 0, (f"{_rel(doc)} line {snippet.line} ({snippet.lang}) exited "
                               f"{r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def test_docs_is_not_an_installed_package():
    assert not (ROOT / "docs" / "__init__.py").exists()
    assert not (ROOT / "docs" / "examples" / "__init__.py").exists()
    setup = (ROOT / "setup.cfg").read_text()
    assert "docs" not in setup.split("[options]", 1)[1].split("[", 1)[0]


@pytest.fixture(scope="module")
def racy():
    return load_file_as("docs_racy_weight_grad", ROOT / "docs" / "examples" / "racy_weight_grad.py")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_racy_example_correct_kernels_are_exact(racy, nthreads, numba_threads):
    numba_threads(nthreads)
    n = 4096
    r = racy.run(n=n, features=16, outputs=3, repeats=2, versions=("own_rows", "chunk_partials"))
    for name, res in r.items():
        assert res["wrong_runs"] == 0 and res["smallest_sum"] == n, name


def test_racy_example_correct_kernels_are_thread_count_independent(racy, numba_threads):
    numba_threads(1)
    one = racy.fingerprints()
    numba_threads(3)
    assert racy.fingerprints() == one


def test_racy_kernel_is_right_on_one_thread(racy, numba_threads):
    numba_threads(1)
    n = 4096
    res = racy.run(n=n, features=16, outputs=3, repeats=3, versions=("racy",))["racy"]
    assert res["wrong_runs"] == 0 and res["smallest_sum"] == n and res["lost_updates"] == 0


FIGURE_RE = re.compile(r"<!-- figure: (\S+?)#(\S+?) -->\s*(-?\d+(?:\.\d+)?)")


def _figures(text: str):
    return [{"path": p, "pointer": ptr, "quoted": q} for p, ptr, q in FIGURE_RE.findall(text)]


def test_figure_markers_are_used():
    assert _figures((ROOT / "docs" / "guide.md").read_text())


@pytest.mark.parametrize(("doc", "fig"), _items(_figures))
def test_quoted_figure_matches_its_source(doc, fig):
    """``<!-- figure: file.json#a/0/b -->1.86`` : the number after the marker is the JSON
    value at that path, rounded to the decimals quoted (``#a/b*100`` scales first)."""
    import json
    pointer, _, scale = fig["pointer"].partition("*")
    value = json.loads((ROOT / fig["path"]).read_text())
    for key in pointer.split("/"):
        value = value[int(key)] if isinstance(value, list) else value[key]
    value = float(value) * float(scale or 1)
    quoted = fig["quoted"]
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    assert f"{value:.{decimals}f}" == quoted, (
        f"{_rel(doc)} quotes {quoted} for {fig['path']}#{fig['pointer']}, which is {value}")


def _kernel_table() -> tuple[dict[str, list[str]], str]:
    """docs/results/kernels.md (bench/kernels.py's report): its rows by kernel name, and
    its header line."""
    text = (ROOT / "docs" / "results" / "kernels.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 8 and not cells[0].startswith(("kernel", "-")):
            rows[cells[0]] = cells[1:]
    return rows, text.splitlines()[0]


def test_kernel_benchmark_prose_matches_its_table():
    """The README's summary of the kernel table (the % of the peak reached by every conv2 and
    conv3 forward, input-gradient and weight-gradient kernel, serial and parallel; the
    one-core peak; how much faster im2col + BLAS is than the direct loops) is what the
    included table says: regenerating the table without the prose fails here."""
    rows, header = _kernel_table()
    names = [f"conv{i} {part}" for i in (2, 3)
             for part in ("forward (im2col+GEMM, +ReLU)", "backward input", "backward weight")]
    serial = [int(rows[n][2].rstrip("%")) for n in names]
    parallel = [int(rows[n][5].rstrip("%")) for n in names]
    peak = re.search(r"(\d+) GFLOP/s on 1 thread", header).group(1)
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"reaches (\d+)–(\d+)% of the one-core GEMM peak \((\d+) GFLOP/s in this run\) "
                  r"on the serial build, and (\d+)–(\d+)% of the two-core peak", readme)
    assert m, "README: the kernel benchmark's summary sentence is gone or reworded"
    assert [int(v) for v in m.groups()] == [min(serial), max(serial), int(peak),
                                             min(parallel), max(parallel)]
    speedups = [float(rows[f"conv{i} forward (im2col+GEMM, +ReLU)"][1])
                / float(rows[f"conv{i} forward (direct loops)"][1]) for i in (1, 2, 3)]
    direct = {rows[f"conv{i} forward (direct loops)"][1] for i in (1, 2, 3)}
    m = re.search(r"runs at ~(\d+\.\d) GFLOP/s: im2col \+ BLAS is (\d+)–(\d+)× faster", readme)
    assert m, "README: the direct loops' sentence is gone or reworded"
    assert direct == {m.group(1)}
    assert int(m.group(2)) <= min(speedups) and max(speedups) <= int(m.group(3))


def test_products_range_matches_its_report():
    """The README's "products run at A–B% of the peak part by part" is the range of the
    convolutions' products in bench/products.py's committed JSON (serial against the
    one-core peak, the threaded run against the all-core peak)."""
    import json
    report = json.loads((ROOT / "docs" / "results" / "products" / "products.json").read_text())
    peak = report["gemm_peak"]
    percents = []
    for conf in report["configurations"]:
        gflops = peak["one_thread_gflops"] if conf["threads"] == 1 else peak["all_threads_gflops"]
        # the FLOPs the products do (fewer than the network's where a fused pool skips
        # pixels), as bench/products.py's table counts them
        flops = conf.get("flops_done", conf["flops"])
        percents += [round(100 * flops[part] / (ms * 1e-3) / 1e9 / gflops)
                     for part, ms in conf["products_ms"].items() if part.startswith("conv")]
    readme = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"the convolutions' products run at (\d+)–(\d+)% of the peak part by part",
                  readme)
    assert m, "README: the products' range sentence is gone or reworded"
    assert (int(m.group(1)), int(m.group(2))) == (min(percents), max(percents))
