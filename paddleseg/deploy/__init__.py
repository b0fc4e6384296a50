"""Running exported models: :mod:`.predictor` (Paddle Inference and ONNX Runtime) and
:mod:`.benchmark` (latency). Writing an export is :mod:`paddleseg.core.export`."""
