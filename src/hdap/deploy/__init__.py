"""From a fine-tuned model to what devices run: QDQ ONNX export, engine builds, measurements, the registry."""
