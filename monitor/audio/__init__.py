"""Audio in: file I/O, the 16 kHz front-end, capture, ring buffers, windows."""
