"""Neural networks: CED, ResNet-18, the DCASE baseline autoencoder."""
