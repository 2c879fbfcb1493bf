"""The two corpora of the strategy comparison, from text every machine with Python has.

Corpus A (pre-training): the standard library's own modules, as code, with every docstring removed.
Corpus B (fine-tuning): those docstrings, English prose about the same code. The two share a
vocabulary of names but not a register, so fine-tuning on B has something to learn and forgetting
shows on A. Both are built from the running interpreter's ``sysconfig`` stdlib path; the files, in
sorted order, and the Python version go into the result so a run can be repeated.

Text is tokenized as UTF-8 bytes (vocabulary 256): no tokenizer files, nothing to download, the
same ids on every machine. Each file's code, and each docstring, goes wholly to train or to eval by
a hash of its path (and the docstring's index), so the eval text is never trained on.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

# Packages left out: the test suite (its own register), bundled third-party code and GUI demos.
_SKIPPED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "lib2to3", "turtledemo",
                  "__pycache__", "ensurepip"}
EVAL_SHARE = 0.05  # of the files, by path hash


@dataclass
class Corpus:
    train: torch.Tensor  # uint8 bytes, flat
    eval: torch.Tensor
    files: int


@dataclass
class Corpora:
    code: Corpus  # A
    prose: Corpus  # B
    source: dict  # where the text came from, for the result file


def _docstring_nodes(tree: ast.AST) -> list[ast.Expr]:
    nodes = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                nodes.append(first)
    return nodes


def split_code_and_docstrings(source: str) -> tuple[str, list[str]]:
    """(the source with docstring lines removed, the docstrings, cleaned as inspect.cleandoc does)."""
    import inspect

    tree = ast.parse(source)
    nodes = _docstring_nodes(tree)
    lines = source.splitlines(keepends=True)
    drop = set()
    for node in nodes:
        drop.update(range(node.lineno - 1, node.end_lineno))
    code = "".join(line for i, line in enumerate(lines) if i not in drop)
    return code, [inspect.cleandoc(node.value.value) for node in nodes]


def stdlib_files(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_path("stdlib"))
    return sorted(p for p in root.rglob("*.py") if not _SKIPPED_PARTS.intersection(p.relative_to(root).parts))


def _is_eval(key: str) -> bool:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < EVAL_SHARE


def build_corpora(root: Path | None = None, max_files: int | None = None) -> Corpora:
    root = Path(root or sysconfig.get_path("stdlib"))
    files = stdlib_files(root)[:max_files]
    parts = {(kind, split): [] for kind in ("code", "prose") for split in ("train", "eval")}
    used = 0
    for path in files:
        try:
            code, docs = split_code_and_docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings: not text we need
        used += 1
        key = str(path.relative_to(root))
        parts[("code", "eval" if _is_eval(key) else "train")].append(code)
        for i, doc in enumerate(docs):  # a file has few docstrings but many: split them one by one
            parts[("prose", "eval" if _is_eval(f"{key}#{i}") else "train")].append(doc + "\n\n")

    def tensor(texts: list[str]) -> torch.Tensor:
        return torch.frombuffer(bytearray("".join(texts).encode("utf-8")), dtype=torch.uint8).clone()

    corpora = {kind: Corpus(tensor(parts[(kind, "train")]), tensor(parts[(kind, "eval")]), used)
               for kind in ("code", "prose")}
    source = {"stdlib": str(root), "python": sys.version.split()[0], "files": used} | {f"{kind}_{split}_bytes": int(getattr(corpora[kind], split).numel())
                                             for kind in corpora for split in ("train", "eval")}
    return Corpora(corpora["code"], corpora["prose"], source)


def random_windows(data: torch.Tensor, batch: int, seq: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, seq] int64 windows at random offsets of a flat byte tensor."""
    if data.numel() <= seq:
        raise ValueError(f"corpus of {data.numel()} bytes is shorter than one window of {seq}")
    starts = torch.randint(data.numel() - seq, (batch,), generator=generator)
    return torch.stack([data[s:s + seq] for s in starts.tolist()]).long()


def fixed_windows(data: torch.Tensor, count: int, seq: int) -> torch.Tensor:
    """[count, seq] evenly spaced windows: the same eval text for every strategy."""
    span = data.numel() - seq
    if span <= 0:
        raise ValueError(f"corpus of {data.numel()} bytes is shorter than one window of {seq}")
    starts = [round(i * span / max(count - 1, 1)) for i in range(count)]
    return torch.stack([data[s:s + seq] for s in starts]).long()
