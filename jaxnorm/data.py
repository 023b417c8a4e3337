"""Tasks: ``lm`` (char-level language modelling on local text), ``mlm`` (BERT-style masked
char-level modelling on the same text) and ``reverse``, ``sort``, ``copy``.

Batches are drawn on device from a PRNG key by a pure, jittable function: no input pipeline, no host
round-trip, and ``jax.vmap`` over keys gives each seed its own stream. The synthetic tasks are the
classic probes of whether gradients reach every position: reversal in particular needs information to
travel between distant positions. The text tasks need no download: by default their corpus is the
Python standard library's own source, which every installation carries.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import hashlib
import math
import os
import stat
import sysconfig
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm.config import CAUSAL_TASKS, SYNTHETIC_TASKS, TEXT_TASKS, TrainConfig

# Salts folded into the key per split: eval batches differ from train batches drawn with the same key,
# and neither equals the raw key's stream (a train loop may well use fold_in(key, step) itself).
SPLIT_SALTS = {"train": zlib.crc32(b"jaxnorm/train") >> 1, "eval": zlib.crc32(b"jaxnorm/eval") >> 1}
TRAIN_FRACTION_TENTHS = 9          # first 90% of the corpus trains, last 10% evaluates
EXCLUDED_DIRS = {"site-packages", "dist-packages"}
# mlm (Devlin et al. 2019, BERT): each position is chosen for prediction with probability MLM_CHOOSE
# (at least one per sequence); a chosen position's input becomes MASK with probability MLM_MASK, a
# uniformly random corpus token with probability MLM_RANDOM, and stays unchanged otherwise.
MLM_CHOOSE = 0.15
MLM_MASK = 0.8
MLM_RANDOM = 0.1


class DataError(ValueError):
    """The task's data cannot be built. The message is one line naming the field, the path and the problem."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A task: its vocabulary, sequence length and a batch sampler.

    For the text tasks (``lm``, ``mlm``) the encoded corpus splits are device arrays held here; the
    class is a pytree (those arrays are its leaves), so it can be passed into a jitted function instead
    of being baked in as a constant."""

    name: str
    vocab_size: int
    seq_len: int
    causal: bool
    num_symbols: int = 0                   # synthetic tasks: alphabet size; MASK = num_symbols
    corpus_fingerprint: str | None = None  # text tasks: sha256 of the corpus bytes used
    # The lowest mean loss a model that ignores its input can reach: the entropy of the targets' distribution
    # (nats). Synthetic targets are uniform over the alphabet (ln num_symbols); a text task's targets follow
    # the training split's character frequencies (mlm scores uniformly chosen positions, lm every next one).
    context_free_loss: float = 0.0
    train_tokens: jax.Array | None = None  # text tasks: int32 ids of the first 90% of the corpus
    eval_tokens: jax.Array | None = None   # text tasks: int32 ids of the last 10%

    def batch(self, key: jax.Array, batch_size: int, split: str = "train") -> dict[str, jax.Array]:
        """``inputs``, ``targets`` int32[B, T] and loss mask ``weights`` float32[B, T]. ``batch_size`` and
        ``split`` are static."""
        if split not in SPLIT_SALTS:
            raise ValueError(f"split: invalid value {split!r}; allowed: {', '.join(SPLIT_SALTS)}")
        key = jax.random.fold_in(key, SPLIT_SALTS[split])
        if self.name in TEXT_TASKS:
            tokens = self.train_tokens if split == "train" else self.eval_tokens
            if self.name == "mlm":
                return _mlm_batch(tokens, key, batch_size, self.seq_len, self.vocab_size - 1)
            return _lm_batch(tokens, key, batch_size, self.seq_len)
        return _synthetic_batch(self.name, key, batch_size, self.seq_len, self.num_symbols)


jax.tree_util.register_dataclass(
    Dataset, data_fields=["train_tokens", "eval_tokens"],
    meta_fields=["name", "vocab_size", "seq_len", "causal", "num_symbols", "corpus_fingerprint",
                 "context_free_loss"])


def make_dataset(cfg: TrainConfig) -> Dataset:
    """The dataset of ``cfg.task``; raises :class:`DataError` if a text task's corpus is unusable."""
    if cfg.task in SYNTHETIC_TASKS:
        return Dataset(name=cfg.task, vocab_size=cfg.num_symbols + 1, seq_len=cfg.seq_len, causal=False,
                       num_symbols=cfg.num_symbols, context_free_loss=math.log(cfg.num_symbols))
    if cfg.task in TEXT_TASKS:
        return _make_text(cfg)
    raise ValueError(f"TrainConfig.task: invalid value {cfg.task!r}")  # unreachable: config validates


# --- synthetic tasks ---------------------------------------------------------------------------------


def _synthetic_batch(task: str, key: jax.Array, batch_size: int, seq_len: int,
                     num_symbols: int) -> dict[str, jax.Array]:
    """inputs = [s, MASK×n], targets = [s, f(s)] with f = reverse / sort / identity; only the second
    half is scored (a bidirectional encoder reads all of s from every MASK position)."""
    n = seq_len // 2
    s_BxN = jax.random.randint(key, (batch_size, n), 0, num_symbols, dtype=jnp.int32)
    if task == "reverse":
        answer_BxN = s_BxN[:, ::-1]
    elif task == "sort":
        answer_BxN = jnp.sort(s_BxN, axis=-1)
    else:
        answer_BxN = s_BxN
    mask_BxN = jnp.full_like(s_BxN, num_symbols)
    half = jnp.ones((batch_size, n), jnp.float32)
    return {
        "inputs": jnp.concatenate([s_BxN, mask_BxN], axis=1),
        "targets": jnp.concatenate([s_BxN, answer_BxN], axis=1),
        "weights": jnp.concatenate([0.0 * half, half], axis=1),
    }


# --- lm, mlm -----------------------------------------------------------------------------------------


def _lm_batch(tokens: jax.Array, key: jax.Array, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    """Random windows c[o : o+T+1]; inputs are the first T tokens, targets the last T (next token)."""
    offsets_B = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - seq_len)
    window_BxT1 = tokens[offsets_B[:, None] + jnp.arange(seq_len + 1)]
    return {
        "inputs": window_BxT1[:, :-1],
        "targets": window_BxT1[:, 1:],
        "weights": jnp.ones((batch_size, seq_len), jnp.float32),
    }


def _mlm_batch(tokens: jax.Array, key: jax.Array, batch_size: int, seq_len: int,
               mask_id: int) -> dict[str, jax.Array]:
    """Random windows c[o : o+T] with BERT's corruption. Each position is chosen with probability
    MLM_CHOOSE (the position of the smallest draw is chosen too, so every sequence has one); a chosen
    input becomes ``mask_id`` (MLM_MASK), a random token in [0, mask_id) (MLM_RANDOM) or stays. Targets
    are the original window, scored only at the chosen positions."""
    k_offset, k_choose, k_kind, k_random = jax.random.split(key, 4)
    offsets_B = jax.random.randint(k_offset, (batch_size,), 0, tokens.shape[0] - seq_len)
    window_BxT = tokens[offsets_B[:, None] + jnp.arange(seq_len)]
    u_BxT = jax.random.uniform(k_choose, (batch_size, seq_len))
    first_B = jnp.argmin(u_BxT, axis=1)
    chosen_BxT = (u_BxT < MLM_CHOOSE) | (jnp.arange(seq_len) == first_B[:, None])
    kind_BxT = jax.random.uniform(k_kind, (batch_size, seq_len))
    random_BxT = jax.random.randint(k_random, (batch_size, seq_len), 0, mask_id, dtype=jnp.int32)
    corrupted_BxT = jnp.where(kind_BxT < MLM_MASK, mask_id,
                              jnp.where(kind_BxT < MLM_MASK + MLM_RANDOM, random_BxT, window_BxT))
    return {
        "inputs": jnp.where(chosen_BxT, corrupted_BxT, window_BxT).astype(jnp.int32),
        "targets": window_BxT,
        "weights": chosen_BxT.astype(jnp.float32),
    }


def min_corpus_bytes(seq_len: int) -> int:
    """Fewest bytes for which both splits hold one window of T+1: the eval split has ⌈N/10⌉ bytes."""
    return 10 * seq_len + 1


def _make_text(cfg: TrainConfig) -> Dataset:
    """lm or mlm on the corpus; mlm adds one token, MASK = the corpus vocabulary size."""
    data = _stdlib_corpus(cfg.text_bytes) if cfg.text_file is None else _read_text_file(cfg)
    codes = np.frombuffer(data, np.uint8)
    vocab = np.unique(codes)                   # sorted distinct byte values: ~100 for source code
    lookup = np.zeros(256, np.int32)
    lookup[vocab] = np.arange(len(vocab), dtype=np.int32)
    ids = lookup[codes]
    n_train = len(ids) * TRAIN_FRACTION_TENTHS // 10
    if len(ids) - n_train < cfg.seq_len + 1:   # only reachable with a stdlib-sized text_bytes budget
        raise DataError(f"TrainConfig.text_bytes: {cfg.text_bytes} bytes of corpus are too few for "
                        f"seq_len={cfg.seq_len}; need at least {min_corpus_bytes(cfg.seq_len)}")
    return Dataset(name=cfg.task, vocab_size=int(len(vocab)) + (cfg.task == "mlm"), seq_len=cfg.seq_len,
                   causal=cfg.task in CAUSAL_TASKS,
                   corpus_fingerprint=hashlib.sha256(data).hexdigest(),
                   context_free_loss=frequency_entropy(ids[:n_train]),
                   train_tokens=jnp.asarray(ids[:n_train]), eval_tokens=jnp.asarray(ids[n_train:]))


def frequency_entropy(ids: np.ndarray) -> float:
    """Entropy (nats) of the token frequencies in `ids`: the loss of predicting every target from them alone."""
    p = np.bincount(ids).astype(np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())


def _text_error(path: str, problem: str, seq_len: int) -> DataError:
    return DataError(f"TrainConfig.text_file: {path!r} {problem}; need a UTF-8 text file with at least "
                     f"{min_corpus_bytes(seq_len)} bytes")


def _read_text_file(cfg: TrainConfig) -> bytes:
    """The first ``cfg.text_bytes`` bytes of ``cfg.text_file``, checked to be usable UTF-8 text."""
    path = cfg.text_file
    fail = functools.partial(_text_error, path, seq_len=cfg.seq_len)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise fail("does not exist") from None
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise fail("is a directory")
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise fail("is not a regular file (a FIFO, socket or device)")
    try:
        with open(path, "rb") as f:
            data = f.read(cfg.text_bytes)
    except PermissionError:
        raise fail("cannot be read (permission denied)") from None
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    if not data:
        raise fail("is empty")
    if b"\0" in data:
        raise fail(f"is binary (NUL byte at offset {data.index(b'\0')})")
    try:
        # final=False: a multi-byte character cut by the text_bytes budget is not an error.
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError as e:
        raise fail(f"is not valid UTF-8 (bad byte at offset {e.start})") from None
    if len(data) < min_corpus_bytes(cfg.seq_len):
        raise fail(f"is too short ({len(data)} bytes: after the 90/10 split the eval part holds no "
                   f"window of seq_len+1={cfg.seq_len + 1})")
    return data


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files, sorted by path relative to its root (site/dist-packages
    excluded), so the corpus depends only on the Python installation, not on the working directory."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = [p for p in root.rglob("*.py")
             if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=4)
def _stdlib_corpus(text_bytes: int) -> bytes:
    """The first ``text_bytes`` bytes of the concatenated standard-library sources (read once per process)."""
    chunks, total = [], 0
    for path in stdlib_sources():
        if total >= text_bytes:
            break
        chunk = path.read_bytes()[: text_bytes - total]
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
