"""The onboard part: numpy, OpenCV, ONNX Runtime or TensorRT; never torch, timm or rasterio.

engine / trt_engine (embeddings), sources (frames), search (nearest tiles), position (fix + fusion),
outputs (JSON lines, MAVLink GPS_INPUT), health, service (`python -m runtime serve`), config.
"""
