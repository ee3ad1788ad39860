"""Benchmarks: our DenseNet against torchvision's, measured in one run."""
