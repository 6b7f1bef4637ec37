"""sonitor training: learns "normal" with PyTorch and evaluates exactly like DCASE Task 2."""
