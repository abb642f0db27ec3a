"""Megatron indexed dataset files written and read by megatron_hesnr.data.mmap_indexed (numpy only):
byte for byte megatron-core's ``IndexedDatasetBuilder`` output, readable by megatron-core's
``IndexedDataset`` and reading its files, one clear line for a bad file, and the data commands
(prepare, inspect, score) starting without megatron-core, torch or transformers.

The megatron-core side runs with whatever version the environment has (0.16 on the Python 3.11
leg, 0.19 on the Python 3.12 one)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import IN_CI, REPO
from megatron_hesnr.data.mmap_indexed import IndexedFile, IndexedFileError, IndexedWriter

DTYPES = (np.uint16, np.int32, np.uint8)


@pytest.fixture(scope="module")
def mcore():
    """megatron-core's indexed_dataset module (its import-time notes about optional GPU packages hidden)."""
    if not IN_CI:
        pytest.importorskip("megatron.core")
    logging.getLogger("megatron").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def documents(dtype, seed=0):
    """(items, sequence lengths) per document: one-sequence documents, documents of several sequences,
    zero-length sequences and empty documents, values over the dtype's whole range."""
    rng = np.random.default_rng(seed)
    hi = int(np.iinfo(dtype).max)
    docs = []
    for d in range(9):
        if d in (2, 6):
            docs.append((np.zeros(0, dtype), []))   # an empty document
            continue
        lengths = [int(n) for n in rng.integers(0, 40, size=1 + d % 3)]
        if d == 4:
            lengths.insert(1, 0)                     # a sequence of no items
        items = rng.integers(0, hi, size=sum(lengths), endpoint=True, dtype=np.int64).astype(dtype)
        if len(items):
            items[0] = hi
        docs.append((items, lengths))
    return docs


def expected(docs):
    """The arrays the index must hold, from the documents alone."""
    lengths = np.asarray([n for _, ls in docs for n in ls], np.int64)
    bounds = np.cumsum([0] + [len(ls) for _, ls in docs])
    seqs = [s for items, ls in docs if ls for s in np.split(items, np.cumsum(ls)[:-1])]
    return lengths, bounds, seqs


def write_ours(prefix, docs, dtype):
    w = IndexedWriter(prefix + ".bin", dtype)
    for items, lengths in docs:
        w.add_document(items, lengths)
    w.finalize(prefix + ".idx")


def write_theirs(mcore, prefix, docs, dtype, modes=None):
    b = mcore.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype, multimodal=modes is not None)
    for i, (items, lengths) in enumerate(docs):
        b.add_document(items, lengths, modes=None if modes is None else modes[i])
    b.finalize(prefix + ".idx")


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("dtype", DTYPES + (np.int64,), ids=lambda d: np.dtype(d).name)
def test_our_files_are_byte_identical_to_megatron_cores(tmp_path, mcore, dtype):
    docs = documents(dtype)
    write_ours(str(tmp_path / "ours"), docs, dtype)
    write_theirs(mcore, str(tmp_path / "theirs"), docs, dtype)
    for ext in (".bin", ".idx"):
        assert sha(tmp_path / f"ours{ext}") == sha(tmp_path / f"theirs{ext}"), ext
    # and with no document at all
    write_ours(str(tmp_path / "none"), [], dtype)
    write_theirs(mcore, str(tmp_path / "none_mc"), [], dtype)
    assert sha(tmp_path / "none.idx") == sha(tmp_path / "none_mc.idx")
    assert os.path.getsize(tmp_path / "none.bin") == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_megatron_core_reads_our_files_and_we_read_its_files(tmp_path, mcore, dtype):
    docs = documents(dtype, seed=1)
    lengths, bounds, seqs = expected(docs)
    write_ours(str(tmp_path / "ours"), docs, dtype)
    write_theirs(mcore, str(tmp_path / "theirs"), docs, dtype)

    theirs = mcore.IndexedDataset(str(tmp_path / "ours"), mmap=True)
    assert theirs.index.dtype == dtype and len(theirs) == len(lengths)
    np.testing.assert_array_equal(theirs.sequence_lengths, lengths)
    np.testing.assert_array_equal(theirs.document_indices, bounds)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(np.array(theirs[i]), s)

    ours = IndexedFile(str(tmp_path / "theirs"))
    assert ours.dtype == np.dtype(dtype) and len(ours) == len(lengths) and ours.num_documents == len(docs)
    assert ours.sequence_modes is None
    np.testing.assert_array_equal(ours.sequence_lengths, lengths)
    np.testing.assert_array_equal(ours.document_indices, bounds)
    for i, s in enumerate(seqs):
        assert ours[i].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ours[i], s)


def test_we_read_a_multimodal_index_and_its_sequence_modes(tmp_path, mcore):
    docs = documents(np.int32, seed=2)
    modes = [[(7 * d + k) % 3 for k in range(len(ls))] for d, (_, ls) in enumerate(docs)]
    write_theirs(mcore, str(tmp_path / "mm"), docs, np.int32, modes=modes)
    f = IndexedFile(str(tmp_path / "mm"))
    np.testing.assert_array_equal(f.sequence_modes, [m for ms in modes for m in ms])
    lengths, bounds, seqs = expected(docs)
    np.testing.assert_array_equal(f.sequence_lengths, lengths)
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(f[i], s)


def test_the_writer_refuses_values_its_dtype_cannot_hold_and_lengths_that_do_not_add_up(tmp_path):
    w = IndexedWriter(str(tmp_path / "x.bin"), np.uint8)
    with pytest.raises(ValueError, match=r"x\.bin: document 0: values do not fit dtype uint8"):
        w.add_document(np.array([1, 256]))
    with pytest.raises(ValueError, match=r"document 0: sequence lengths \[1, 1\] .* add up to its 3 items"):
        w.add_document(np.array([1, 2, 3]), [1, 1])
    w.close()
    with pytest.raises(ValueError, match="dtype bool cannot be stored"):
        IndexedWriter(str(tmp_path / "y.bin"), np.bool_)


def _patch(offset: int, data: bytes):
    def change(idx, bin_):
        with open(idx, "r+b") as f:
            f.seek(offset)
            f.write(data)
    return change


def _cut(path_of, keep):
    def change(idx, bin_):
        path = path_of(idx, bin_)
        size = os.path.getsize(path)
        os.truncate(path, keep(size))
    return change


def _replace(data: bytes):
    def change(idx, bin_):
        with open(idx, "wb") as f:
            f.write(data)
    return change


# The .idx of the set below: 34-byte header, 3 sequence lengths (12 bytes) at 34, 3 pointers (24)
# at 46, 3 document indices (24) at 70; 94 bytes. Its .bin: 2 + 3 + 4 int32 items, 36 bytes.
BAD = {
    "foreign file": (_replace(b'{"not": "an index"}\n' * 4), "idx", "not a Megatron indexed dataset index"),
    "empty .idx": (_replace(b""), "idx", "truncated header (0 of 34 bytes)"),
    "header cut short": (_cut(lambda i, b: i, lambda n: 20), "idx", "truncated header (20 of 34 bytes)"),
    "arrays cut short": (_cut(lambda i, b: i, lambda n: n - 5), "idx", "89 bytes, but its header announces 3 sequences"),
    "version 2": (_patch(9, (2).to_bytes(8, "little")), "idx", "index format version 2"),
    "unknown dtype": (_patch(17, bytes([99])), "idx", "unknown dtype code 99"),
    "negative length": (_patch(34, (-1).to_bytes(4, "little", signed=True)), "idx", "negative sequence length"),
    "documents out of order": (_patch(78, (5).to_bytes(8, "little")), "idx", "document indices do not run"),
    "misaligned pointer": (_patch(54, (9).to_bytes(8, "little")), "idx", "not on an item boundary"),
    ".bin cut short": (_cut(lambda i, b: b, lambda n: n - 4), "bin", "places sequence 2 at bytes 20..36"),
    ".bin missing": (lambda i, b: os.remove(b), "bin", "cannot read (No such file or directory)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_index_is_one_line_naming_the_file(tmp_path, case):
    change, which, words = BAD[case]
    prefix = str(tmp_path / "set")
    write_ours(prefix, [(np.arange(5, dtype=np.int32), [2, 3]), (np.arange(4, dtype=np.int32), [4])], np.int32)
    assert os.path.getsize(prefix + ".idx") == 94 and os.path.getsize(prefix + ".bin") == 36
    change(prefix + ".idx", prefix + ".bin")
    with pytest.raises(IndexedFileError) as e:
        IndexedFile(prefix)
    msg = str(e.value)
    assert msg.startswith(f"{prefix}.{which}: ") and words in msg and "\n" not in msg, msg


def test_hesnr_inspect_of_a_damaged_index_of_the_same_size_is_one_line(tmp_path, capsys):
    """A byte changed in place (sizes still match the manifest): `hesnr inspect` names the .idx."""
    from megatron_hesnr.cli import main
    from megatron_hesnr.data.writer import DatasetWriter

    prefix = str(tmp_path / "set")
    w = DatasetWriter(prefix, vocab_size=50)
    w.add(np.arange(10), np.ones(10, dtype=np.uint8))
    w.finalize({"tokenizer": {"vocab_size": 50}})
    _patch(17, bytes([46]))(prefix + "_tokens.idx", None)
    assert main(["inspect", prefix]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"hesnr inspect: {os.path.realpath(prefix)}_tokens.idx: unknown dtype code 46", err


# ---------------------------------------------------------------- prepared files, as megatron-core writes them
@pytest.fixture(scope="module")
def small_vocab_set(tmp_path_factory, trajectories_dir):
    """The shared trajectories prepared with a 600-token BPE: uint16 token ids (hesnr_set has int32)."""
    from megatron_hesnr.cli import main
    from megatron_hesnr.demo.bpe import train_bpe

    tmp = tmp_path_factory.mktemp("u16")
    texts = [p.read_text(encoding="utf-8", errors="replace")[:200_000] for p in sorted(trajectories_dir.rglob("*.json"))]
    tok = train_bpe(texts, 600, tmp / "tokenizer.json")
    prefix = str(tmp / "set")
    assert main(["prepare", str(trajectories_dir), "--tokenizer", str(tok), "--output-prefix", prefix,
                 "--categories", "action,thought,observation", "--no-progress"]) == 0
    return prefix


@pytest.mark.parametrize("which", ["hesnr_set", "small_vocab_set"])
def test_prepared_files_are_the_bytes_megatron_cores_builder_writes(tmp_path, mcore, request, which):
    """`hesnr prepare`'s four files equal what its writer made with megatron-core's builder
    (up to fc44053) for the same documents, so the manifests (their hashes) are the same too."""
    from megatron_hesnr.data.dataset import PreparedDataset

    prefix = request.getfixturevalue(which)
    ds = PreparedDataset(prefix)
    dtype = np.dtype(ds.manifest["token_dtype"])
    assert dtype == (np.uint16 if which == "small_vocab_set" else np.int32)
    tokens = mcore.IndexedDatasetBuilder(str(tmp_path / "t.bin"), dtype=dtype.type)
    mask = mcore.IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint8)
    for i in range(len(ds)):
        ids, m = ds[i]
        tokens.add_document(ids.astype(dtype), [len(ids)])
        mask.add_document(m.astype(np.uint8), [len(m)])
    tokens.finalize(str(tmp_path / "t.idx"))
    mask.finalize(str(tmp_path / "m.idx"))
    files = ds.manifest["files"]
    for role, theirs in (("tokens_bin", "t.bin"), ("tokens_idx", "t.idx"), ("mask_bin", "m.bin"), ("mask_idx", "m.idx")):
        assert sha(tmp_path / theirs) == files[role]["sha256"] == sha(f"{prefix}_{role.replace('_', '.')}"), role


# ---------------------------------------------------------------- what the data commands import
PROBE = """
import atexit, json, sys
HEAVY = ("megatron", "megatron.core", "torch", "transformers", "tokenizers")
atexit.register(lambda: print("LOADED " + json.dumps([m for m in HEAVY if m in sys.modules]), file=sys.stderr))
from megatron_hesnr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _loaded(args, cwd):
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("LOADED ")]
    assert line, r.stderr
    assert "Transformer Engine" not in r.stderr and "Apex" not in r.stderr, r.stderr
    return r.returncode, set(json.loads(line[-1][len("LOADED "):])), r.stdout + r.stderr


def test_the_data_commands_load_neither_megatron_core_nor_torch(tmp_path, small_vocab_set):
    tok = json.load(open(small_vocab_set + "_manifest.json"))["tokenizer"]["path"]
    traj = json.load(open(small_vocab_set + "_manifest.json"))["inputs"][0]["path"]
    runs = {
        ("-v", "prepare", "--help"): (0, set()),
        ("-v", "inspect", small_vocab_set): (0, set()),
        ("inspect", small_vocab_set, "--doc", "0", "--max-chars", "50"): (0, {"tokenizers"}),
        ("score",): (2, set()),
        ("prepare", traj, "--tokenizer", tok, "--output-prefix", str(tmp_path / "p"), "--no-progress"):
            (0, {"tokenizers"}),
    }
    for args, (rc, allowed) in runs.items():
        got_rc, loaded, out = _loaded(args, tmp_path)
        assert got_rc == rc and loaded <= allowed, (args, loaded, out[-2000:])


def test_hesnr_score_reads_the_sets_without_megatron_core(tmp_path, small_vocab_set):
    """Past its checks `hesnr score` needs torch (the metric), not megatron-core: a server that does
    not answer is the first thing that fails."""
    rc, loaded, out = _loaded(["score", small_vocab_set, "--server", "http://127.0.0.1:9", "--jsonl",
                               str(tmp_path / "out.jsonl"), "--retries", "0", "--timeout", "5"], tmp_path)
    assert rc == 2 and "http://127.0.0.1:9" in out and "Traceback" not in out, out
    assert "torch" in loaded and not loaded & {"megatron", "megatron.core", "transformers"}, loaded


def test_a_refused_document_enters_neither_file(tmp_path):
    """A mask value the uint8 file cannot hold (or a non-integer id) is refused before either file is
    written: the next documents stay aligned and the dataset opens."""
    from megatron_hesnr.data.dataset import PreparedDataset
    from megatron_hesnr.data.writer import DatasetWriter

    prefix = str(tmp_path / "set")
    w = DatasetWriter(prefix, vocab_size=100)
    w.add(np.arange(4), np.array([0, 1, 2, 3]))
    for ids, mask in ((np.arange(3), np.array([0, 1, 256])), (np.array([1.5, 2.0]), np.array([1, 1]))):
        with pytest.raises(ValueError, match=r"document 1: token ids and mask values must be integers"):
            w.add(ids, mask)
    w.add(np.array([7, 8]), np.array([1, 0]))
    w.finalize({"tokenizer": {"vocab_size": 100}})
    ds = PreparedDataset(prefix)
    assert len(ds) == 2 and ds[1][0].tolist() == [7, 8] and ds[1][1].tolist() == [1, 0]
