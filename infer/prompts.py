"""Benchmark prompt sets built from held-out documents of a corpus.

* ``chat``: how people use an instruct model. Each prompt is the model's own chat template
  around an instruction built from a held-out Python function's signature and docstring:
  "Write a Python function `name(args)`: <docstring's first paragraph>", with the generation
  prompt (the assistant turn) opened.

(The ``code`` set, the paper's protocol, is ``infer.bench.make_prompts``.)
"""

from __future__ import annotations

import ast
import re

import numpy as np

_MIN_DOC_CHARS = 20
_MAX_DOC_CHARS = 400


def function_tasks(source: str) -> list[tuple[str, str]]:
    """``(signature, docstring summary)`` of every function in ``source`` (a Python file's
    text) whose docstring's first paragraph is 20-400 characters; private and dunder
    functions are skipped. Files that do not parse give none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        if not _MIN_DOC_CHARS <= len(summary) <= _MAX_DOC_CHARS:
            continue
        args = [
            a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")
        ]
        if node.args.vararg:
            args.append("*" + node.args.vararg.arg)
        args += [a.arg for a in node.args.kwonlyargs]
        if node.args.kwarg:
            args.append("**" + node.args.kwarg.arg)
        out.append((f"{node.name}({', '.join(args)})", summary))
    return out


def chat_instruction(signature: str, summary: str) -> str:
    """The user turn of a chat prompt."""
    return f"Write a Python function `{signature}`: {summary}"


def require_chat_template(tok) -> None:
    """Raises ValueError unless the tokenizer has a chat template."""
    if not getattr(tok, "chat_template", None):
        raise ValueError(
            "chat prompts need a tokenizer with a chat template (an instruct model); "
            "this one has none"
        )


def chat_prompt_ids(tok, user: str, system: str | None = None) -> list[int]:
    """The token ids of a chat prompt: the tokenizer's chat template around a ``system`` turn
    (if given; else whatever default the template writes) and the ``user`` turn, with the
    assistant turn opened. The rendered text is tokenized as-is: the template writes its own
    special tokens. Raises ValueError when the tokenizer has no chat template."""
    require_chat_template(tok)
    turns = [{"role": "system", "content": system}] if system is not None else []
    rendered = tok.apply_chat_template(
        [*turns, {"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return tok.encode(rendered, add_special_tokens=False)


def make_chat_prompts(
    tok, texts, num_prompts: int, seed: int, max_tokens: int = 256
) -> tuple[list[list[int]], dict]:
    """``num_prompts`` chat prompts (token ids) from functions of the documents ``texts``
    (a random-access sequence of Python sources), one function per document in a
    ``seed``-determined random order (round robin over documents when more are needed).

    The tokenizer's chat template renders each as a user turn with the assistant turn opened;
    the rendered text is tokenized as-is (the template writes its own special tokens). Raises
    ValueError when the tokenizer has no chat template or no function qualifies.
    """
    require_chat_template(tok)
    rng = np.random.default_rng(seed)
    per_doc = []
    for i in rng.permutation(len(texts)):
        tasks = function_tasks(texts[int(i)])
        if tasks:
            per_doc.append([tasks[j] for j in rng.permutation(len(tasks))])
        if len(per_doc) >= num_prompts:
            break
    prompts, instructions, seen = [], [], set()
    while len(prompts) < num_prompts and any(per_doc):
        for tasks in per_doc:
            if len(prompts) == num_prompts or not tasks:
                continue
            sig, summary = tasks.pop(0)
            text = chat_instruction(sig, summary)
            ids = chat_prompt_ids(tok, text)
            if len(ids) > max_tokens or text in seen:
                continue
            seen.add(text)
            prompts.append(ids)
            instructions.append(text)
    if not prompts:
        raise ValueError("no held-out function with a docstring to build a chat prompt from")
    return prompts, {
        "documents": len(per_doc),
        "heldout_documents_in_split": len(texts),
        "chat_instructions": instructions,
        "prompt_tokens_range": [min(map(len, prompts)), max(map(len, prompts))],
    }


def strip_chat_answer(text: str) -> str:
    """The code of a chat answer: the body of its first fenced block if it has one."""
    m = re.search(r"```(?:python)?\n(.*?)(?:```|$)", text, re.S)
    return m.group(1) if m else text
