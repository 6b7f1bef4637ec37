"""Audio in: file I/O, the 16 kHz front-end, capture, ring buffers, windows.

- `io`: any WAV/FLAC -> float32 mono 16 kHz (`load_audio`), `write_wav`, resampling;
- `frontend`: the front-end constants shared with training and export, and a numpy log-mel;
- `devices`: input devices and their stable identities (USB, ALSA card id);
- `ringbuffer`: the lock-free single-producer / single-consumer ring a device callback fills;
- `capture/`: device and file sources, liveness, reopen, and `CaptureManager`;
- `windowing`: per-source windows on the 16 kHz sample clock, and the bounded queue to
  inference.
"""
