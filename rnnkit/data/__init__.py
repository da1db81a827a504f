"""rnnkit.data: batching for recurrent models (LM streams, padding, length bucketing)."""

from rnnkit.data.batching import BPTTBatches, LMBatch, bptt_batches, make_streams
from rnnkit.data.collate import PadCollate, PaddedBatch, length_mask, pad_collate
from rnnkit.data.sampler import BucketBatchSampler

__all__ = [
    "BPTTBatches",
    "BucketBatchSampler",
    "LMBatch",
    "PadCollate",
    "PaddedBatch",
    "bptt_batches",
    "length_mask",
    "make_streams",
    "pad_collate",
]
