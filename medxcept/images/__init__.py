"""Images into the network: preprocessing (decode, crop, normalize, cache), augmentation and class balancing, the Keras input pipeline."""
