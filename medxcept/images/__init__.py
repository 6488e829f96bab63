"""Images into the network: preprocessing (crop, normalize), the quality gate, the preprocessing cache, augmentation and class balancing, the Keras input pipeline."""
