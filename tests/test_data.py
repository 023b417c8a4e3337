"""jaxnorm.data: batch shapes, task targets vs numpy, determinism, splits, the lm corpus, and one-line
errors for unusable text files."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.config import TrainConfig
from jaxnorm.data import DataError, make_dataset, min_corpus_bytes

T, B = 12, 6


def synthetic(task, num_symbols=5):
    return make_dataset(TrainConfig(task=task, seq_len=T, num_symbols=num_symbols))


@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_synthetic_batch_shapes_and_targets(task):
    ds = synthetic(task)
    assert (ds.name, ds.vocab_size, ds.seq_len, ds.causal) == (task, 6, T, False)
    b = jax.jit(ds.batch, static_argnums=(1, 2))(jax.random.key(0), B, "train")
    assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (B, T)
    assert (b["inputs"].dtype, b["targets"].dtype, b["weights"].dtype) == (jnp.int32, jnp.int32, jnp.float32)
    x, y, w = (np.asarray(b[k]) for k in ("inputs", "targets", "weights"))
    n = T // 2
    s = x[:, :n]
    assert s.min() >= 0 and s.max() < 5 and np.all(x[:, n:] == 5)   # MASK = num_symbols
    want = {"reverse": s[:, ::-1], "sort": np.sort(s, axis=1), "copy": s}[task]
    np.testing.assert_array_equal(y[:, n:], want)
    np.testing.assert_array_equal(w, np.concatenate([np.zeros((B, n)), np.ones((B, n))], axis=1))
    assert len(np.unique(s)) > 1  # the test would be vacuous on a constant sequence


def test_batches_deterministic_in_key_and_splits_differ():
    ds = synthetic("reverse", num_symbols=16)
    a, a2 = ds.batch(jax.random.key(1), B), ds.batch(jax.random.key(1), B)
    other, ev = ds.batch(jax.random.key(2), B), ds.batch(jax.random.key(1), B, "eval")
    np.testing.assert_array_equal(a["inputs"], a2["inputs"])
    assert not np.array_equal(a["inputs"], other["inputs"])
    assert not np.array_equal(a["inputs"], ev["inputs"])
    with pytest.raises(ValueError, match="split"):
        ds.batch(jax.random.key(1), B, "test")


def test_batch_under_vmap_over_seed_keys():
    ds = synthetic("sort")
    keys = jax.random.split(jax.random.key(3), 2)
    both = jax.vmap(lambda k: ds.batch(k, B))(keys)
    np.testing.assert_array_equal(both["inputs"][1], ds.batch(keys[1], B)["inputs"])


def lm(tmp_path=None, text=None, seq_len=16, **kw):
    path = None
    if text is not None:
        path = tmp_path / "corpus.txt"
        path.write_bytes(text)
        path = str(path)
    return make_dataset(TrainConfig(task="lm", seq_len=seq_len, text_file=path, **kw))


def test_lm_from_text_file(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 20).encode()
    ds = lm(tmp_path, text)
    assert ds.causal and ds.vocab_size == len(set(text)) and ds.seq_len == 16
    b = ds.batch(jax.random.key(0), B)
    x, y = np.asarray(b["inputs"]), np.asarray(b["targets"])
    assert x.shape == (B, 16) and x.dtype == np.int32 and 0 <= x.min() and x.max() < ds.vocab_size
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])   # targets = inputs shifted by one
    np.testing.assert_array_equal(np.asarray(b["weights"]), np.ones((B, 16)))
    # Decoding through the sorted byte vocabulary gives back a window of the text (eval: from its tail).
    vocab = np.array(sorted(set(text)), np.uint8)
    window = bytes(vocab[np.concatenate([x[0], y[0, -1:]])])
    assert window in text[: len(text) * 9 // 10]
    e = ds.batch(jax.random.key(0), B, "eval")
    eval_window = bytes(vocab[np.concatenate([np.asarray(e["inputs"][0]), np.asarray(e["targets"][0, -1:])])])
    assert eval_window in text[len(text) * 9 // 10:]


def test_lm_stdlib_corpus_stable_and_cwd_independent(tmp_path, monkeypatch):
    ds = lm(text_bytes=200_000)
    again = lm(text_bytes=200_000)
    assert ds.corpus_fingerprint == again.corpus_fingerprint and len(ds.corpus_fingerprint) == 64
    np.testing.assert_array_equal(ds.train_tokens, again.train_tokens)
    assert 60 < ds.vocab_size < 256
    assert ds.train_tokens.shape[0] + ds.eval_tokens.shape[0] == 200_000
    # A fresh process in another directory (no cache) reads the same bytes.
    code = ("from jaxnorm.config import TrainConfig; from jaxnorm.data import make_dataset; "
            "print(make_dataset(TrainConfig(task='lm', text_bytes=200_000)).corpus_fingerprint)")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ds.corpus_fingerprint
    b = ds.batch(jax.random.key(5), B)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


@pytest.mark.parametrize("content,problem", [
    (b"", "is empty"),
    (b"hello\0world" * 40, "is binary (NUL byte at offset 5)"),
    (b"caf\xe9 latin-1 " * 40, "is not valid UTF-8 (bad byte at offset 3)"),
    (b"short text", "is too short (10 bytes"),
])
def test_bad_text_file_one_line_error(tmp_path, content, problem):
    with pytest.raises(DataError) as err:
        lm(tmp_path, content)
    msg = str(err.value)
    path = str(tmp_path / "corpus.txt")
    assert msg.startswith(f"TrainConfig.text_file: {path!r} {problem}")
    assert msg.endswith(f"need a UTF-8 text file with at least {min_corpus_bytes(16)} bytes")
    assert "\n" not in msg


def test_missing_and_directory_text_file(tmp_path):
    for path, problem in ((tmp_path / "nope.txt", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(DataError, match=r"^TrainConfig\.text_file: .* " + problem + "; need") as err:
            make_dataset(TrainConfig(task="lm", text_file=str(path)))
        assert repr(str(path)) in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_text_file(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("x" * 500)
    path.chmod(0)
    try:
        with pytest.raises(DataError, match=r"cannot be read \(permission denied\)"):
            make_dataset(TrainConfig(task="lm", text_file=str(path)))
    finally:
        path.chmod(0o600)


def test_multibyte_char_cut_by_budget_is_accepted(tmp_path):
    text = ("é" * 200).encode()          # 2 bytes each: a budget of 301 bytes cuts one in half
    ds = lm(tmp_path, text, text_bytes=301)
    assert ds.train_tokens.shape[0] + ds.eval_tokens.shape[0] == 301
