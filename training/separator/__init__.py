"""Machine-sound separation: a U-Net mask on the encoder's own mel frames (first seed, 3.4)."""
