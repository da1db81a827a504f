"""rnnkit: recurrent neural networks on PyTorch."""
