"""Corpora and token windows: tokenized once per model, the same ids fed to every backend.

Windows follow llama.cpp's perplexity tool: non-overlapping chunks of n_ctx tokens from the
start of the text, the second half scored. BOS goes first only when the model's tokenizer adds
one (its add_bos_token, which llama.cpp reads from the GGUF as tokenizer.ggml.add_bos_token):
then the text starts with BOS and each chunk's first token is replaced by it; otherwise each
chunk keeps its first token, as llama-perplexity does for such a model.
Calibration samples for GPTQ/AWQ come from the tokens after the last evaluation window, so
calibration never sees an evaluated token.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from quantbench.core import cache
from quantbench.core.errors import UserError, require

# Part of the reference log-probs' cache key: log-probs cached under an older window cut
# (BOS always first, before 2026-11) are never compared with windows cut this way.
WINDOWS_PROTOCOL = "llama-perplexity-v2: BOS first only when the tokenizer adds it"

CORPORA = {
    "pydoc": "the stdlib module pydoc_data.topics (~113k tokens of English docs), embedded",
    "wikitext2": "WikiText-2 raw test split via `datasets` (needs internet once)",
    "file:PATH": "a local UTF-8 text file",
}


def load_text(corpus: str) -> str:
    """Returns the corpus text for a corpus name (pydoc, wikitext2, file:PATH)."""
    if corpus == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    if corpus == "wikitext2":
        datasets = require("datasets", "all")
        try:
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        except Exception as e:  # offline or hub error: one line with the fix
            from quantbench.inputs.models import hub_error

            raise UserError(f"corpus 'wikitext2' could not be loaded ({hub_error(e)}); it needs "
                            "internet once, or use corpus 'pydoc' or 'file:PATH'") from None
        return "".join(ds["text"])
    if corpus.startswith("file:"):
        path = Path(corpus[5:]).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"corpus file '{path}' cannot be read ({e}); pass a UTF-8 text file") from None
    raise UserError(f"unknown corpus '{corpus}'; use one of: {', '.join(CORPORA)}")


def token_ids(model_dir: str, model_digest: str, corpus: str) -> np.ndarray:
    """Returns the corpus tokenized by the model's HF tokenizer (no special tokens), cached."""
    text = load_text(corpus)
    key = cache.content_key("tokens", model_digest, text)
    path = cache.entry("tokens", f"{key}.npy")
    if cache.valid_npy(path):
        return np.load(path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = np.asarray(tok(text, add_special_tokens=False).input_ids, dtype=np.int32)
    cache.save_npy(path, ids)
    return ids


_BOS: dict[tuple, int | None] = {}  # bos_first's answers in this process, by the files it read


def _stamp(path: str) -> tuple:
    """Returns what says a path's contents changed: (path, size, mtime) of it or of its files."""
    p = Path(path)
    files = sorted(p.glob("*token*")) if p.is_dir() else [p] if p.exists() else []
    return (path, *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def bos_first(model_dir: str, gguf_path: str = "") -> int | None:
    """Returns the BOS id when the model puts BOS first (add_bos_token), else None.

    A model born from a GGUF follows the file's tokenizer.ggml.add_bos_token, as llama.cpp does.
    Otherwise it is what the HF tokenizer does with special tokens on: the flag lives in
    different places per tokenizer class (tokenizer_config.json, a post-processor).

    Asked again in one process about unchanged files, it answers from memory: loading the
    tokenizer costs ~2.5 s, which a fleet's node paid per variant (a Ray worker serves many).
    """
    key = (_stamp(model_dir), _stamp(gguf_path) if gguf_path else ())
    if key not in _BOS:
        _BOS[key] = _bos_first(model_dir, gguf_path)
    return _BOS[key]


def _bos_first(model_dir: str, gguf_path: str) -> int | None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.bos_token_id is None:
        return None
    flag = _gguf_add_bos(gguf_path) if gguf_path else None
    if flag is None:
        ids = tok("a", add_special_tokens=True).input_ids
        flag = bool(ids) and ids[0] == tok.bos_token_id
    return tok.bos_token_id if flag else None


def _gguf_add_bos(path: str) -> bool | None:
    """Returns a GGUF's tokenizer.ggml.add_bos_token (None: no such key, or gguf not installed)."""
    try:
        import gguf
    except ImportError:
        return None
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return None if field is None else bool(field.contents())


def windows(ids: np.ndarray, n_ctx: int, n_windows: int, bos: int | None) -> list[list[int]]:
    """Returns n_windows non-overlapping windows of n_ctx ids, cut as llama-perplexity cuts them.

    With a `bos` (from bos_first) the stream is BOS + ids and each window's first token is BOS;
    with None the windows are the plain chunks of ids, each keeping its first token.
    """
    stream = ids if bos is None else np.concatenate([np.asarray([bos], dtype=ids.dtype), ids])
    if len(stream) < n_ctx * n_windows:
        raise UserError(f"corpus has {len(ids)} tokens but the suite asks {n_windows} windows x "
                        f"{n_ctx}; lower ppl_windows or n_ctx, or use a larger corpus")
    out = []
    for i in range(n_windows):
        w = [int(t) for t in stream[i * n_ctx:(i + 1) * n_ctx]]
        if bos is not None:
            w[0] = bos
        out.append(w)
    return out


def calibration(ids: np.ndarray, start: int, n_samples: int, n_tokens: int) -> list[list[int]]:
    """Returns n_samples consecutive chunks of n_tokens ids starting at token `start`."""
    need = start + n_samples * n_tokens
    if len(ids) < need:
        raise UserError(f"corpus has {len(ids)} tokens; evaluation ({start}) plus calibration "
                        f"({n_samples} x {n_tokens}) needs {need}: lower calib_samples/calib_tokens")
    return [[int(t) for t in ids[start + i * n_tokens:start + (i + 1) * n_tokens]]
            for i in range(n_samples)]
