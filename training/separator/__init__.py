"""Machine-sound separation: a U-Net mask on the encoder's own mel frames.

The separation of Ozeki et al., "Anomalous sound detection method using contrastive learning"
(DCASE 2025, section 3.4), applied inside the encoder's front-end.
"""
