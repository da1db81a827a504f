import torch

# Tiny models on a small shared machine: one intra-op thread is much faster than two
# threads spinning against other jobs (and makes timings stable).
torch.set_num_threads(1)
