"""The embedded default corpus: the running interpreter's standard library as a TFDS dataset.

Every machine with Python has this corpus, so the demo needs no download. The builder walks the
stdlib directory (`sysconfig.get_paths()['stdlib']`) for `.py` files and writes them as an
array_record TFDS dataset with features {'text', 'path'} (no TensorFlow needed to prepare or
read it).

What is included:
- every `*.py` file under the stdlib directory, sorted by relative path;
- excluded: `site-packages/` (third-party code, differs per venv) and the stdlib's own test suites
  (any directory named `test`, `tests` or `idle_test`, e.g. `test/`, `unittest/test/`,
  `lib2to3/tests/`). The tests are more than half of the bytes (CPython 3.11: 734 files / 14 MB
  kept of 1790 / 34 MB) and contain deliberately malformed and oddly encoded files; leaving them
  out keeps the corpus ordinary library code and the demo's epochs short.

Split: a file goes to 'heldout' when sha1(relative path) % 100 < HELDOUT_PERCENT, else 'train',
so the split depends only on the path (stable across machines and Python versions, and a file
is never in both splits). `split_files` is shared with the `files:GLOB` corpus of `data.py`.

The config name records the Python version (the stdlib differs between versions) and
`max_files` (a cap for tests), so differently built corpora never share a cache directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds
from etils import epath

NAME = "pass_jax_stdlib"
DEFAULT_DATA_DIR = "artifacts/tfds"
HELDOUT_PERCENT = 5
TRAIN_SPLIT = "train"
HELDOUT_SPLIT = "heldout"
_EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test", "__pycache__"})


def stdlib_dir() -> pathlib.Path:
    """The running interpreter's standard-library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _bucket(relative_path: str) -> int:
    """A stable hash of a path in [0, 100)."""
    return int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest(), 16) % 100


def split_of(relative_path: str) -> str:
    """'heldout' if the path's hash bucket is below HELDOUT_PERCENT, else 'train'."""
    return HELDOUT_SPLIT if _bucket(relative_path) < HELDOUT_PERCENT else TRAIN_SPLIT


def stdlib_files(root: pathlib.Path | None = None) -> list[str]:
    """Relative paths ('/'-separated) of the corpus's `.py` files under `root`, sorted."""
    root = stdlib_dir() if root is None else root
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if not _EXCLUDED_DIRS.intersection(path.relative_to(root).parts[:-1])
    )


def split_files(paths: list[str], max_files: int | None = None) -> dict[str, list[str]]:
    """Partitions paths into {'train': [...], 'heldout': [...]} by `split_of`, keeping order.

    A corpus of two or more files always holds one out: if no path hashes into 'heldout', the
    one with the smallest (bucket, path) does. With `max_files`, train keeps its first
    `max_files` paths and heldout its first max(1, max_files * HELDOUT_PERCENT // 100).
    """
    heldout = [p for p in paths if split_of(p) == HELDOUT_SPLIT]
    if not heldout and len(paths) >= 2:
        heldout = [min(paths, key=lambda p: (_bucket(p), p))]
    held = set(heldout)
    train = [p for p in paths if p not in held]
    if max_files is not None:
        train, heldout = train[:max_files], heldout[: max(1, max_files * HELDOUT_PERCENT // 100)]
    return {TRAIN_SPLIT: train, HELDOUT_SPLIT: heldout}


def config_name(max_files: int | None = None) -> str:
    """Config name: the Python version, plus the file cap if any (e.g. 'py3.11', 'py3.11-max30')."""
    name = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return name if max_files is None else f"{name}-max{max_files}"


@dataclasses.dataclass
class StdlibConfig(tfds.core.BuilderConfig):
    """Builder config: `max_files` caps the train split (None: every file)."""

    max_files: int | None = None


class StdlibCorpus(tfds.core.GeneratorBasedBuilder):
    """The running interpreter's standard-library `.py` files, split train / heldout by path
    hash."""

    name = NAME
    # Stated, not inferred: TFDS infers it through importlib.resources, which fails when
    # `pass_jax` is imported as a namespace package (an editable install, outside the repo).
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [StdlibConfig(name=config_name(), description="every stdlib file")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Python standard-library source files of the running interpreter.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "path": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        root = stdlib_dir()
        splits = split_files(stdlib_files(root), self.builder_config.max_files)
        return {split: self._generate_examples(root, paths) for split, paths in splits.items()}

    def _generate_examples(self, root: pathlib.Path, relative_paths: list[str]):
        for relative_path in relative_paths:
            text = (root / relative_path).read_text(encoding="utf-8", errors="replace")
            yield relative_path, {"text": text, "path": relative_path}


def builder(
    data_dir: str | pathlib.Path = DEFAULT_DATA_DIR, max_files: int | None = None
) -> StdlibCorpus:
    """The (possibly not yet prepared) stdlib builder writing to `data_dir` (array_record)."""
    config = (
        config_name()
        if max_files is None
        else StdlibConfig(
            name=config_name(max_files),
            max_files=max_files,
            description=f"at most {max_files} train stdlib files",
        )
    )
    return StdlibCorpus(data_dir=str(data_dir), config=config, file_format="array_record")


def prepare(
    data_dir: str | pathlib.Path = DEFAULT_DATA_DIR, max_files: int | None = None
) -> StdlibCorpus:
    """Prepares the corpus into `data_dir` unless already there; returns the builder."""
    corpus = builder(data_dir, max_files)
    skip_stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    corpus.download_and_prepare(download_config=skip_stats)
    return corpus
