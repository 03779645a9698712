"""The model table (paper names -> timm), model creation and weights, tensor-only checkpoints."""
