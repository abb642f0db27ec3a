"""Front end for checkpoints outside a Megatron job: ``hesnr score`` with Hugging Face transformers,
vLLM's offline engine or a running vLLM server, writing the Megatron hook's records.

Imports only :mod:`megatron_hesnr.evaluation` and the layers below it (the metric core, the data
layer), never another front end.
"""
