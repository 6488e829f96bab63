"""The network and its training: the classifier builder and weights, the ordinal head, the fine-tuning recipe, Grad-CAM, the tiny test network."""
