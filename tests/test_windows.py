"""Perplexity windows cut as llama-perplexity cuts them: BOS first only when the model adds it."""
import numpy as np
import pytest

from quantbench.core.errors import UserError
from quantbench.inputs import corpus

IDS = np.arange(10, dtype=np.int32)


def test_plain_windows_keep_each_first_token():
    # SmolLM2 (add_bos_token = False): llama-perplexity scores the chunks as they are
    assert corpus.windows(IDS, 4, 2, None) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_bos_windows_start_the_text_with_bos_and_replace_each_first_token():
    # tokens = [BOS] + text; chunk i = tokens[i·n_ctx:(i+1)·n_ctx] with its first token set to BOS
    assert corpus.windows(IDS, 4, 2, 99) == [[99, 0, 1, 2], [99, 4, 5, 6]]
    # the last window ends before token n_ctx · n_windows: calibration (from there on) never overlaps
    assert max(t for w in corpus.windows(IDS, 4, 2, 99) for t in w[1:]) < 4 * 2


def test_too_few_tokens_is_a_user_error():
    with pytest.raises(UserError, match="asks 3 windows x 4"):
        corpus.windows(IDS, 4, 3, None)


def test_bos_first_follows_the_model(tiny, tmp_path):
    gguf = pytest.importorskip("gguf")
    assert corpus.bos_first(tiny.dir) is None  # SmolLM2's tokenizer adds no BOS
    for flag in (True, False):
        path = tmp_path / f"bos-{flag}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_add_bos_token(flag)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        # a GGUF-born model follows its file's tokenizer.ggml.add_bos_token, as llama.cpp does
        assert corpus.bos_first(tiny.dir, str(path)) == (1 if flag else None)


def test_bos_first_is_answered_once_per_process_per_files(tiny, monkeypatch, tmp_path):
    import shutil

    import transformers

    loads = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    model = tmp_path / "model"
    shutil.copytree(tiny.dir, model)
    assert corpus.bos_first(str(model)) is None and corpus.bos_first(str(model)) is None
    assert len(loads) == 1  # the second answer came from memory
    cfg = model / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"add_bos_token": true, ', 1))
    corpus.bos_first(str(model))  # the files changed: asked again
    assert len(loads) == 2

