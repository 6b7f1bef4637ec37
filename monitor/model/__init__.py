"""The model package and everything that scores with it (numpy, scipy, onnxruntime; no torch).

- `package/`: the model package on disk (typed `Manifest`, banks, atomic writes, archives) and
  `ModelPackage`, the validated package the daemon loads;
- `runtime`: `Embedder`, the encoder in onnxruntime (full graph, or front-end + backbone for
  streaming), and `FrameStream`;
- `scoring/`: the anomaly scorers (k-NN, local-density rescaled k-NN, Mahalanobis) shared by
  evaluation and the daemon, and the coreset that bounds a bank;
- `thresholds`: the decision threshold fitted on normal scores (`Calibration`);
- `enroll`: enrolment (extend a machine's bank, recalibrate, rewrite the package) and offline
  scoring of recordings exactly as the daemon scores live audio.
"""
