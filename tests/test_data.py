"""jaxnorm.data: batch shapes, task targets vs numpy, determinism, splits, the lm corpus, mlm masking,
and one-line errors for unusable text files."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm.config import TrainConfig
from jaxnorm.data import SPLIT_SALTS, DataError, make_dataset, min_corpus_bytes

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


# --- mlm ---------------------------------------------------------------------------------------------

MLM_T = 32


def mlm(tmp_path=None, text=None, seq_len=MLM_T, **kw):
    path = None
    if text is not None:
        path = tmp_path / "corpus.txt"
        path.write_bytes(text)
        path = str(path)
    return make_dataset(TrainConfig(task="mlm", seq_len=seq_len, text_file=path, **kw))


def _mlm_by_hand(ds, key, batch_size, split="train"):
    """BERT's corruption recomputed in numpy from the four documented draws of the split's key."""
    tokens = np.asarray(ds.train_tokens if split == "train" else ds.eval_tokens)
    T, mask_id = ds.seq_len, ds.vocab_size - 1
    k_offset, k_choose, k_kind, k_random = jax.random.split(jax.random.fold_in(key, SPLIT_SALTS[split]), 4)
    offsets = np.asarray(jax.random.randint(k_offset, (batch_size,), 0, len(tokens) - T))
    u = np.asarray(jax.random.uniform(k_choose, (batch_size, T)))
    kind = np.asarray(jax.random.uniform(k_kind, (batch_size, T)))
    rand = np.asarray(jax.random.randint(k_random, (batch_size, T), 0, mask_id, dtype=jnp.int32))
    window = np.stack([tokens[o:o + T] for o in offsets])
    inputs, weights = window.copy(), np.zeros((batch_size, T), np.float32)
    for b in range(batch_size):
        chosen = [t for t in range(T) if u[b, t] < 0.15] or [int(np.argmin(u[b]))]
        for t in chosen:
            weights[b, t] = 1.0
            if kind[b, t] < 0.8:
                inputs[b, t] = mask_id
            elif kind[b, t] < 0.9:
                inputs[b, t] = rand[b, t]
    return inputs, window, weights


def test_mlm_batch_equals_hand_computation(tmp_path):
    text = ("the quick brown fox jumps over the lazy dog. " * 20).encode()
    ds = mlm(tmp_path, text, seq_len=8)          # short windows: some rows draw no u < 0.15
    assert (ds.name, ds.causal, ds.seq_len) == ("mlm", False, 8)
    assert ds.vocab_size == len(set(text)) + 1    # the corpus vocabulary plus MASK
    key = jax.random.key(7)
    for split in ("train", "eval"):
        b = jax.jit(ds.batch, static_argnums=(1, 2))(key, 64, split)
        assert (b["inputs"].dtype, b["targets"].dtype, b["weights"].dtype) == (jnp.int32, jnp.int32, jnp.float32)
        want_x, want_y, want_w = _mlm_by_hand(ds, key, 64, split)
        np.testing.assert_array_equal(b["inputs"], want_x)
        np.testing.assert_array_equal(b["targets"], want_y)
        np.testing.assert_array_equal(b["weights"], want_w)
    # the targets decode to windows of the right split of the text
    vocab = np.array(sorted(set(text)), np.uint8)
    for split, part in (("train", text[: len(text) * 9 // 10]), ("eval", text[len(text) * 9 // 10:])):
        y = np.asarray(ds.batch(key, 16, split)["targets"])
        assert all(bytes(vocab[row]) in part for row in y)


def test_mlm_masking_statistics():
    ds = mlm(text_bytes=200_000)
    mask_id = ds.vocab_size - 1
    assert int(max(ds.train_tokens.max(), ds.eval_tokens.max())) == mask_id - 1   # MASK = the next id
    b = jax.jit(ds.batch, static_argnums=(1, 2))(jax.random.key(0), 2048, "train")
    x, y, w = (np.asarray(b[k]) for k in ("inputs", "targets", "weights"))
    chosen = w == 1.0
    assert set(np.unique(w)) <= {0.0, 1.0} and chosen.sum(axis=1).min() >= 1   # at least one per sequence
    assert abs(chosen.mean() - 0.15) < 0.01, chosen.mean()
    np.testing.assert_array_equal(x[~chosen], y[~chosen])                       # unchosen inputs unchanged
    assert np.all(y != mask_id) and np.all(x[~chosen] != mask_id)
    masked = x[chosen] == mask_id
    same = x[chosen] == y[chosen]
    other = ~masked & ~same                                                      # a random, different token
    v = mask_id                                                                  # corpus tokens to draw from
    assert abs(masked.mean() - 0.8) < 0.02, masked.mean()
    assert abs(same.mean() - (0.1 + 0.1 / v)) < 0.015, same.mean()
    assert abs(other.mean() - 0.1 * (1 - 1 / v)) < 0.015, other.mean()
    assert x.min() >= 0 and x.max() <= mask_id


def test_mlm_deterministic_splits_differ_and_vmaps():
    ds = mlm(text_bytes=200_000)
    a, a2 = ds.batch(jax.random.key(1), B), ds.batch(jax.random.key(1), B)
    other, ev = ds.batch(jax.random.key(2), B), ds.batch(jax.random.key(1), B, "eval")
    for k in ("inputs", "targets", "weights"):
        np.testing.assert_array_equal(a[k], a2[k])
    assert not np.array_equal(a["targets"], other["targets"])
    assert not np.array_equal(a["targets"], ev["targets"])
    assert not np.array_equal(a["weights"], other["weights"])
    keys = jax.random.split(jax.random.key(3), 2)
    both = jax.vmap(lambda k: ds.batch(k, B))(keys)
    np.testing.assert_array_equal(both["inputs"][1], ds.batch(keys[1], B)["inputs"])
    # the same corpus and vocabulary as lm, plus MASK
    ref = lm(text_bytes=200_000)
    assert ds.vocab_size == ref.vocab_size + 1 and ds.corpus_fingerprint == ref.corpus_fingerprint
    np.testing.assert_array_equal(ds.train_tokens, ref.train_tokens)


def test_mlm_odd_seq_len_allowed_and_text_file_errors(tmp_path):
    assert mlm(text_bytes=200_000, seq_len=7).seq_len == 7
    with pytest.raises(DataError, match=r"^TrainConfig\.text_file: .* is too short"):
        mlm(tmp_path, b"short text")


# --- the context-free loss: what a model that ignores its input reaches ------------------------------------

def test_frequency_entropy_by_hand():
    from jaxnorm.data import frequency_entropy
    ids = np.array([0, 0, 1, 3])  # frequencies ½, ¼, ¼ (id 2 never occurs)
    assert frequency_entropy(ids) == pytest.approx(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))


@pytest.mark.parametrize("task", ["reverse", "sort", "copy"])
def test_synthetic_context_free_loss_is_chance(task):
    assert synthetic(task, num_symbols=16).context_free_loss == pytest.approx(np.log(16))


@pytest.mark.parametrize("task", ["lm", "mlm"])
def test_text_context_free_loss_is_what_the_frequencies_score(task, tmp_path):
    # Independently of jaxnorm: the train split's byte counts, then the mean cross-entropy of predicting every
    # scored target of many drawn batches from those frequencies alone (no input used) — the loss a model that
    # ignores its input converges to. It matches the recorded entropy to sampling error.
    text = ("Deep Transformers lose gradient towards the input layers; " * 40 + "zzzz qqq " * 30).encode()
    path = tmp_path / "corpus.txt"
    path.write_bytes(text)
    ds = make_dataset(TrainConfig(task=task, seq_len=16, text_file=str(path)))
    train = text[: len(text) * 9 // 10]
    counts = {b: train.count(bytes([b])) for b in set(train)}
    probs = {b: c / len(train) for b, c in counts.items()}
    assert ds.context_free_loss == pytest.approx(-sum(p * np.log(p) for p in probs.values()), rel=1e-9)
    vocab = np.array(sorted(set(text)), np.uint8)
    logp = np.array([np.log(probs.get(int(b), 1e-30)) for b in vocab])
    b = jax.jit(ds.batch, static_argnums=(1, 2))(jax.random.key(3), 4096, "train")
    y, w = np.asarray(b["targets"]), np.asarray(b["weights"])
    scored = -(logp[y] * w).sum() / w.sum()
    assert scored == pytest.approx(ds.context_free_loss, rel=0.02)
    assert ds.context_free_loss < np.log(len(vocab)) - 0.3   # well below a uniform guess
