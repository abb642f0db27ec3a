"""A tiny Megatron-Bridge recipe that trains on the CPU (test infrastructure, Python 3.12 leg).

``tiny_gpt_pretrain_config()`` returns Bridge's own ``ConfigContainer`` for a 2-layer GPT
(hidden 64, sequence 128, the deepseek tokenizer's 129280-token vocabulary through Bridge's
``NullTokenizer``) trained 4 iterations on Bridge's mock data in fp32 over gloo, with a
validation every 2 iterations. Megatron's local layers (no Transformer Engine) and every fused
kernel off. A user's recipe looks the same; the example script takes it as
``--recipe bridge_tiny_recipe:tiny_gpt_pretrain_config`` plus ``section.field=value`` overrides
(``model.tensor_model_parallel_size=2``, ``checkpoint.save=...``, ``logger.tensorboard_dir=...``).
Run under ``tests/megatron_launch.py --bridge`` (the CPU shim and Bridge's import workarounds).
"""
from __future__ import annotations

import torch

#: The deepseek tokenizer of the prepared HE-SNR set (``hesnr prepare --tokenizer``).
VOCAB_SIZE = 129280
SEQ_LENGTH = 128
TRAIN_ITERS = 4
EVAL_INTERVAL = 2


def tiny_gpt_pretrain_config():
    from megatron.bridge.models.gpt_provider import GPTModelProvider, local_layer_spec
    from megatron.bridge.training.config import (
        CheckpointConfig,
        ConfigContainer,
        DistributedDataParallelConfig,
        DistributedInitConfig,
        LoggerConfig,
        MockGPTDatasetConfig,
        OptimizerConfig,
        RNGConfig,
        SchedulerConfig,
        TokenizerConfig,
        TrainingConfig,
        ValidationConfig,
    )

    model = GPTModelProvider(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, seq_length=SEQ_LENGTH,
        transformer_impl="local", transformer_layer_spec=local_layer_spec,
        bf16=False, fp16=False, params_dtype=torch.float32, pipeline_dtype=torch.float32,
        use_cpu_initialization=True,
        # Fused kernels need CUDA (or Transformer Engine / apex): all off.
        gradient_accumulation_fusion=False, masked_softmax_fusion=False, bias_activation_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
    )
    return ConfigContainer(
        model=model,
        train=TrainingConfig(train_iters=TRAIN_ITERS, global_batch_size=4, micro_batch_size=2),
        validation=ValidationConfig(eval_interval=EVAL_INTERVAL, eval_iters=1),
        optimizer=OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=0.0, weight_decay=0.01, clip_grad=1.0,
                                  bf16=False, fp16=False, params_dtype=torch.float32,
                                  use_distributed_optimizer=False),
        scheduler=SchedulerConfig(lr_decay_style="constant", lr_warmup_iters=0, start_weight_decay=0.01,
                                  end_weight_decay=0.01, weight_decay_incr_style="constant"),
        ddp=DistributedDataParallelConfig(use_distributed_optimizer=False, grad_reduce_in_fp32=False,
                                          overlap_grad_reduce=False, overlap_param_gather=False),
        dataset=MockGPTDatasetConfig(random_seed=1234, seq_length=SEQ_LENGTH, reset_position_ids=False,
                                     reset_attention_mask=False, eod_mask_loss=False, num_workers=0,
                                     dataloader_type="single", create_attention_mask=False),
        logger=LoggerConfig(log_interval=1, tensorboard_dir=None),
        tokenizer=TokenizerConfig(tokenizer_type="NullTokenizer", vocab_size=VOCAB_SIZE),
        checkpoint=CheckpointConfig(save=None, save_interval=EVAL_INTERVAL, ckpt_format="torch_dist",
                                    async_save=False),
        rng=RNGConfig(seed=1234),
        dist=DistributedInitConfig(distributed_backend="gloo"),
        mixed_precision=None,
    )
